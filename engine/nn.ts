// Parameters and the module tree that names them. Names are the Hugging Face / PyTorch
// state-dict keys ("h.0.attn.c_attn.weight"), so checkpoints load and save without a mapping.

import { empty, fromArray, Tensor } from "./tensor.ts";
import { randomNormal } from "./init.ts";
import { copyBlock } from "../kernels/copy.ts";
import type { Bf16Weight } from "../kernels/matmul_bf16.ts";

export class Module {
  private params = new Map<string, Tensor>();
  private frozenBf16 = new Map<string, Bf16Slot>();
  private children = new Map<string, Module>();
  training = true;

  // Registers a new trainable parameter (PyTorch's register_parameter).
  addParameter(name: string, shape: number[], init: ParamInit): Tensor {
    const size = shape.reduce((a, b) => a * b, 1);
    const t = skipInit ? empty(shape).keep() : fromArray(initValues(size, init), shape).keep();
    t.requiresGrad = true;
    this.params.set(name, t);
    return t;
  }

  // Registers a frozen weight kept as packed bf16 on the GPU (half the memory of f32). It is no
  // parameter: it gets no gradient and is filled by the checkpoint loader.
  addBf16Weight(name: string, rows: number, cols: number): Bf16Slot {
    const slot: Bf16Slot = { rows, cols, weight: null };
    this.frozenBf16.set(name, slot);
    return slot;
  }

  // Every bf16 weight with its full dotted name.
  namedBf16Weights(prefix = ""): [string, Bf16Slot][] {
    const out: [string, Bf16Slot][] = [];
    for (const [name, slot] of this.frozenBf16) out.push([prefix + name, slot]);
    for (const [name, m] of this.children) out.push(...m.namedBf16Weights(`${prefix}${name}.`));
    return out;
  }

  // Registers a submodule under `name` (PyTorch's add_module).
  addModule<M extends Module>(name: string, module: M): M {
    this.children.set(name, module);
    return module;
  }

  // Every parameter with its full dotted name, in registration order.
  namedParameters(prefix = ""): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [name, t] of this.params) out.push([prefix + name, t]);
    for (const [name, m] of this.children) out.push(...m.namedParameters(`${prefix}${name}.`));
    return out;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  // Freezes (or unfreezes) every parameter: frozen ones get no gradient, but gradients still
  // flow through them to earlier layers.
  setTrainable(trainable: boolean): void {
    for (const t of this.parameters()) t.requiresGrad = trainable;
  }

  train(mode = true): void {
    this.training = mode;
    for (const m of this.children.values()) m.train(mode);
  }

  eval(): void {
    this.train(false);
  }

  numParameters(): number {
    return this.parameters().reduce((s, t) => s + t.size, 0);
  }

  // Replaces the values of the named parameter; the shape must match exactly.
  loadParameter(name: string, data: Float32Array, shape: readonly number[], source = "checkpoint"): void {
    const target = this.namedParameters().find(([n]) => n === name)?.[1];
    if (!target) throw new Error(`${source}: unexpected tensor "${name}"`);
    if (shape.length !== target.shape.length || shape.some((d, i) => d !== target.shape[i])) {
      throw new Error(`${source}: tensor "${name}" has shape [${shape.join(", ")}], expected [${target.shape.join(", ")}]`);
    }
    // Upload through a fresh tensor so the parameter's buffer is written once, in order.
    const staged = fromArray(data, target.shape);
    copyInto(staged, target);
    staged.dispose();
  }

  dispose(): void {
    for (const t of this.parameters()) t.dispose();
    for (const [, slot] of this.namedBf16Weights()) slot.weight?.tensor.dispose();
  }
}

let skipInit = false;

// Builds modules whose parameters are allocated but not initialised, for weights that are about
// to be loaded from a checkpoint (random init of a 124M-parameter model costs seconds).
export function withoutInit<T>(build: () => T): T {
  const previous = skipInit;
  skipInit = true;
  try {
    return build();
  } finally {
    skipInit = previous;
  }
}

// A bf16 weight's place in a module; `weight` is set once the checkpoint is loaded.
export interface Bf16Slot {
  rows: number;
  cols: number;
  weight: Bf16Weight | null;
}

export type ParamInit =
  | { kind: "normal"; std: number; seed: number }
  | { kind: "zeros" }
  | { kind: "ones" };

function initValues(size: number, init: ParamInit): Float32Array {
  if (init.kind === "zeros") return new Float32Array(size);
  if (init.kind === "ones") return new Float32Array(size).fill(1);
  return randomNormal(size, init.seed, init.std);
}

// Deterministic per-parameter seeds from a model seed and the parameter's name.
export function seedFor(modelSeed: number, name: string): number {
  let h = (modelSeed ^ 0x9e3779b9) >>> 0;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

function copyInto(src: Tensor, dst: Tensor): void {
  copyBlock(src, dst, { Z: 1, R: 1, C: src.size, srcZ: 0, srcR: 0, dstZ: 0, dstR: 0 });
}
