// Launchers for kernels/elementwise.wgsl. These are raw kernels without autograd; the
// differentiable versions live in engine/ops.ts.

import { rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import { grid1d, packParams } from "./common.ts";

// Threads per workgroup; 256 fills a SIMD-friendly multiple on both GPUs and llvmpipe.
const WORKGROUP = 256;

type Entry =
  | "add"
  | "add_into"
  | "mul"
  | "fill"
  | "relu"
  | "relu_backward"
  | "gelu"
  | "gelu_backward"
  | "quick_gelu"
  | "quick_gelu_backward";

function launch(entry: Entry, out: Tensor, a: Tensor, b: Tensor, alpha = 1, beta = 1): Tensor {
  const kernel = rt().kernel({
    shader: "elementwise.wgsl",
    entryPoint: entry,
    bindings: ["uniform", "read", "read", "storage"],
    defines: { WORKGROUP },
  });
  const params = packParams([out.size, b.size, { f32: alpha }, { f32: beta }]);
  rt().dispatch(kernel, params, [a.buffer, b.buffer, out.buffer], grid1d(Math.ceil(out.size / WORKGROUP)));
  return out;
}

function checkBroadcast(what: string, a: Tensor, b: Tensor): void {
  if (b.size === 0 || a.size % b.size !== 0) {
    throw new Error(`${what}: shape [${b.shape}] does not broadcast over [${a.shape}]`);
  }
}

// alpha * a + beta * b, where b may repeat over a's leading dimensions (bias, position embeddings).
export function add(a: Tensor, b: Tensor, alpha = 1, beta = 1): Tensor {
  checkBroadcast("add", a, b);
  return launch("add", empty(a.shape), a, b, alpha, beta);
}

// target += alpha * source, in place.
export function addInto(target: Tensor, source: Tensor, alpha = 1): Tensor {
  if (target.size !== source.size) throw new Error(`addInto: [${source.shape}] into [${target.shape}]`);
  return launch("add_into", target, source, source, alpha);
}

export function mul(a: Tensor, b: Tensor): Tensor {
  checkBroadcast("mul", a, b);
  return launch("mul", empty(a.shape), a, b);
}

export function scale(a: Tensor, alpha: number): Tensor {
  return launch("add", empty(a.shape), a, a, alpha, 0);
}

export function fill(shape: readonly number[], value: number): Tensor {
  return fillInto(empty(shape), value);
}

export function fillInto(out: Tensor, value: number): Tensor {
  const kernel = rt().kernel({
    shader: "elementwise.wgsl",
    entryPoint: "fill",
    bindings: ["uniform", "read", "read", "storage"],
    defines: { WORKGROUP },
  });
  // `fill` reads nothing, but the layout has two read bindings, and binding `out` there would
  // conflict with its writable binding, so a small shared scratch tensor fills those slots.
  const scratch = scratchTensor();
  const params = packParams([out.size, 1, { f32: value }, { f32: 0 }]);
  rt().dispatch(kernel, params, [scratch.buffer, scratch.buffer, out.buffer], grid1d(Math.ceil(out.size / WORKGROUP)));
  return out;
}

let scratch: Tensor | null = null;
function scratchTensor(): Tensor {
  if (!scratch || scratch.isDisposed) scratch = empty([4]).keep();
  return scratch;
}

export type Activation = "relu" | "gelu" | "quick_gelu";

export function activation(kind: Activation, x: Tensor): Tensor {
  return launch(kind, empty(x.shape), x, x);
}

export function activationBackward(kind: Activation, x: Tensor, dy: Tensor): Tensor {
  return launch(`${kind}_backward`, empty(x.shape), x, dy);
}
