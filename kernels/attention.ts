// Launchers for kernels/attention.wgsl: multi-head scaled dot-product attention with causal and
// key-padding masks, and grouped-query attention (fewer key/value heads than query heads).
// These are raw kernels without autograd, and engine/ops.ts wraps them.

import { rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import { grid1d, packParams } from "./common.ts";

// Threads per workgroup, with one workgroup per attention row. 64 threads cover the model head
// sizes (48 and 64) in one stride and 128 keys in two. The tree reductions need a power of two.
export const ATTENTION_WORKGROUP = 64;
// Maximum key count (and, in backward, query count), because one row of scores lives in
// workgroup memory. With the head-size buffer below that is 5.25 KiB per workgroup, inside the
// 16 KiB that every WebGPU adapter provides.
export const ATTENTION_MAX_KEYS = 1024;
// Maximum head size, because the scaled query row (or the dO row) is staged in workgroup memory.
export const ATTENTION_MAX_HEAD_DIM = 256;

// A column slice [colOffset, colOffset + width) of a (B, T, C) tensor. With width = H * Dh the
// slice contains all heads, head h at columns colOffset + h * Dh.
export interface AttentionOperand {
  tensor: Tensor;
  colOffset: number;
  width: number;
}

export type AttentionInput = Tensor | AttentionOperand;

export interface AttentionOptions {
  q: AttentionInput; // (B, Tq, H * Dh) or a slice of that width
  k: AttentionInput; // (B, Tk, KV * Dh) or a slice
  v: AttentionInput; // (B, Tk, KV * Dh) or a slice
  heads: number; // H, the query heads
  // KV, the key/value heads (default H). H must be a multiple of KV, and query head h reads
  // key/value head floor(h / (H / KV)), the grouping of Hugging Face's repeat_kv.
  kvHeads?: number;
  causal?: boolean; // query i attends to keys j <= i + Tk - Tq
  keyPaddingMask?: Tensor | null; // f32 (B, Tk): 1 for a real key, 0 for a padded one
  scale?: number; // defaults to 1 / sqrt(Dh)
}

// q, k, v, heads, causal, keyPaddingMask and scale must be the ones the forward pass used.
export interface AttentionBackwardOptions extends AttentionOptions {
  probs: Tensor; // (B, H, Tq, Tk), as returned by `attention`
  dOut: Tensor; // (B, Tq, H * Dh), contiguous
}

export interface AttentionResult {
  out: Tensor; // (B, Tq, H * Dh)
  probs: Tensor; // (B, H, Tq, Tk), all zeros in rows without a visible key
}

export interface AttentionGrads {
  dq: Tensor; // (B, Tq, H * Dh)
  dk: Tensor; // (B, Tk, KV * Dh), summed over the query heads that share each key/value head
  dv: Tensor; // (B, Tk, KV * Dh), likewise
}

// Query and key/value head counts of a packed projection, for grouped-query attention.
export interface PackedHeads {
  heads: number;
  kvHeads: number;
}

// Describes q, k and v inside a fused projection (B, T, (H + 2 * KV) * Dh) without copying:
// q at column 0, k at H * Dh and v at (H + KV) * Dh. Without `layout` the three parts have equal
// widths, as in GPT-2's c_attn output (B, T, 3 * H * Dh).
export function splitPackedQkv(
  qkv: Tensor,
  layout?: PackedHeads,
): { q: AttentionOperand; k: AttentionOperand; v: AttentionOperand } {
  const { heads, kvHeads } = layout ?? { heads: 1, kvHeads: 1 };
  const parts = heads + 2 * kvHeads;
  if (qkv.shape.length !== 3 || qkv.shape[2] % parts !== 0) {
    const expected = layout ? `(${heads} + 2 * ${kvHeads}) * Dh` : "3 * H * Dh";
    throw new Error(`splitPackedQkv: expected (B, T, ${expected}), got [${qkv.shape}]`);
  }
  const headDim = qkv.shape[2] / parts;
  const qWidth = heads * headDim;
  const kvWidth = kvHeads * headDim;
  return {
    q: { tensor: qkv, colOffset: 0, width: qWidth },
    k: { tensor: qkv, colOffset: qWidth, width: kvWidth },
    v: { tensor: qkv, colOffset: qWidth + kvWidth, width: kvWidth },
  };
}

// Computes softmax(scale * q k^T + mask) v per head and returns the probabilities for backward.
export function attention(options: AttentionOptions): AttentionResult {
  const dims = validate("attention", options);
  const { batch, heads, tq, headDim } = dims;
  const out = empty([batch, tq, heads * headDim]);
  const probs = empty([batch, heads, tq, dims.tk]);

  const kernel = rt().kernel({
    shader: "attention.wgsl",
    entryPoint: "forward",
    bindings: ["uniform", "read", "read", "read", "read", "storage", "storage"],
    defines: shaderDefines(dims),
  });
  const params = queryParams(dims, { stride: heads * headDim, offset: 0 });
  rt().dispatch(
    kernel,
    params,
    [
      dims.k.tensor.buffer,
      dims.v.tensor.buffer,
      maskBuffer(dims),
      dims.q.tensor.buffer,
      probs.buffer,
      out.buffer,
    ],
    grid1d(batch * heads * tq),
  );
  return { out, probs };
}

// Computes the gradients of `attention` with respect to q, k and v, each in a new contiguous tensor.
export function attentionBackward(options: AttentionBackwardOptions): AttentionGrads {
  const dims = validate("attentionBackward", options);
  const qWidth = dims.heads * dims.headDim;
  const kvWidth = dims.kvHeads * dims.headDim;
  const dq = empty([dims.batch, dims.tq, qWidth]);
  const dk = empty([dims.batch, dims.tk, kvWidth]);
  const dv = empty([dims.batch, dims.tk, kvWidth]);
  launchBackward("attentionBackward", dims, options, {
    dq: { tensor: dq, colOffset: 0, width: qWidth },
    dk: { tensor: dk, colOffset: 0, width: kvWidth },
    dv: { tensor: dv, colOffset: 0, width: kvWidth },
  });
  return { dq, dk, dv };
}

// Writes the gradients of `attention` into one (B, T, (H + 2 * KV) * Dh) tensor with dq, dk and
// dv side by side, as splitPackedQkv lays out a fused projection. That is the layout the fused
// projection's backward consumes. Requires Tq = Tk. The inputs q, k and v may be packed or
// separate.
export function attentionBackwardPacked(options: AttentionBackwardOptions): Tensor {
  const dims = validate("attentionBackwardPacked", options);
  if (dims.tq !== dims.tk) {
    throw new Error(
      `attentionBackwardPacked: needs Tq = Tk for one packed gradient, got Tq ${dims.tq} and Tk ${dims.tk}`,
    );
  }
  const { heads, kvHeads } = dims;
  const dqkv = empty([dims.batch, dims.tq, (heads + 2 * kvHeads) * dims.headDim]);
  const slices = splitPackedQkv(dqkv, { heads, kvHeads });
  launchBackward("attentionBackwardPacked", dims, options, {
    dq: slices.q,
    dk: slices.k,
    dv: slices.v,
  });
  return dqkv;
}

interface Dims {
  batch: number;
  heads: number;
  kvHeads: number;
  tq: number;
  tk: number;
  headDim: number;
  q: AttentionOperand;
  k: AttentionOperand;
  v: AttentionOperand;
  causal: boolean;
  mask: Tensor | null;
  scale: number;
}

function toOperand(input: AttentionInput): AttentionOperand {
  if (input instanceof Tensor) {
    return { tensor: input, colOffset: 0, width: input.shape[input.shape.length - 1] ?? 0 };
  }
  return input;
}

function describe(operand: AttentionOperand): string {
  return `[${operand.tensor.shape}] columns ${operand.colOffset}..${
    operand.colOffset + operand.width
  }`;
}

function validate(caller: string, options: AttentionOptions): Dims {
  const q = toOperand(options.q);
  const k = toOperand(options.k);
  const v = toOperand(options.v);
  const heads = options.heads;

  for (const [name, operand] of [["q", q], ["k", k], ["v", v]] as const) {
    const t = operand.tensor;
    t.assertLive(`${caller} ${name}`);
    if (t.dtype !== "f32" || t.shape.length !== 3) {
      throw new Error(
        `${caller}: ${name} must be an f32 (B, T, C) tensor, got ${t.dtype} [${t.shape}]`,
      );
    }
    const { colOffset, width } = operand;
    if (
      !Number.isInteger(colOffset) || !Number.isInteger(width) || colOffset < 0 || width <= 0 ||
      colOffset + width > t.shape[2]
    ) {
      throw new Error(`${caller}: ${name} slice ${describe(operand)} is not inside the tensor`);
    }
    if (t.shape[0] === 0 || t.shape[1] === 0) {
      throw new Error(
        `${caller}: ${name} of shape [${t.shape}] is empty, but attention needs B >= 1 and T >= 1`,
      );
    }
  }
  if (!Number.isInteger(heads) || heads <= 0) {
    throw new Error(`${caller}: heads must be a positive integer, got ${heads}`);
  }
  const kvHeads = options.kvHeads ?? heads;
  if (!Number.isInteger(kvHeads) || kvHeads <= 0 || heads % kvHeads !== 0) {
    throw new Error(
      `${caller}: kvHeads must be a positive integer that divides heads = ${heads}, got ${kvHeads}`,
    );
  }
  if (q.width % heads !== 0) {
    throw new Error(`${caller}: q width ${q.width} is not divisible by ${heads} heads`);
  }
  const kvWidth = (q.width / heads) * kvHeads;
  if (k.width !== kvWidth || v.width !== kvWidth) {
    throw new Error(
      `${caller}: k and v widths ${k.width}, ${v.width} must be kvHeads * head size = ${kvHeads} * ${
        q.width / heads
      } = ${kvWidth} (q width ${q.width}, ${heads} heads)`,
    );
  }
  const batch = q.tensor.shape[0];
  const tq = q.tensor.shape[1];
  const tk = k.tensor.shape[1];
  if (k.tensor.shape[0] !== batch || v.tensor.shape[0] !== batch || v.tensor.shape[1] !== tk) {
    throw new Error(
      `${caller}: q ${describe(q)}, k ${describe(k)} and v ${describe(v)} disagree on B or Tk`,
    );
  }
  const headDim = q.width / heads;
  if (headDim > ATTENTION_MAX_HEAD_DIM) {
    throw new Error(
      `${caller}: head size ${headDim} exceeds ATTENTION_MAX_HEAD_DIM = ${ATTENTION_MAX_HEAD_DIM}; use more heads or raise the limit in kernels/attention.ts`,
    );
  }
  if (tk > ATTENTION_MAX_KEYS) {
    throw new Error(
      `${caller}: ${tk} keys exceed ATTENTION_MAX_KEYS = ${ATTENTION_MAX_KEYS} (one row of scores in workgroup memory); shorten the sequence or raise the limit in kernels/attention.ts`,
    );
  }

  const mask = options.keyPaddingMask ?? null;
  if (mask) {
    mask.assertLive(`${caller} keyPaddingMask`);
    if (
      mask.dtype !== "f32" || mask.shape.length !== 2 || mask.shape[0] !== batch ||
      mask.shape[1] !== tk
    ) {
      throw new Error(
        `${caller}: keyPaddingMask must be f32 (${batch}, ${tk}), got ${mask.dtype} [${mask.shape}]`,
      );
    }
  }
  const scale = options.scale ?? 1 / Math.sqrt(headDim);
  if (!Number.isFinite(scale)) throw new Error(`${caller}: scale ${scale} is not finite`);

  return {
    batch,
    heads,
    kvHeads,
    tq,
    tk,
    headDim,
    q,
    k,
    v,
    causal: options.causal ?? false,
    mask,
    scale,
  };
}

function shaderDefines(dims: Dims) {
  return {
    WORKGROUP: ATTENTION_WORKGROUP,
    MAX_KEYS: ATTENTION_MAX_KEYS,
    MAX_HEAD_DIM: ATTENTION_MAX_HEAD_DIM,
    CAUSAL: dims.causal,
    HAS_KEY_MASK: dims.mask !== null,
  };
}

// Without a mask the binding still needs a buffer, so k's buffer is bound there and never read.
function maskBuffer(dims: Dims): GPUBuffer {
  return dims.mask ? dims.mask.buffer : dims.k.tensor.buffer;
}

// Packs the uniform parameters of `forward` and `backward_query`. `target` locates out or dq.
function queryParams(dims: Dims, target: { stride: number; offset: number }): Uint32Array {
  const { q, k, v } = dims;
  return packParams([
    dims.batch,
    dims.heads,
    dims.tq,
    dims.tk,
    dims.headDim,
    q.tensor.shape[2],
    q.colOffset,
    k.tensor.shape[2],
    k.colOffset,
    v.tensor.shape[2],
    v.colOffset,
    target.stride,
    target.offset,
    { f32: dims.scale },
    dims.kvHeads,
    0,
  ]);
}

interface GradTargets {
  dq: AttentionOperand;
  dk: AttentionOperand;
  dv: AttentionOperand;
}

function launchBackward(
  caller: string,
  dims: Dims,
  options: AttentionBackwardOptions,
  targets: GradTargets,
): void {
  const { batch, heads, tq, tk, headDim } = dims;
  const { probs, dOut } = options;
  probs.assertLive(`${caller} probs`);
  dOut.assertLive(`${caller} dOut`);
  const probsShape = [batch, heads, tq, tk];
  if (probs.dtype !== "f32" || probs.shape.join() !== probsShape.join()) {
    throw new Error(
      `${caller}: probs must be f32 [${probsShape}], got ${probs.dtype} [${probs.shape}]`,
    );
  }
  const dOutShape = [batch, tq, heads * headDim];
  if (dOut.dtype !== "f32" || dOut.shape.join() !== dOutShape.join()) {
    throw new Error(
      `${caller}: dOut must be f32 [${dOutShape}], got ${dOut.dtype} [${dOut.shape}]`,
    );
  }
  if (tq > ATTENTION_MAX_KEYS) {
    throw new Error(
      `${caller}: ${tq} queries exceed ATTENTION_MAX_KEYS = ${ATTENTION_MAX_KEYS} (one column of weights in workgroup memory); shorten the sequence or raise the limit in kernels/attention.ts`,
    );
  }

  const defines = shaderDefines(dims);
  // dS for every (b, h, i, j), which the dk pass reads by columns.
  const dScores = empty([batch, heads, tq, tk]);

  const queryKernel = rt().kernel({
    shader: "attention.wgsl",
    entryPoint: "backward_query",
    bindings: ["uniform", "read", "read", "read", "read", "read", "storage", "storage"],
    defines,
  });
  const dq = targets.dq;
  rt().dispatch(
    queryKernel,
    queryParams(dims, { stride: dq.tensor.shape[2], offset: dq.colOffset }),
    [
      dims.k.tensor.buffer,
      dims.v.tensor.buffer,
      maskBuffer(dims),
      probs.buffer,
      dOut.buffer,
      dScores.buffer,
      dq.tensor.buffer,
    ],
    grid1d(batch * heads * tq),
  );

  const grouped = dims.kvHeads !== heads;
  const keyKernel = rt().kernel({
    shader: "attention.wgsl",
    entryPoint: grouped ? "backward_key_grouped" : "backward_key",
    bindings: ["uniform", "read", "read", "storage"],
    defines,
  });
  const launchKey = (
    weights: Tensor,
    source: AttentionOperand,
    target: AttentionOperand,
    alpha: number,
  ) => {
    const params = packParams([
      batch,
      heads,
      tq,
      tk,
      headDim,
      source.tensor.shape[2],
      source.colOffset,
      target.tensor.shape[2],
      target.colOffset,
      { f32: alpha },
      dims.kvHeads,
      0,
    ]);
    // One workgroup per key of each key/value head; it sums over the group's query heads.
    rt().dispatch(
      keyKernel,
      params,
      [weights.buffer, source.tensor.buffer, target.tensor.buffer],
      grid1d(batch * dims.kvHeads * tk),
    );
  };
  launchKey(probs, { tensor: dOut, colOffset: 0, width: heads * headDim }, targets.dv, 1);
  launchKey(dScores, dims.q, targets.dk, dims.scale);

  // Later dispatches in the same pass run after the ones recorded above, so the scratch buffer
  // can go back to the pool now.
  dScores.dispose();
}
