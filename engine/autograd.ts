// Reverse-mode automatic differentiation over GPU tensors.
//
// Differentiable ops call `record()` with their inputs and a backward closure. Creation order is
// a valid topological order, so `backward()` walks the tape from the end. Leaves with
// `requiresGrad` (trainable parameters) receive `.grad`; frozen weights have `requiresGrad`
// false and get none, while gradients still flow through them to whatever fed them.

import { type GradNode, Tensor } from "./tensor.ts";
import { add, fill } from "../kernels/elementwise.ts";

let tape: Tensor[] = [];
let gradEnabled = true;

export function isGradEnabled(): boolean {
  return gradEnabled;
}

// Runs `fn` without recording, for inference and evaluation.
export function noGrad<T>(fn: () => T): T {
  const previous = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = previous;
  }
}

export function needsGrad(t: Tensor): boolean {
  return t.requiresGrad || t.node !== null;
}

// Attaches a backward closure to `output` when any input needs a gradient; returns `output`.
export function record(
  output: Tensor,
  inputs: Tensor[],
  backward: GradNode["backward"],
): Tensor {
  if (!gradEnabled || !inputs.some(needsGrad)) return output;
  output.node = { inputs, backward };
  tape.push(output);
  return output;
}

// Back-propagates from a scalar `loss` (seeded with 1) or with an explicit `gradOutput`.
// Parameter gradients are accumulated into `.grad`; the tape is cleared afterwards.
export function backward(loss: Tensor, gradOutput?: Tensor): void {
  const grads = new Map<Tensor, Tensor>();
  grads.set(loss, gradOutput ?? onesLike(loss));

  for (let i = tape.length - 1; i >= 0; i--) {
    const output = tape[i];
    const node = output.node;
    const grad = grads.get(output);
    if (!node || !grad) continue;
    grads.delete(output);

    const inputGrads = node.backward(grad);
    node.inputs.forEach((input, k) => {
      const g = inputGrads[k];
      if (!g || !needsGrad(input)) return;
      if (input.node) accumulate(grads, input, g);
      else if (input.requiresGrad) {
        // Out of place: an op may hand the same gradient tensor to several inputs.
        input.grad = input.grad && !input.grad.isDisposed ? add(input.grad, g) : g;
      }
    });
  }
  clearTape();
}

function accumulate(grads: Map<Tensor, Tensor>, input: Tensor, g: Tensor): void {
  const existing = grads.get(input);
  if (existing) grads.set(input, add(existing, g));
  else grads.set(input, g);
}

export function clearTape(): void {
  for (const t of tape) t.node = null;
  tape = [];
}

function onesLike(t: Tensor): Tensor {
  if (t.size !== 1) throw new Error(`backward: loss must be a scalar, got shape [${t.shape}]; pass gradOutput`);
  return fill([...t.shape], 1);
}
