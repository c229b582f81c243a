// Launchers for kernels/swiglu.wgsl: the SwiGLU activation of Llama and Qwen2 MLPs,
// silu(x W_gate) * (x W_up), and plain SiLU, with their backward passes. Raw kernels without
// autograd.

import { type Kernel, rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import { grid1d, packParams, sameShape } from "./common.ts";

// Threads per workgroup, as in kernels/elementwise.ts: one thread per element.
const SWIGLU_WORKGROUP = 256;

export interface SwigluGrads {
  dGate: Tensor;
  dUp: Tensor;
}

function checkSame(op: string, names: string[], tensors: Tensor[]): void {
  const expected = tensors[0].shape;
  tensors.forEach((t, i) => {
    if (t.dtype !== "f32") throw new Error(`${op}: ${names[i]} must be f32, got ${t.dtype}`);
    if (!sameShape(t.shape, expected)) {
      const mismatch = `${names[i]} of shape [${t.shape}]`;
      throw new Error(`${op}: ${mismatch} does not match ${names[0]} of shape [${expected}]`);
    }
  });
}

// Computes silu(gate) * up elementwise. gate and up have one shape, (rows, intermediate) in an
// MLP.
export function swiglu(gate: Tensor, up: Tensor): Tensor {
  checkSame("swiglu", ["gate", "up"], [gate, up]);
  const out = empty(gate.shape);
  const kernel = rt().kernel({
    shader: "swiglu.wgsl",
    entryPoint: "swiglu",
    bindings: ["uniform", "read", "read", "storage"],
    defines: { WORKGROUP: SWIGLU_WORKGROUP },
  });
  dispatch(kernel, [gate.buffer, up.buffer, out.buffer], out.size);
  return out;
}

// Computes the gradients of swiglu with respect to gate and up from the output gradient `dOut`.
export function swigluBackward(gate: Tensor, up: Tensor, dOut: Tensor): SwigluGrads {
  checkSame("swigluBackward", ["gate", "up", "dOut"], [gate, up, dOut]);
  const dGate = empty(gate.shape);
  const dUp = empty(gate.shape);
  const kernel = rt().kernel({
    shader: "swiglu.wgsl",
    entryPoint: "swiglu_backward",
    bindings: ["uniform", "read", "read", "read", "storage", "storage"],
    defines: { WORKGROUP: SWIGLU_WORKGROUP },
  });
  dispatch(kernel, [gate.buffer, up.buffer, dOut.buffer, dGate.buffer, dUp.buffer], gate.size);
  return { dGate, dUp };
}

// Computes silu(x) = x * sigmoid(x) elementwise.
export function silu(x: Tensor): Tensor {
  checkSame("silu", ["x"], [x]);
  const out = empty(x.shape);
  const kernel = rt().kernel({
    shader: "swiglu.wgsl",
    entryPoint: "silu",
    bindings: ["uniform", "read", "storage"],
    defines: { WORKGROUP: SWIGLU_WORKGROUP },
  });
  dispatch(kernel, [x.buffer, out.buffer], x.size);
  return out;
}

// Computes the gradient of silu with respect to x from the output gradient `dy`.
export function siluBackward(x: Tensor, dy: Tensor): Tensor {
  checkSame("siluBackward", ["x", "dy"], [x, dy]);
  const dx = empty(x.shape);
  const kernel = rt().kernel({
    shader: "swiglu.wgsl",
    entryPoint: "silu_backward",
    bindings: ["uniform", "read", "read", "storage"],
    defines: { WORKGROUP: SWIGLU_WORKGROUP },
  });
  dispatch(kernel, [x.buffer, dy.buffer, dx.buffer], x.size);
  return dx;
}

function dispatch(kernel: Kernel, buffers: GPUBuffer[], n: number): void {
  const params = packParams([n, 0, 0, 0]);
  rt().dispatch(kernel, params, buffers, grid1d(Math.ceil(n / SWIGLU_WORKGROUP)));
}
