// Launchers for kernels/softmax.wgsl: masked, scaled softmax over the last dimension and its
// backward pass. Raw kernels without autograd.

import { rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import { grid1d, packParams, sameShape } from "./common.ts";

// Threads per row, by row width. Most threads should have several keys to read, because the
// reduction costs a barrier per halving of the workgroup. On llvmpipe (Mesa, LLVM 15, 2 cores),
// rows of 77 keys ran 1.5x faster with 32 threads than with 64 and 5x faster than with 256; rows
// of 768 keys ran the same with 32 or 64.
export const SOFTMAX_NARROW_WORKGROUP = 32; // rows of up to SOFTMAX_NARROW_COLS keys
export const SOFTMAX_WIDE_WORKGROUP = 256; // wider rows (the vocabulary)
export const SOFTMAX_NARROW_COLS = 1024;

export interface SoftmaxOptions {
  // Query i of a block of Tq queries attends to keys j <= i + (Tk - Tq).
  causal?: boolean;
  // f32 (batch, Tk), nonzero for a real key and 0 for padding. All heads and queries of a batch
  // entry share its row.
  keyPaddingMask?: Tensor | null;
  // Multiplies the scores before the softmax (1 / sqrt(head dim) in attention).
  scale?: number;
  // Heads per batch entry, by default shape[1] for a 4-D input and 1 otherwise.
  heads?: number;
}

export interface SoftmaxBackwardOptions {
  // The forward scale, so that the gradient is taken with respect to the unscaled input.
  scale?: number;
}

function workgroupFor(cols: number): number {
  return cols <= SOFTMAX_NARROW_COLS ? SOFTMAX_NARROW_WORKGROUP : SOFTMAX_WIDE_WORKGROUP;
}

// Softmax over the last dimension of `x`, viewed as (batch, heads, Tq, Tk) rows of length Tk.
// A 1-D input is one row; a 2-D input (rows, cols) has Tq = rows. Rows whose keys are all
// masked come out as zeros.
export function softmax(x: Tensor, options: SoftmaxOptions = {}): Tensor {
  const { causal = false, keyPaddingMask = null, scale = 1 } = options;
  if (x.dtype !== "f32") throw new Error(`softmax: expected an f32 input, got ${x.dtype}`);
  if (x.shape.length === 0) throw new Error("softmax: expected at least 1 dimension, got a scalar");
  if (!Number.isFinite(scale)) throw new Error(`softmax: scale must be finite, got ${scale}`);

  const rank = x.shape.length;
  const cols = x.shape[rank - 1];
  const tq = rank >= 2 ? x.shape[rank - 2] : 1;
  const out = empty(x.shape);
  if (x.size === 0) return out;
  const rows = x.size / cols;

  if (options.heads !== undefined && rank === 4 && options.heads !== x.shape[1]) {
    throw new Error(`softmax: heads=${options.heads} does not match dimension 1 of [${x.shape}]`);
  }
  const heads = options.heads ?? (rank === 4 ? x.shape[1] : 1);
  const groups = rows / tq;
  if (!Number.isInteger(heads) || heads < 1 || groups % heads !== 0) {
    throw new Error(
      `softmax: ${groups} (batch x heads) row blocks of [${x.shape}] do not divide into heads=${heads}`,
    );
  }
  const batch = groups / heads;

  if (keyPaddingMask) {
    if (keyPaddingMask.dtype !== "f32") {
      throw new Error(`softmax: keyPaddingMask must be f32, got ${keyPaddingMask.dtype}`);
    }
    if (keyPaddingMask.size !== batch * cols) {
      throw new Error(
        `softmax: keyPaddingMask of shape [${keyPaddingMask.shape}] for scores [${x.shape}]; expected [${batch}, ${cols}]`,
      );
    }
  }

  const workgroup = workgroupFor(cols);
  const kernel = rt().kernel({
    shader: "softmax.wgsl",
    entryPoint: "forward",
    bindings: ["uniform", "read", "read", "storage"],
    defines: { WORKGROUP: workgroup, CAUSAL: causal, HAS_MASK: keyPaddingMask !== null },
  });
  const params = packParams([rows, cols, tq, heads, { f32: scale }, 0, 0, 0]);
  // Without a mask the binding still needs a buffer, so `x` is bound there and never read.
  const maskBuffer = keyPaddingMask ? keyPaddingMask.buffer : x.buffer;
  rt().dispatch(kernel, params, [x.buffer, maskBuffer, out.buffer], grid1d(rows));
  return out;
}

// Gradient of softmax with respect to its input, from the forward output `y` and the output
// gradient `dy`: scale * y * (dy - sum(dy * y)) per row. Masked keys have y = 0 and get 0.
export function softmaxBackward(
  y: Tensor,
  dy: Tensor,
  options: SoftmaxBackwardOptions = {},
): Tensor {
  const { scale = 1 } = options;
  if (!sameShape(y.shape, dy.shape)) {
    throw new Error(
      `softmaxBackward: y of shape [${y.shape}] and dy of shape [${dy.shape}] differ`,
    );
  }
  if (y.dtype !== "f32" || dy.dtype !== "f32") {
    throw new Error(`softmaxBackward: expected f32 tensors, got ${y.dtype} and ${dy.dtype}`);
  }
  if (y.shape.length === 0) {
    throw new Error("softmaxBackward: expected at least 1 dimension, got a scalar");
  }
  if (!Number.isFinite(scale)) {
    throw new Error(`softmaxBackward: scale must be finite, got ${scale}`);
  }

  const cols = y.shape[y.shape.length - 1];
  const dx = empty(y.shape);
  if (y.size === 0) return dx;
  const rows = y.size / cols;

  const workgroup = workgroupFor(cols);
  const kernel = rt().kernel({
    shader: "softmax.wgsl",
    entryPoint: "backward",
    bindings: ["uniform", "read", "read", "storage"],
    defines: { WORKGROUP: workgroup, CAUSAL: false, HAS_MASK: false },
  });
  const params = packParams([rows, cols, 1, 1, { f32: scale }, 0, 0, 0]);
  rt().dispatch(kernel, params, [y.buffer, dy.buffer, dx.buffer], grid1d(rows));
  return dx;
}
