// Launchers for kernels/layernorm.wgsl: layer normalization over the last dimension and its
// backward pass. Raw kernels without autograd.

import { rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import { ceilDiv, grid1d, packParams, sameShape } from "./common.ts";

// Threads per row, by row width, as in kernels/softmax.ts: most threads should have several
// elements to read, because every reduction costs a barrier per halving of the workgroup. On
// llvmpipe (Mesa, LLVM 15, 2 cores), 4928 rows of 768 ran forward and backward about 1.4x faster
// with 32 threads than with 64, and 2x faster than with 256.
export const LAYERNORM_NARROW_WORKGROUP = 32; // rows of up to LAYERNORM_NARROW_COLS elements
export const LAYERNORM_WIDE_WORKGROUP = 256;
export const LAYERNORM_NARROW_COLS = 1024;
// Threads per workgroup in the weight-gradient kernels, one column each.
export const LAYERNORM_COLUMN_WORKGROUP = 64;
// Rows summed by one thread before the partial sums are reduced over chunks. Smaller chunks give
// more workgroups to run in parallel, larger ones a shorter second pass.
export const LAYERNORM_ROWS_PER_CHUNK = 64;

export interface LayerNormOptions {
  eps?: number; // added to the variance, default 1e-5 as in PyTorch
}

export interface LayerNormOutput {
  y: Tensor; // same shape as x
  mean: Tensor; // [rows], rows = x.size / cols
  rstd: Tensor; // [rows], 1 / sqrt(var + eps)
}

export interface LayerNormBackwardOptions {
  // false skips dWeight and dBias (frozen weights), which are then returned as null.
  needWeightGrad?: boolean;
}

export interface LayerNormGrads {
  dx: Tensor;
  dWeight: Tensor | null;
  dBias: Tensor | null;
}

function rowWorkgroup(cols: number): number {
  return cols <= LAYERNORM_NARROW_COLS ? LAYERNORM_NARROW_WORKGROUP : LAYERNORM_WIDE_WORKGROUP;
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

// Normalizes each row of `x` over its last dimension, then applies `weight` and `bias`.
// Returns the output and the per-row mean and rstd that layerNormBackward needs.
export function layerNorm(
  x: Tensor,
  weight: Tensor,
  bias: Tensor,
  options: LayerNormOptions = {},
): LayerNormOutput {
  const { eps = 1e-5 } = options;
  const [rows, cols] = rowsAndCols("layerNorm", x);
  checkVector("layerNorm", "weight", weight, cols);
  checkVector("layerNorm", "bias", bias, cols);
  if (!(eps >= 0) || !Number.isFinite(eps)) {
    throw new Error(`layerNorm: eps must be finite and >= 0, got ${eps}`);
  }

  const y = empty(x.shape);
  const mean = empty([rows]);
  const rstd = empty([rows]);
  const kernel = rt().kernel({
    shader: "layernorm.wgsl",
    entryPoint: "forward",
    bindings: ["uniform", "read", "read", "read", "storage", "storage", "storage"],
    defines: { WORKGROUP: rowWorkgroup(cols), COLUMN_WORKGROUP: LAYERNORM_COLUMN_WORKGROUP },
  });
  const params = packParams([rows, cols, { f32: eps }, 0, 0, 0, 0, 0]);
  rt().dispatch(kernel, params, [
    x.buffer,
    weight.buffer,
    bias.buffer,
    y.buffer,
    mean.buffer,
    rstd.buffer,
  ], grid1d(rows));
  return { y, mean, rstd };
}

// Gradients of layerNorm from the forward input `x`, the output gradient `dy` and the saved
// `mean` and `rstd`. dWeight and dBias sum over all rows in a fixed order (deterministic).
export function layerNormBackward(
  x: Tensor,
  dy: Tensor,
  mean: Tensor,
  rstd: Tensor,
  weight: Tensor,
  options: LayerNormBackwardOptions = {},
): LayerNormGrads {
  const { needWeightGrad = true } = options;
  const [rows, cols] = rowsAndCols("layerNormBackward", x);
  if (!sameShape(x.shape, dy.shape) || dy.dtype !== "f32") {
    throw new Error(
      `layerNormBackward: dy of shape [${dy.shape}] (${dy.dtype}) for x of shape [${x.shape}]`,
    );
  }
  checkVector("layerNormBackward", "mean", mean, rows);
  checkVector("layerNormBackward", "rstd", rstd, rows);
  checkVector("layerNormBackward", "weight", weight, cols);

  const dx = empty(x.shape);
  const inputKernel = rt().kernel({
    shader: "layernorm.wgsl",
    entryPoint: "backward_input",
    bindings: ["uniform", "read", "read", "read", "read", "read", "storage"],
    defines: { WORKGROUP: rowWorkgroup(cols), COLUMN_WORKGROUP: LAYERNORM_COLUMN_WORKGROUP },
  });
  const rowParams = packParams([rows, cols, { f32: 0 }, 0, 0, 0, 0, 0]);
  rt().dispatch(
    inputKernel,
    rowParams,
    [x.buffer, dy.buffer, mean.buffer, rstd.buffer, weight.buffer, dx.buffer],
    grid1d(rows),
  );
  if (!needWeightGrad) return { dx, dWeight: null, dBias: null };

  const [dWeight, dBias] = weightGrads(x, dy, mean, rstd, rows, cols);
  return { dx, dWeight, dBias };
}

// dWeight = sum over rows of dy * xhat and dBias = sum over rows of dy, in two passes: partial
// sums over chunks of rows, then a sum over chunks. A single chunk is written directly.
function weightGrads(
  x: Tensor,
  dy: Tensor,
  mean: Tensor,
  rstd: Tensor,
  rows: number,
  cols: number,
): [Tensor, Tensor] {
  const maxGroups = rt().device.limits.maxComputeWorkgroupsPerDimension;
  const rowsPerChunk = Math.max(LAYERNORM_ROWS_PER_CHUNK, ceilDiv(rows, maxGroups));
  const chunks = Math.max(1, ceilDiv(rows, rowsPerChunk));
  const defines = { WORKGROUP: rowWorkgroup(cols), COLUMN_WORKGROUP: LAYERNORM_COLUMN_WORKGROUP };
  const columnGroups = ceilDiv(cols, LAYERNORM_COLUMN_WORKGROUP);

  const partialDWeight = empty(chunks === 1 ? [cols] : [chunks, cols]);
  const partialDBias = empty(chunks === 1 ? [cols] : [chunks, cols]);
  const partialKernel = rt().kernel({
    shader: "layernorm.wgsl",
    entryPoint: "param_grad_partial",
    bindings: ["uniform", "read", "read", "read", "read", "storage", "storage"],
    defines,
  });
  rt().dispatch(
    partialKernel,
    packParams([rows, cols, { f32: 0 }, rowsPerChunk, chunks, 0, 0, 0]),
    [x.buffer, dy.buffer, mean.buffer, rstd.buffer, partialDWeight.buffer, partialDBias.buffer],
    [columnGroups, chunks],
  );
  if (chunks === 1) return [partialDWeight, partialDBias];

  const dWeight = empty([cols]);
  const dBias = empty([cols]);
  const reduceKernel = rt().kernel({
    shader: "layernorm.wgsl",
    entryPoint: "param_grad_reduce",
    bindings: ["uniform", "read", "read", "storage", "storage"],
    defines,
  });
  rt().dispatch(
    reduceKernel,
    packParams([rows, cols, { f32: 0 }, rowsPerChunk, chunks, 0, 0, 0]),
    [partialDWeight.buffer, partialDBias.buffer, dWeight.buffer, dBias.buffer],
    [columnGroups],
  );
  // The pool may hand these buffers to later tensors right away. That is safe because every
  // later use is recorded after the reduce dispatch that reads them.
  partialDWeight.dispose();
  partialDBias.dispose();
  return [dWeight, dBias];
}
