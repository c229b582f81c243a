// Launchers for kernels/embedding.wgsl: embedding lookup and its deterministic gradient, for
// whole tables and for tables split along the vocabulary into chunk tensors.
//
// A table, gradient, output or incoming gradient larger than one storage binding
// (rt().gpu.maxBindingBytes) can stay one tensor, because the launchers bind windows of whole
// rows of it and dispatch once per window. GPT-2's 154 MB token embedding needs no chunk tensors.
//
// Ids outside the table: when `embedding` allocates its output, every row whose id the given
// table (chunk) does not hold is set to NaN, and later chunk calls with `out` overwrite the rows
// they hold. After all chunks, a NaN row therefore marks an id outside [0, V).
// `embeddingBackward` skips ids outside [rowOffset, rowOffset + rows).

import { rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import { ceilDiv, chunkBinding, elementWindow, fitsOneBinding, grid1d, packParams, type RowChunk, rowChunks } from "./common.ts";

// Threads per workgroup of the elementwise gather and zero passes.
const WORKGROUP = 256;
// The scatter pass has one thread per embedding column (768 for GPT-2), so smaller workgroups
// spread those few threads over more compute units.
const SCATTER_WORKGROUP = 64;

export interface EmbeddingOptions {
  rowOffset?: number; // vocabulary row held by the first row of `table` (default 0)
  out?: Tensor; // write into this (..., D) tensor, leaving rows of other chunks untouched
}

function checkIds(caller: string, ids: Tensor): void {
  if (ids.dtype !== "i32") throw new Error(`${caller}: ids must be i32, got ${ids.dtype} [${ids.shape}]`);
}

function checkOffset(caller: string, rowOffset: number): void {
  if (!Number.isInteger(rowOffset) || rowOffset < 0 || rowOffset > 0x7fffffff) {
    throw new Error(`${caller}: rowOffset ${rowOffset} must be an integer in [0, 2^31)`);
  }
}

// Looks up rows of `table` (rows, D) for ids of any shape, giving (...ids.shape, D). For a table
// split into chunk tensors along V, call it once per chunk with that chunk's `rowOffset`, passing
// the first call's result as `out` to the later ones. A table kept as one tensor needs one call
// whatever its size.
export function embedding(ids: Tensor, table: Tensor, options: EmbeddingOptions = {}): Tensor {
  const { rowOffset = 0 } = options;
  checkIds("embedding", ids);
  checkOffset("embedding", rowOffset);
  if (table.shape.length !== 2 || table.dtype !== "f32") {
    throw new Error(`embedding: table must be an f32 matrix (rows, D), got ${table.dtype} [${table.shape}]`);
  }
  const [rows, dim] = table.shape;
  const outShape = [...ids.shape, dim];
  let out = options.out;
  if (out) {
    if (out.size !== ids.size * dim || out.dtype !== "f32") {
      throw new Error(`embedding: out of shape [${out.shape}] for a result of shape [${outShape}]`);
    }
  } else {
    out = empty(outShape);
  }

  const gatherKernel = (fillMissing: boolean, windowed: boolean) =>
    rt().kernel({
      shader: "embedding.wgsl",
      entryPoint: "gather",
      bindings: ["uniform", "read", "read", "storage"],
      defines: { WORKGROUP, FILL_MISSING: fillMissing, WINDOWED: windowed },
    });
  const fillMissing = options.out === undefined;

  if ([ids, table, out].every((t) => fitsOneBinding(t.buffer))) {
    const params = packParams([ids.size, dim, rowOffset, rows, 0, 0, 0, 0]);
    const groups = grid1d(ceilDiv(out.size, WORKGROUP));
    rt().dispatch(gatherKernel(fillMissing, false), params, [ids.buffer, table.buffer, out.buffer], groups);
    return out;
  }

  // The first table window writes NaN to the output rows whose ids lie outside it, and the later
  // windows overwrite the rows whose ids they contain, as separate chunk calls would.
  const tableChunks = rowChunks(rows, dim);
  for (const tokens of rowChunks(ids.size, dim)) {
    const idsWindow = tokenIdsWindow(ids, tokens);
    tableChunks.forEach((chunk, i) => {
      const params = chunkParams(tokens, dim, rowOffset, chunk, idsWindow.elementOffset);
      rt().dispatch(
        gatherKernel(fillMissing && i === 0, true),
        params,
        [idsWindow.binding, chunkBinding(table, chunk), chunkBinding(out, tokens)],
        grid1d(ceilDiv(tokens.rows * dim, WORKGROUP)),
      );
    });
  }
  return out;
}

export interface EmbeddingBackwardOptions {
  rowOffset?: number; // first vocabulary row of the gradient chunk (default 0)
  rows?: number; // rows of the gradient chunk (default vocab - rowOffset)
}

// Gradient of the lookup with respect to the table: a (rows, D) tensor holding, for each
// vocabulary row in [rowOffset, rowOffset + rows), the sum of dOut over the tokens with that id,
// and 0 for rows no token uses. Repeated ids add up in token order, without atomics, so the
// result is deterministic.
export function embeddingBackward(ids: Tensor, dOut: Tensor, vocab: number, options: EmbeddingBackwardOptions = {}): Tensor {
  const { rowOffset = 0 } = options;
  const rows = options.rows ?? vocab - rowOffset;
  checkIds("embeddingBackward", ids);
  checkOffset("embeddingBackward", rowOffset);
  if (!Number.isInteger(rows) || rows < 1 || rowOffset + rows > vocab) {
    throw new Error(`embeddingBackward: rows [${rowOffset}, ${rowOffset + rows}) are not inside a vocabulary of ${vocab}`);
  }
  const dim = dOut.shape[dOut.shape.length - 1] ?? 0;
  if (dOut.dtype !== "f32" || dim < 1 || dOut.size !== ids.size * dim) {
    throw new Error(`embeddingBackward: dOut ${dOut.dtype} [${dOut.shape}] should be f32 [${[...ids.shape, "D"]}]`);
  }
  const grad = empty([rows, dim]);

  const zeroKernel = (windowed: boolean) =>
    rt().kernel({
      shader: "embedding.wgsl",
      entryPoint: "zero",
      bindings: ["uniform", "storage"],
      defines: { WORKGROUP, FILL_MISSING: false, WINDOWED: windowed },
    });
  const scatterKernel = (windowed: boolean) =>
    rt().kernel({
      shader: "embedding.wgsl",
      entryPoint: "scatter_add",
      bindings: ["uniform", "read", "read", "storage"],
      defines: { WORKGROUP: SCATTER_WORKGROUP, FILL_MISSING: false, WINDOWED: windowed },
    });

  if ([ids, dOut, grad].every((t) => fitsOneBinding(t.buffer))) {
    const params = packParams([ids.size, dim, rowOffset, rows, 0, 0, 0, 0]);
    rt().dispatch(zeroKernel(false), params, [grad.buffer], grid1d(ceilDiv(grad.size, WORKGROUP)));
    rt().dispatch(scatterKernel(false), params, [ids.buffer, dOut.buffer, grad.buffer], grid1d(ceilDiv(dim, SCATTER_WORKGROUP)));
    return grad;
  }

  // Token windows are visited in order for each gradient window, so repeated ids still add up in
  // token order.
  const tokenChunks = rowChunks(ids.size, dim);
  for (const chunk of rowChunks(rows, dim)) {
    const gradBinding = chunkBinding(grad, chunk);
    // zero reads only the chunk's rows, the width and the window offset.
    const zeroParams = packParams([0, dim, rowOffset + chunk.row0, chunk.rows, 0, chunk.elementOffset, 0, 0]);
    rt().dispatch(zeroKernel(true), zeroParams, [gradBinding], grid1d(ceilDiv(chunk.rows * dim, WORKGROUP)));
    for (const tokens of tokenChunks) {
      const idsWindow = tokenIdsWindow(ids, tokens);
      const params = chunkParams(tokens, dim, rowOffset, chunk, idsWindow.elementOffset);
      rt().dispatch(
        scatterKernel(true),
        params,
        [idsWindow.binding, chunkBinding(dOut, tokens), gradBinding],
        grid1d(ceilDiv(dim, SCATTER_WORKGROUP)),
      );
    }
  }
  return grad;
}

// Uniform parameters for one window of tokens against one window of table (or gradient) rows.
function chunkParams(
  tokens: RowChunk,
  dim: number,
  rowOffset: number,
  chunk: RowChunk,
  idsOffset: number,
): Uint32Array {
  return packParams([
    tokens.rows,
    dim,
    rowOffset + chunk.row0,
    chunk.rows,
    idsOffset,
    chunk.elementOffset,
    tokens.elementOffset,
    0,
  ]);
}

// The ids of the tokens in `tokens`, one element per token.
function tokenIdsWindow(ids: Tensor, tokens: RowChunk) {
  return elementWindow(ids.buffer, tokens.row0, tokens.row0 + tokens.rows);
}
