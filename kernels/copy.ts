// Launcher for kernels/copy.wgsl, plus the sequence concatenation and slicing built on it.

import { rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import { grid1d, packParams } from "./common.ts";
import { fillInto } from "./elementwise.ts";

const WORKGROUP = 256;

export interface BlockCopy {
  Z: number;
  R: number;
  C: number;
  srcOffset?: number;
  srcZ: number;
  srcR: number;
  dstOffset?: number;
  dstZ: number;
  dstR: number;
  accumulate?: boolean;
}

// Copies a Z x R x C block of elements between strided positions of two tensors (element units).
export function copyBlock(src: Tensor, dst: Tensor, b: BlockCopy): void {
  if (src.buffer === dst.buffer) throw new Error("copyBlock: source and destination share a buffer");
  const { Z, R, C, srcOffset = 0, dstOffset = 0 } = b;
  const lastSrc = srcOffset + (Z - 1) * b.srcZ + (R - 1) * b.srcR + C;
  const lastDst = dstOffset + (Z - 1) * b.dstZ + (R - 1) * b.dstR + C;
  if (Z * R * C === 0) return;
  if (lastSrc > src.size || lastDst > dst.size) {
    throw new Error(`copyBlock: block ${Z}x${R}x${C} reaches past [${src.shape}] or [${dst.shape}]`);
  }
  const kernel = rt().kernel({
    shader: "copy.wgsl",
    entryPoint: "main",
    bindings: ["uniform", "read", "storage"],
    defines: { WORKGROUP, ACCUMULATE: b.accumulate ?? false },
  });
  const params = packParams([Z, R, C, srcOffset, b.srcZ, b.srcR, dstOffset, b.dstZ, b.dstR]);
  rt().dispatch(kernel, params, [src.buffer, dst.buffer], grid1d(Math.ceil((Z * R * C) / WORKGROUP)));
}

function seqDims(t: Tensor, what: string): [number, number, number] {
  if (t.shape.length !== 3) throw new Error(`${what}: expected (batch, seq, features), got [${t.shape}]`);
  return t.shape as [number, number, number];
}

// Concatenates (B, Ti, D) tensors along the sequence dimension.
export function concatSeq(parts: Tensor[]): Tensor {
  const dims = parts.map((p) => seqDims(p, "concatSeq"));
  const [B, , D] = dims[0];
  if (dims.some(([b, , d]) => b !== B || d !== D)) {
    throw new Error(`concatSeq: shapes ${parts.map((p) => `[${p.shape}]`).join(", ")} differ outside the sequence dimension`);
  }
  const total = dims.reduce((s, [, t]) => s + t, 0);
  const out = empty([B, total, D]);
  let offset = 0;
  for (const [i, part] of parts.entries()) {
    const T = dims[i][1];
    copyBlock(part, out, { Z: B, R: T, C: D, srcZ: T * D, srcR: D, dstOffset: offset * D, dstZ: total * D, dstR: D });
    offset += T;
  }
  return out;
}

// Rows start .. start + length - 1 of every sequence in a (B, T, D) tensor.
export function sliceSeq(x: Tensor, start: number, length: number): Tensor {
  const [B, T, D] = seqDims(x, "sliceSeq");
  if (start < 0 || length < 0 || start + length > T) throw new Error(`sliceSeq: rows ${start}..${start + length} outside sequence length ${T}`);
  const out = empty([B, length, D]);
  copyBlock(x, out, { Z: B, R: length, C: D, srcOffset: start * D, srcZ: T * D, srcR: D, dstZ: length * D, dstR: D });
  return out;
}

// The gradient of sliceSeq: a zero (B, T, D) tensor with `g` written at rows start...
export function unsliceSeq(g: Tensor, T: number, start: number): Tensor {
  const [B, length, D] = seqDims(g, "unsliceSeq");
  const out = fillInto(empty([B, T, D]), 0);
  copyBlock(g, out, { Z: B, R: length, C: D, srcZ: length * D, srcR: D, dstOffset: start * D, dstZ: T * D, dstR: D });
  return out;
}

// Repeats a row vector (D) over B sequences as their first position: (B, T, D) -> (B, T + 1, D).
export function prependRow(x: Tensor, row: Tensor): Tensor {
  const [B, T, D] = seqDims(x, "prependRow");
  if (row.size !== D) throw new Error(`prependRow: row of shape [${row.shape}] for width ${D}`);
  const out = empty([B, T + 1, D]);
  copyBlock(row, out, { Z: B, R: 1, C: D, srcZ: 0, srcR: 0, dstZ: (T + 1) * D, dstR: D });
  copyBlock(x, out, { Z: B, R: T, C: D, srcZ: T * D, srcR: D, dstOffset: D, dstZ: (T + 1) * D, dstR: D });
  return out;
}
