// Launchers for kernels/rope.wgsl: rotary position embeddings (RoPE) in Hugging Face's
// half-split layout, for Llama and Qwen2 queries and keys. Raw kernels without autograd.
//
// Angles and their cosines and sines are tabulated on the CPU, once per (theta, headDim, angle
// mode) and grown when a longer position range is requested, then kept on the GPU. The WGSL
// spec bounds f32 sin and cos only inside [-pi, pi] (absolute error 2^-11), and angles here
// reach tens of thousands of radians (position 32767 at the highest frequency). So the GPU does
// no trigonometry.
//
// Two angle modes:
// - default: the angles of transformers' default RoPE (_compute_default_rope_parameters in
//   modeling_rope_utils.py, and the rotary embedding forward of its Llama and Qwen2 models),
//   which works in float32 throughout:
//   inv_freq = f32(1 / f32(theta ** f32(2i / headDim))), angle = f32(inv_freq * position), and
//   cos and sin of that f32 angle. The table holds float64 cos and sin of that angle rounded to
//   f32, which should match torch's f32 cos and sin to about an ulp.
//   Against float64 angles, rounding the angle to f32 moves it by up to half an ulp of the angle
//   (2^-9 rad near position 32767). inv_freq's rounding adds up to position * 2^-24 * inv_freq.
//   transformers runs Llama and Qwen2 with these rounded angles, so this mode reproduces its
//   outputs, rounding included.
//   NOTE: torch's f32 pow may differ from the correctly rounded power by an ulp. That would shift
//   one inv_freq by an ulp and its angles by up to position * 6e-8 * inv_freq rad.
// - exactAngles: angle = position * theta^(-2i / headDim) in float64, so the only error is the
//   f32 rounding of cos and sin (about 6e-8).

import { rt } from "../engine/runtime.ts";
import { empty, fromArray, Tensor } from "../engine/tensor.ts";
import { grid1d, packParams } from "./common.ts";

// Threads per workgroup, as in kernels/elementwise.ts: one thread per pair of elements.
const ROPE_WORKGROUP = 256;
// Smallest table, in positions, so that short decoding steps do not regrow it one step at a time.
// Tables grow to the next power of two of the positions requested.
const ROPE_MIN_TABLE_POSITIONS = 256;

export interface RopeOptions {
  heads: number; // heads in the last dimension (Hkv for the keys of grouped-query attention)
  headDim: number; // even; the last dimension is heads * headDim
  // Position of the first token along the sequence axis, shared by all batch rows: 0 for a
  // prompt or a right-padded batch, the number of cached tokens for a decoding step.
  positionOffset?: number;
  theta?: number; // rope_theta of the config; default 10000
  // true computes angles in float64 instead of transformers' float32 (see the file comment).
  exactAngles?: boolean;
}

interface RopeTable {
  tensor: Tensor; // (positions, headDim / 2, 2): cos, sin
  positions: number;
}

const tables = new Map<string, RopeTable>();

// Rotates each head of `x`, shaped (..., seq_len, heads * headDim), by its position's angles.
// The batch dimensions before seq_len all share the positions positionOffset + t.
export function rope(x: Tensor, options: RopeOptions): Tensor {
  return rotate("rope", x, options, 1);
}

// Backward of rope: rotates the output gradient `dy` by the negated angles (the transpose of
// the rotation), with the same options as the forward call.
export function ropeBackward(dy: Tensor, options: RopeOptions): Tensor {
  return rotate("ropeBackward", dy, options, -1);
}

// Disposes the cached cos/sin tables, e.g. after a model is unloaded. Later calls rebuild them.
export function releaseRopeTables(): void {
  for (const table of tables.values()) table.tensor.dispose();
  tables.clear();
}

// Computes the table that rope reads: a flat (positions, headDim / 2, 2) array of f32 cos and
// sin. Exported so that CPU code can use the same angles.
export function ropeTableData(
  theta: number,
  headDim: number,
  positions: number,
  exactAngles = false,
): Float32Array {
  const half = headDim / 2;
  const data = new Float32Array(positions * half * 2);
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    if (exactAngles) {
      invFreq[i] = Math.pow(theta, -(2 * i) / headDim);
    } else {
      // Math.fround of a quotient or product of f32 values rounds as f32 arithmetic would,
      // because float64 carries more than twice f32's 24 bits.
      const exponent = Math.fround((2 * i) / headDim);
      invFreq[i] = Math.fround(1 / Math.fround(Math.pow(Math.fround(theta), exponent)));
    }
  }
  for (let position = 0; position < positions; position++) {
    for (let i = 0; i < half; i++) {
      const product = position * invFreq[i];
      const angle = exactAngles ? product : Math.fround(product);
      const k = 2 * (position * half + i);
      data[k] = Math.cos(angle);
      data[k + 1] = Math.sin(angle);
    }
  }
  return data;
}

