// Launchers for kernels/cross_entropy.wgsl: mean cross-entropy over raw logits with an ignore
// index, and its gradient with respect to the logits.
//
// Out-of-range labels: a label outside [0, V) that is not the ignore index makes the loss NaN
// and fills that row of the gradient with NaN; the kernels neither skip nor clamp it. Labels
// that come from the CPU can be checked before upload with `validateLabels`, which throws.

import { type BindingKind, rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import { chunkBinding, grid1d, packParams, rowChunks } from "./common.ts";

// Threads per row; 256 is a power of two (the tree reductions need one) and leaves each thread
// about 200 logits of a GPT-2 vocabulary row.
export const CROSS_ENTROPY_WORKGROUP = 256;
// PyTorch's default ignore_index.
export const IGNORE_INDEX = -100;

export interface CrossEntropyOptions {
  ignoreIndex?: number;
}

export interface CrossEntropyResult {
  loss: Tensor; // (1) mean loss over non-ignored rows, 0 when every row is ignored
  count: Tensor; // (1) number of non-ignored rows, as f32
}

const BINDINGS: Record<string, BindingKind[]> = {
  row_loss: ["uniform", "read", "read", "storage"],
  finalize: ["uniform", "read", "read", "storage", "storage"],
  count_valid: ["uniform", "read", "read", "storage", "storage"],
  backward: ["uniform", "read", "read", "read", "read", "storage"],
};

function kernelFor(entryPoint: keyof typeof BINDINGS, ignoreIndex: number) {
  return rt().kernel({
    shader: "cross_entropy.wgsl",
    entryPoint,
    bindings: BINDINGS[entryPoint],
    defines: { WORKGROUP: CROSS_ENTROPY_WORKGROUP, IGNORE_INDEX: { i32: ignoreIndex } },
  });
}

function checkInputs(caller: string, logits: Tensor, labels: Tensor): [number, number] {
  if (logits.dtype !== "f32") throw new Error(`${caller}: logits must be f32, got ${logits.dtype}`);
  if (labels.dtype !== "i32") throw new Error(`${caller}: labels must be i32, got ${labels.dtype}`);
  if (logits.shape.length < 2) throw new Error(`${caller}: logits of shape [${logits.shape}] need a class dimension`);
  const cols = logits.shape[logits.shape.length - 1];
  const rows = logits.size / cols;
  if (cols < 1) throw new Error(`${caller}: logits of shape [${logits.shape}] have no classes`);
  if (labels.size !== rows) {
    throw new Error(`${caller}: ${labels.size} labels [${labels.shape}] for ${rows} rows of logits [${logits.shape}]`);
  }
  return [rows, cols];
}

function rowParams(chunk: { rows: number; elementOffset: number; row0: number }, cols: number): Uint32Array {
  return packParams([chunk.rows, cols, chunk.elementOffset, chunk.row0]);
}

// Mean cross-entropy of logits (..., V) against labels (...), skipping rows labelled
// `ignoreIndex`, and the number of non-ignored rows, which crossEntropyBackward can reuse.
// A row wider than one binding is rejected, but any number of rows works: rows that do not fit
// one binding are processed in several dispatches.
export function crossEntropy(logits: Tensor, labels: Tensor, options: CrossEntropyOptions = {}): CrossEntropyResult {
  const ignoreIndex = options.ignoreIndex ?? IGNORE_INDEX;
  const [rows, cols] = checkInputs("crossEntropy", logits, labels);
  const rowLosses = empty([Math.max(rows, 1)]);
  const loss = empty([1]);
  const count = empty([1]);

  const rowKernel = kernelFor("row_loss", ignoreIndex);
  for (const chunk of rowChunks(rows, cols)) {
    rt().dispatch(
      rowKernel,
      rowParams(chunk, cols),
      [chunkBinding(logits, chunk), labels.buffer, rowLosses.buffer],
      grid1d(chunk.rows),
    );
  }
  rt().dispatch(
    kernelFor("finalize", ignoreIndex),
    packParams([rows, 0, 0, 0]),
    [rowLosses.buffer, labels.buffer, loss.buffer, count.buffer],
    [1],
  );
  // Later dispatches that reuse this buffer run after the ones recorded above.
  rowLosses.dispose();
  return { loss, count };
}

// Number of labels that are not `ignoreIndex`, as an f32 tensor of shape (1).
export function countValidLabels(labels: Tensor, options: CrossEntropyOptions = {}): Tensor {
  if (labels.dtype !== "i32") throw new Error(`countValidLabels: labels must be i32, got ${labels.dtype}`);
  const count = empty([1]);
  // count_valid writes only `count`; a scratch tensor fills the unused loss binding.
  const unused = empty([1]);
  rt().dispatch(
    kernelFor("count_valid", options.ignoreIndex ?? IGNORE_INDEX),
    packParams([labels.size, 0, 0, 0]),
    [labels.buffer, labels.buffer, unused.buffer, count.buffer],
    [1],
  );
  unused.dispose();
  return count;
}

export interface CrossEntropyBackwardOptions extends CrossEntropyOptions {
  count?: Tensor; // the forward's `count`; recomputed from the labels when omitted
}

// Gradient of the mean loss with respect to the logits: (softmax - onehot) * gradLoss / count
// for non-ignored rows, 0 for ignored rows, and 0 everywhere when every row is ignored.
// `gradLoss` is a (1) tensor on the GPU, so the incoming gradient is never read back.
export function crossEntropyBackward(
  logits: Tensor,
  labels: Tensor,
  gradLoss: Tensor,
  options: CrossEntropyBackwardOptions = {},
): Tensor {
  const ignoreIndex = options.ignoreIndex ?? IGNORE_INDEX;
  const [rows, cols] = checkInputs("crossEntropyBackward", logits, labels);
  if (gradLoss.size !== 1 || gradLoss.dtype !== "f32") {
    throw new Error(`crossEntropyBackward: gradLoss must be one f32 value, got ${gradLoss.dtype} [${gradLoss.shape}]`);
  }
  if (options.count && (options.count.size !== 1 || options.count.dtype !== "f32")) {
    throw new Error(`crossEntropyBackward: count must be one f32 value, got ${options.count.dtype} [${options.count.shape}]`);
  }
  const count = options.count ?? countValidLabels(labels, { ignoreIndex });
  const dlogits = empty(logits.shape);

  const kernel = kernelFor("backward", ignoreIndex);
  for (const chunk of rowChunks(rows, cols)) {
    rt().dispatch(
      kernel,
      rowParams(chunk, cols),
      [chunkBinding(logits, chunk), labels.buffer, gradLoss.buffer, count.buffer, chunkBinding(dlogits, chunk)],
      grid1d(chunk.rows),
    );
  }
  if (!options.count) count.dispose();
  return dlogits;
}

// Throws if a label is neither `ignoreIndex` nor inside [0, vocab); for labels built on the CPU,
// before they are uploaded.
export function validateLabels(labels: ArrayLike<number>, vocab: number, ignoreIndex = IGNORE_INDEX): void {
  for (let i = 0; i < labels.length; i++) {
    const label = labels[i];
    if (label === ignoreIndex) continue;
    if (!Number.isInteger(label) || label < 0 || label >= vocab) {
      throw new Error(`label ${label} at position ${i} is outside [0, ${vocab}) and is not the ignore index ${ignoreIndex}`);
    }
  }
}
