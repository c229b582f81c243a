// Launchers for kernels/dropout.wgsl: seeded, stateless dropout whose backward pass regenerates
// the forward mask from (seed, salt, element index). Raw kernels without autograd.

import { rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import { grid1d, packParams } from "./common.ts";

// Threads per workgroup; one element each, as in kernels/elementwise.ts.
const WORKGROUP = 256;
const TWO_POW_32 = 2 ** 32;

function validate(op: string, t: Tensor, p: number, seedBuffer: Tensor, salt: number): void {
  if (t.dtype !== "f32") throw new Error(`${op}: expected an f32 tensor, got ${t.dtype}`);
  if (!(p >= 0 && p <= 1)) throw new Error(`${op}: drop probability p must be in [0, 1], got ${p}`);
  if (seedBuffer.dtype !== "u32" || seedBuffer.size < 1) {
    throw new Error(
      `${op}: seedBuffer must be a u32 tensor with at least 1 element, got [${seedBuffer.shape}] (${seedBuffer.dtype})`,
    );
  }
  if (!Number.isInteger(salt) || salt < 0 || salt > 0xffffffff) {
    throw new Error(`${op}: salt must be a u32, got ${salt}`);
  }
  if (t.size > 0xffffffff) {
    throw new Error(`${op}: ${t.size} elements exceed the u32 element index`);
  }
}

// out = input * mask / (1 - p), with mask[i] a hash of (seedBuffer[0], salt, i).
function launch(input: Tensor, p: number, seedBuffer: Tensor, salt: number): Tensor {
  const out = empty(input.shape);
  if (input.size === 0) return out;
  if (p === 0) {
    // A copy keeps p = 0 an exact identity even for subnormals, which a GPU that flushes them
    // to zero would lose in x * 1.0.
    rt().copy(input.buffer, 0, out.buffer, 0, input.bytes);
    return out;
  }

  const kernel = rt().kernel({
    shader: "dropout.wgsl",
    entryPoint: "main",
    bindings: ["uniform", "read", "read", "storage"],
    defines: { WORKGROUP },
  });
  const dropAll = p === 1;
  const threshold = Math.min(Math.round(p * TWO_POW_32), 0xffffffff);
  const scale = dropAll ? 0 : 1 / (1 - p);
  const params = packParams([
    input.size,
    threshold,
    salt,
    dropAll ? 1 : 0,
    { f32: scale },
    0,
    0,
    0,
  ]);
  rt().dispatch(
    kernel,
    params,
    [input.buffer, seedBuffer.buffer, out.buffer],
    grid1d(Math.ceil(input.size / WORKGROUP)),
  );
  return out;
}

// Drops each element of `x` with probability `p` and scales the rest by 1 / (1 - p). The mask
// depends only on seedBuffer[0] (a u32 tensor the caller rewrites each step), `salt` (a
// constant per call site, so layers differ) and the element index. p = 0 returns an exact copy.
export function dropout(x: Tensor, p: number, seedBuffer: Tensor, salt: number): Tensor {
  validate("dropout", x, p, seedBuffer, salt);
  return launch(x, p, seedBuffer, salt);
}

// Gradient of dropout: dy * mask / (1 - p) with the mask of the forward call that used the
// same p, seedBuffer contents and salt, and a tensor of the same size.
export function dropoutBackward(dy: Tensor, p: number, seedBuffer: Tensor, salt: number): Tensor {
  validate("dropoutBackward", dy, p, seedBuffer, salt);
  return launch(dy, p, seedBuffer, salt);
}