function checkOptions(op: string, x: Tensor, options: RopeOptions): void {
  const { heads, headDim, positionOffset = 0, theta = 10000 } = options;
  if (x.dtype !== "f32") throw new Error(`${op}: expected an f32 input, got ${x.dtype}`);
  if (x.shape.length < 2) {
    throw new Error(`${op}: expected (..., seq_len, heads * headDim), got shape [${x.shape}]`);
  }
  if (!Number.isInteger(headDim) || headDim < 2 || headDim % 2 !== 0) {
    throw new Error(`${op}: headDim must be a positive even integer, got ${headDim}`);
  }
  if (!Number.isInteger(heads) || heads < 1) {
    throw new Error(`${op}: heads must be a positive integer, got ${heads}`);
  }
  const cols = x.shape[x.shape.length - 1];
  if (cols !== heads * headDim) {
    throw new Error(
      `${op}: last dimension of [${x.shape}] is ${cols}, expected heads * headDim = ${heads} * ${headDim}`,
    );
  }
  if (!Number.isInteger(positionOffset) || positionOffset < 0) {
    throw new Error(`${op}: positionOffset must be an integer >= 0, got ${positionOffset}`);
  }
  if (!(theta > 0) || !Number.isFinite(theta)) {
    throw new Error(`${op}: theta must be finite and > 0, got ${theta}`);
  }
}

function rotate(op: string, x: Tensor, options: RopeOptions, sign: 1 | -1): Tensor {
  checkOptions(op, x, options);
  const { heads, headDim, positionOffset = 0, theta = 10000, exactAngles = false } = options;
  const seqLen = x.shape[x.shape.length - 2];
  const half = headDim / 2;
  const pairs = x.size / 2;
  const out = empty(x.shape);
  if (pairs === 0) return out;

  const table = tableFor(op, theta, headDim, positionOffset + seqLen, exactAngles);
  const kernel = rt().kernel({
    shader: "rope.wgsl",
    entryPoint: "rotate",
    bindings: ["uniform", "read", "read", "storage"],
    defines: { WORKGROUP: ROPE_WORKGROUP },
  });
  // positionOffset changes with every decoding step, but it repeats from one generated sequence
  // to the next, so the interned uniform buffers stay few.
  const params = packParams([pairs, half, heads, seqLen, positionOffset, { f32: sign }, 0, 0]);
  rt().dispatch(
    kernel,
    params,
    [x.buffer, table.buffer, out.buffer],
    grid1d(Math.ceil(pairs / ROPE_WORKGROUP)),
  );
  return out;
}

// The kept table covering at least `positions` positions, built or grown on demand.
function tableFor(
  op: string,
  theta: number,
  headDim: number,
  positions: number,
  exactAngles: boolean,
): Tensor {
  const key = `${theta}:${headDim}:${exactAngles ? "exact" : "f32"}`;
  const cached = tables.get(key);
  if (cached && !cached.tensor.isDisposed && cached.positions >= positions) return cached.tensor;

  const capacity = Math.max(ROPE_MIN_TABLE_POSITIONS, 2 ** Math.ceil(Math.log2(positions)));
  const bytes = capacity * headDim * 4;
  if (bytes > rt().gpu.maxBindingBytes) {
    throw new Error(
      `${op}: a table of ${capacity} positions for headDim ${headDim} needs ${bytes} bytes, ` +
        `above the storage binding limit of ${rt().gpu.maxBindingBytes} bytes; ` +
        `reduce positionOffset + seq_len (${positions})`,
    );
  }
  const data = ropeTableData(theta, headDim, capacity, exactAngles);
  // fromArray submits the commands recorded so far before its upload, so those that read the old
  // table run before the pool can hand its buffer to another tensor.
  const tensor = fromArray(data, [capacity, headDim / 2, 2]).keep();
  cached?.tensor.dispose();
  tables.set(key, { tensor, positions: capacity });
  return tensor;
}
