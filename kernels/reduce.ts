// Launchers for kernels/reduce.wgsl: column sums, totals, the sum of squares over a list of
// tensors (the global gradient norm), and row-wise argmax, log-softmax and top-k.

import { rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import { ceilDiv, chunkBinding, grid1d, packParams, type RowChunk, rowChunks } from "./common.ts";

// Re-exported so that imports of the row chunking from this module keep working.
export { chunkBinding, type RowChunk, rowChunks } from "./common.ts";

// Threads per workgroup of the 1-D and row kernels; 256 is a power of two (the tree reductions
// need one) and gives each thread about 200 columns of a GPT-2 vocabulary row.
export const REDUCE_WORKGROUP = 256;
// sum_rows: 32 adjacent columns per workgroup keep row reads contiguous, and 8 threads per
// column split the rows so short-and-wide and tall-and-narrow inputs both keep threads busy.
export const SUM_ROWS_TILE_C = 32;
export const SUM_ROWS_LANES = 8;
// Upper bound on the workgroups of one partial_sum dispatch. The partials stay small, so the
// final one-workgroup sum reads at most this many values per tensor.
export const PARTIAL_MAX_GROUPS = 64;
// Elements each partial_sum thread should cover before another workgroup is added.
const PARTIAL_ELEMENTS_PER_THREAD = 16;

function rowKernel(entryPoint: string) {
  return rt().kernel({
    shader: "reduce.wgsl",
    entryPoint,
    bindings: entryPoint === "topk_rows" ? ["uniform", "read", "storage", "storage"] : ["uniform", "read", "storage"],
    defines: { WORKGROUP: REDUCE_WORKGROUP, TILE_C: SUM_ROWS_TILE_C, LANES: SUM_ROWS_LANES, SQUARE: false },
  });
}

function matrixShape(caller: string, x: Tensor): [number, number] {
  if (x.dtype !== "f32") throw new Error(`${caller}: expected an f32 tensor, got ${x.dtype}`);
  if (x.shape.length < 1) throw new Error(`${caller}: expected a tensor with at least 1 dimension, got a scalar`);
  const cols = x.shape[x.shape.length - 1];
  if (cols < 1) throw new Error(`${caller}: rows of shape [${x.shape}] are empty`);
  return [x.size / cols, cols];
}

function rowParams(chunk: RowChunk, cols: number, k = 0): Uint32Array {
  return packParams([chunk.rows, cols, chunk.elementOffset, chunk.row0, k, 0, 0, 0]);
}

// ---- column sums --------------------------------------------------------------------------------

// Sums over the leading dimensions: x of shape (..., C) gives (C). Used for bias gradients.
export function sumRows(x: Tensor): Tensor {
  const [rows, cols] = matrixShape("sumRows", x);
  const out = empty([cols]);
  const kernel = rt().kernel({
    shader: "reduce.wgsl",
    entryPoint: "sum_rows",
    bindings: ["uniform", "read", "storage"],
    defines: { WORKGROUP: REDUCE_WORKGROUP, TILE_C: SUM_ROWS_TILE_C, LANES: SUM_ROWS_LANES, SQUARE: false },
  });
  rt().dispatch(kernel, packParams([rows, cols]), [x.buffer, out.buffer], grid1d(ceilDiv(cols, SUM_ROWS_TILE_C)));
  return out;
}

// ---- totals -------------------------------------------------------------------------------------

function partialGroups(n: number): number {
  return Math.min(PARTIAL_MAX_GROUPS, Math.max(1, ceilDiv(n, REDUCE_WORKGROUP * PARTIAL_ELEMENTS_PER_THREAD)));
}

function reduceTotal(tensors: Tensor[], square: boolean): Tensor {
  for (const t of tensors) {
    if (t.dtype !== "f32") throw new Error(`${square ? "sumSquares" : "sum"}: expected f32 tensors, got ${t.dtype} [${t.shape}]`);
    t.assertLive(square ? "sumSquares" : "sum");
  }
  const groups = tensors.map((t) => partialGroups(t.size));
  const slots = groups.reduce((a, b) => a + b, 0);
  const partials = empty([Math.max(slots, 1)]);
  const out = empty([1]);

  const partialKernel = rt().kernel({
    shader: "reduce.wgsl",
    entryPoint: "partial_sum",
    bindings: ["uniform", "read", "storage"],
    defines: { WORKGROUP: REDUCE_WORKGROUP, TILE_C: SUM_ROWS_TILE_C, LANES: SUM_ROWS_LANES, SQUARE: square },
  });
  let slot = 0;
  tensors.forEach((t, i) => {
    rt().dispatch(partialKernel, packParams([t.size, slot, groups[i], 0]), [t.buffer, partials.buffer], [groups[i]]);
    slot += groups[i];
  });

  const finalKernel = rt().kernel({
    shader: "reduce.wgsl",
    entryPoint: "final_sum",
    bindings: ["uniform", "read", "storage"],
    defines: { WORKGROUP: REDUCE_WORKGROUP, TILE_C: SUM_ROWS_TILE_C, LANES: SUM_ROWS_LANES, SQUARE: false },
  });
  rt().dispatch(finalKernel, packParams([slots, 0, 0, 0]), [partials.buffer, out.buffer], [1]);
  // Later dispatches that reuse this buffer run after the ones recorded above.
  partials.dispose();
  return out;
}

// The sum of all elements, as a tensor of shape (1).
export function sum(x: Tensor): Tensor {
  return reduceTotal([x], false);
}

// The sum of squares of every element of every tensor, as a tensor of shape (1); the global
// gradient norm is its square root. An empty list gives 0. Nothing is read back to the CPU.
export function sumSquares(tensors: Tensor[]): Tensor {
  return reduceTotal(tensors, true);
}

// ---- row kernels --------------------------------------------------------------------------------

// Index of the largest value in each row of x (..., C), as i32 of shape (...). Ties give the
// lowest index. NOTE: rows containing NaN give an unspecified index within [0, C).
export function argmaxRows(x: Tensor): Tensor {
  const [rows, cols] = matrixShape("argmaxRows", x);
  const out = empty(x.shape.slice(0, -1), "i32");
  const kernel = rowKernel("argmax_rows");
  for (const chunk of rowChunks(rows, cols)) {
    rt().dispatch(kernel, rowParams(chunk, cols), [chunkBinding(x, chunk), out.buffer], grid1d(chunk.rows));
  }
  return out;
}

// log(softmax(x)) over the last dimension, computed as x - max - log(sum(exp(x - max))).
export function logSoftmaxRows(x: Tensor): Tensor {
  const [rows, cols] = matrixShape("logSoftmaxRows", x);
  const out = empty(x.shape);
  const kernel = rowKernel("log_softmax_rows");
  for (const chunk of rowChunks(rows, cols)) {
    rt().dispatch(kernel, rowParams(chunk, cols), [chunkBinding(x, chunk), chunkBinding(out, chunk)], grid1d(chunk.rows));
  }
  return out;
}

// The k largest values of each row of x (..., C) in descending order with their column indices
// (i32), both of shape (..., k). Equal values are listed by increasing index. The kernel makes k
// passes over each row, so large k on wide rows is slow (k = 64 on 50257 columns is 64 passes).
// NOTE: rows containing NaN give unspecified results, and an index can be -1 there.
export function topkRows(x: Tensor, k: number): { values: Tensor; indices: Tensor } {
  const [rows, cols] = matrixShape("topkRows", x);
  if (!Number.isInteger(k) || k < 1 || k > cols) {
    throw new Error(`topkRows: k = ${k} is invalid for rows of ${cols} values; expected 1 <= k <= ${cols}`);
  }
  const outShape = [...x.shape.slice(0, -1), k];
  const values = empty(outShape);
  const indices = empty(outShape, "i32");
  const kernel = rowKernel("topk_rows");
  for (const chunk of rowChunks(rows, cols)) {
    rt().dispatch(kernel, rowParams(chunk, cols, k), [chunkBinding(x, chunk), values.buffer, indices.buffer], grid1d(chunk.rows));
  }
  return { values, indices };
}
