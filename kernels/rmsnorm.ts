// Launchers for kernels/rmsnorm.wgsl: RMS normalization over the last dimension (Llama and
// Qwen2 RMSNorm) and its backward pass. Raw kernels without autograd.

import { rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import { ceilDiv, grid1d, packParams, sameShape } from "./common.ts";

// Threads per row, by row width, chosen as in kernels/layernorm.ts: most threads should have
// several elements to read, because every reduction costs a barrier per halving of the workgroup.
export const RMSNORM_NARROW_WORKGROUP = 32; // rows of up to RMSNORM_NARROW_COLS elements
export const RMSNORM_WIDE_WORKGROUP = 256;
export const RMSNORM_NARROW_COLS = 1024;
// Threads per workgroup in the weight-gradient kernels, one column each.
export const RMSNORM_COLUMN_WORKGROUP = 64;
// Rows summed by one thread before the partial sums are reduced over chunks. Smaller chunks give
// more workgroups to run in parallel, larger ones a shorter second pass.
export const RMSNORM_ROWS_PER_CHUNK = 64;

export interface RmsNormOptions {
  // Added to mean(x^2); pass the config's rms_norm_eps. The default 1e-6 is the value in the
  // Qwen2 test fixture, and the Llama fixture uses 1e-5.
  eps?: number;
}

export interface RmsNormOutput {
  y: Tensor; // same shape as x
  rstd: Tensor; // 1 / sqrt(mean(x^2) + eps), shape [rows] with rows = x.size / cols
}

export interface RmsNormBackwardOptions {
  // false skips dWeight (a frozen weight), which is then returned as null.
  needWeightGrad?: boolean;
}

export interface RmsNormGrads {
  dx: Tensor;
  dWeight: Tensor | null;
}

function rowWorkgroup(cols: number): number {
  return cols <= RMSNORM_NARROW_COLS ? RMSNORM_NARROW_WORKGROUP : RMSNORM_WIDE_WORKGROUP;
}

function kernelDefines(cols: number): Record<string, number> {
  return { WORKGROUP: rowWorkgroup(cols), COLUMN_WORKGROUP: RMSNORM_COLUMN_WORKGROUP };
}

function rowsAndCols(op: string, x: Tensor): [number, number] {
  if (x.dtype !== "f32") throw new Error(`${op}: expected an f32 input, got ${x.dtype}`);
  if (x.shape.length === 0) throw new Error(`${op}: expected at least 1 dimension, got a scalar`);
  const cols = x.shape[x.shape.length - 1];
  if (cols === 0) throw new Error(`${op}: cannot normalize rows of length 0 in [${x.shape}]`);
  return [x.size / cols, cols];
}

function checkVector(op: string, name: string, t: Tensor, length: number): void {
  if (t.dtype !== "f32" || t.size !== length) {
    throw new Error(
      `${op}: ${name} of shape [${t.shape}] (${t.dtype}); expected ${length} f32 values`,
    );
  }
}

// Normalizes each row of `x` by its root mean square, then multiplies by `weight`. Returns the
// output and the per-row rstd that rmsNormBackward needs.
export function rmsNorm(x: Tensor, weight: Tensor, options: RmsNormOptions = {}): RmsNormOutput {
  const { eps = 1e-6 } = options;
  const [rows, cols] = rowsAndCols("rmsNorm", x);
  checkVector("rmsNorm", "weight", weight, cols);
  if (!(eps >= 0) || !Number.isFinite(eps)) {
    throw new Error(`rmsNorm: eps must be finite and >= 0, got ${eps}`);
  }

  const y = empty(x.shape);
  const rstd = empty([rows]);
  const kernel = rt().kernel({
    shader: "rmsnorm.wgsl",
    entryPoint: "forward",
    bindings: ["uniform", "read", "read", "storage", "storage"],
    defines: kernelDefines(cols),
  });
  const params = packParams([rows, cols, { f32: eps }, 0, 0, 0, 0, 0]);
  rt().dispatch(kernel, params, [x.buffer, weight.buffer, y.buffer, rstd.buffer], grid1d(rows));
  return { y, rstd };
}

// Computes the gradients of rmsNorm from the forward input `x`, the output gradient `dy` and
// the saved `rstd`. dWeight sums over all rows in a fixed order, so it repeats bit for bit.
export function rmsNormBackward(
  x: Tensor,
  dy: Tensor,
  rstd: Tensor,
  weight: Tensor,
  options: RmsNormBackwardOptions = {},
): RmsNormGrads {
  const { needWeightGrad = true } = options;
  const [rows, cols] = rowsAndCols("rmsNormBackward", x);
  if (!sameShape(x.shape, dy.shape) || dy.dtype !== "f32") {
    throw new Error(
      `rmsNormBackward: dy of shape [${dy.shape}] (${dy.dtype}) for x of shape [${x.shape}]`,
    );
  }
  checkVector("rmsNormBackward", "rstd", rstd, rows);
  checkVector("rmsNormBackward", "weight", weight, cols);

  const dx = empty(x.shape);
  const inputKernel = rt().kernel({
    shader: "rmsnorm.wgsl",
    entryPoint: "backward_input",
    bindings: ["uniform", "read", "read", "read", "read", "storage"],
    defines: kernelDefines(cols),
  });
  rt().dispatch(
    inputKernel,
    packParams([rows, cols, { f32: 0 }, 0, 0, 0, 0, 0]),
    [x.buffer, dy.buffer, rstd.buffer, weight.buffer, dx.buffer],
    grid1d(rows),
  );
  if (!needWeightGrad) return { dx, dWeight: null };

  return { dx, dWeight: weightGrad(x, dy, rstd, rows, cols) };
}

// dWeight = sum over rows of dy * x * rstd, in two passes: partial sums over chunks of rows,
// then a sum over chunks. A single chunk is written directly.
function weightGrad(x: Tensor, dy: Tensor, rstd: Tensor, rows: number, cols: number): Tensor {
  const maxGroups = rt().device.limits.maxComputeWorkgroupsPerDimension;
  const rowsPerChunk = Math.max(RMSNORM_ROWS_PER_CHUNK, ceilDiv(rows, maxGroups));
  const chunks = Math.max(1, ceilDiv(rows, rowsPerChunk));
  const columnGroups = ceilDiv(cols, RMSNORM_COLUMN_WORKGROUP);
  const params = packParams([rows, cols, { f32: 0 }, rowsPerChunk, chunks, 0, 0, 0]);

  const partial = empty(chunks === 1 ? [cols] : [chunks, cols]);
  const partialKernel = rt().kernel({
    shader: "rmsnorm.wgsl",
    entryPoint: "weight_grad_partial",
    bindings: ["uniform", "read", "read", "read", "storage"],
    defines: kernelDefines(cols),
  });
  rt().dispatch(
    partialKernel,
    params,
    [x.buffer, dy.buffer, rstd.buffer, partial.buffer],
    [columnGroups, chunks],
  );
  if (chunks === 1) return partial;

  const dWeight = empty([cols]);
  const reduceKernel = rt().kernel({
    shader: "rmsnorm.wgsl",
    entryPoint: "weight_grad_reduce",
    bindings: ["uniform", "read", "storage"],
    defines: kernelDefines(cols),
  });
  rt().dispatch(reduceKernel, params, [partial.buffer, dWeight.buffer], [columnGroups]);
  // The pool may hand this buffer to a later tensor right away. That is safe because every later
  // use is recorded after the reduce dispatch that reads it.
  partial.dispose();
  return dWeight;
}
