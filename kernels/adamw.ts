// Launcher for kernels/adamw.wgsl and the AdamW optimizer built on it: PyTorch's
// torch.optim.AdamW with optional global gradient-norm clipping (clip_grad_norm_) done on the GPU.

import { rt } from "../engine/runtime.ts";
import { empty, Tensor, upload } from "../engine/tensor.ts";
import { ceilDiv, grid1d, packParams } from "./common.ts";
import { fillInto } from "./elementwise.ts";
import { sumSquares } from "./reduce.ts";

// Threads per workgroup; the update is elementwise and memory-bound.
const WORKGROUP = 256;
// Floats per parameter in the `hyper` buffer: lr, lr / bc1, sqrt(bc2), unused (16-byte stride).
const HYPER_STRIDE = 4;

export interface AdamWSettings {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  maxGradNorm: number | null; // null: no clipping
}

// Updates `param`, `expAvg` and `expAvgSq` in place for one step. `hyper` contains this
// parameter's per-step values at floats 4 * slot to 4 * slot + 3 (see adamw.wgsl).
// `gradSumSquares` is the (1) sum of squares of all gradients, read only when
// settings.maxGradNorm is set.
export function adamwUpdate(
  param: Tensor,
  grad: Tensor,
  expAvg: Tensor,
  expAvgSq: Tensor,
  hyper: Tensor,
  slot: number,
  gradSumSquares: Tensor | null,
  settings: AdamWSettings,
): void {
  for (const [name, t] of [["grad", grad], ["expAvg", expAvg], ["expAvgSq", expAvgSq]] as const) {
    if (t.size !== param.size || t.dtype !== "f32") {
      throw new Error(`adamwUpdate: ${name} ${t.dtype} [${t.shape}] does not match the parameter f32 [${param.shape}]`);
    }
  }
  if (hyper.size < HYPER_STRIDE * (slot + 1)) throw new Error(`adamwUpdate: hyper of ${hyper.size} floats has no slot ${slot}`);
  const clip = settings.maxGradNorm !== null;
  if (clip && (!gradSumSquares || gradSumSquares.size !== 1)) {
    throw new Error("adamwUpdate: clipping needs the (1) sum of squares of the gradients");
  }

  const kernel = rt().kernel({
    shader: "adamw.wgsl",
    entryPoint: "main",
    bindings: ["uniform", "read", "read", "read", "storage", "storage", "storage"],
    defines: { WORKGROUP, CLIP: clip },
  });
  const params = packParams([
    param.size,
    slot,
    { f32: settings.beta1 },
    { f32: 1 - settings.beta1 },
    { f32: settings.beta2 },
    { f32: 1 - settings.beta2 },
    { f32: settings.eps },
    { f32: settings.weightDecay },
    { f32: settings.maxGradNorm ?? 0 },
    0,
    0,
    0,
  ]);
  // Without clipping the sum-of-squares binding is unused; `hyper` fills it.
  const sumBuffer = clip ? gradSumSquares!.buffer : hyper.buffer;
  rt().dispatch(
    kernel,
    params,
    [hyper.buffer, sumBuffer, grad.buffer, param.buffer, expAvg.buffer, expAvgSq.buffer],
    grid1d(ceilDiv(param.size, WORKGROUP)),
  );
}

export interface AdamWOptions {
  lr?: number; // default 1e-3, as in PyTorch
  betas?: [number, number]; // default [0.9, 0.999]
  eps?: number; // default 1e-8
  weightDecay?: number; // default 1e-2; a ParamGroup may override it
  maxGradNorm?: number | null; // clip the global gradient norm to this; default none
}

// Parameters sharing a weight decay, e.g. 0 for biases and LayerNorm weights.
export interface ParamGroup {
  params: Tensor[];
  weightDecay?: number;
}

// Optimizer state for checkpoints, in parameter order.
export interface AdamWState {
  steps: Float32Array; // per-parameter step counts (exact up to 2^24)
  expAvg: Float32Array[];
  expAvgSq: Float32Array[];
}

export class AdamW {
  readonly params: Tensor[];
  lr: number;
  private readonly settings: AdamWSettings[];
  private readonly expAvg: Tensor[];
  private readonly expAvgSq: Tensor[];
  private readonly steps: number[];
  private readonly hyper: Tensor;
  private readonly hyperData: Float32Array;
  readonly maxGradNorm: number | null;
  private lastSumSquares: Tensor | null = null;

  constructor(params: Tensor[] | ParamGroup[], options: AdamWOptions = {}) {
    const { lr = 1e-3, betas = [0.9, 0.999], eps = 1e-8, weightDecay = 1e-2, maxGradNorm = null } = options;
    if (maxGradNorm !== null && !(maxGradNorm > 0)) throw new Error(`AdamW: maxGradNorm ${maxGradNorm} must be positive`);
    if (!(betas[0] >= 0 && betas[0] < 1 && betas[1] >= 0 && betas[1] < 1)) throw new Error(`AdamW: betas [${betas}] must lie in [0, 1)`);
    const groups: ParamGroup[] = params.length > 0 && params[0] instanceof Tensor
      ? [{ params: params as Tensor[] }]
      : params as ParamGroup[];

    this.lr = lr;
    this.maxGradNorm = maxGradNorm;
    this.params = [];
    this.settings = [];
    for (const group of groups) {
      for (const p of group.params) {
        if (p.dtype !== "f32") throw new Error(`AdamW: parameter ${p.name || `[${p.shape}]`} is ${p.dtype}, expected f32`);
        if (this.params.includes(p)) throw new Error(`AdamW: parameter ${p.name || `[${p.shape}]`} is listed twice`);
        this.params.push(p);
        this.settings.push({
          beta1: betas[0],
          beta2: betas[1],
          eps,
          weightDecay: group.weightDecay ?? weightDecay,
          maxGradNorm,
        });
      }
    }

    this.expAvg = this.params.map((p) => fillInto(empty(p.shape).keep(), 0));
    this.expAvgSq = this.params.map((p) => fillInto(empty(p.shape).keep(), 0));
    this.steps = this.params.map(() => 0);
    this.hyper = empty([Math.max(1, this.params.length) * HYPER_STRIDE]).keep();
    this.hyperData = new Float32Array(this.hyper.size);
  }

  // Applies one update to every parameter whose `.grad` is set; the others keep their value,
  // moments and step count, as in PyTorch. With clipping, the gradient norm is computed over
  // those gradients on the GPU.
  step(lr: number = this.lr): void {
    if (!Number.isFinite(lr)) throw new Error(`AdamW.step: learning rate ${lr} is not finite`);
    const active: number[] = [];
    this.params.forEach((p, i) => {
      if (!p.grad || p.grad.isDisposed) return;
      if (p.grad.size !== p.size || p.grad.dtype !== "f32") {
        throw new Error(`AdamW.step: gradient ${p.grad.dtype} [${p.grad.shape}] does not match parameter ${p.name || i} [${p.shape}]`);
      }
      active.push(i);
    });
    if (active.length === 0) return;

    for (const i of active) {
      this.steps[i]++;
      const { beta1, beta2 } = this.settings[i];
      const bc1 = 1 - beta1 ** this.steps[i];
      const bc2 = 1 - beta2 ** this.steps[i];
      this.hyperData.set([lr, lr / bc1, Math.sqrt(bc2), 0], HYPER_STRIDE * i);
    }
    upload(this.hyper, this.hyperData);

    let gradSumSquares: Tensor | null = null;
    if (this.maxGradNorm !== null) {
      gradSumSquares = sumSquares(active.map((i) => this.params[i].grad!)).keep();
      this.lastSumSquares?.dispose();
      this.lastSumSquares = gradSumSquares;
    }
    for (const i of active) {
      const p = this.params[i];
      adamwUpdate(p, p.grad!, this.expAvg[i], this.expAvgSq[i], this.hyper, i, gradSumSquares, this.settings[i]);
    }
  }

  // The global gradient norm before clipping at the last step, or null without clipping.
  async gradNorm(): Promise<number | null> {
    if (!this.lastSumSquares) return null;
    return Math.sqrt(await this.lastSumSquares.item());
  }

  // Disposes every parameter's gradient.
  zeroGrad(): void {
    for (const p of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  async state(): Promise<AdamWState> {
    const expAvg: Float32Array[] = [];
    const expAvgSq: Float32Array[] = [];
    for (let i = 0; i < this.params.length; i++) {
      expAvg.push(await this.expAvg[i].toFloat32());
      expAvgSq.push(await this.expAvgSq[i].toFloat32());
    }
    return { steps: Float32Array.from(this.steps), expAvg, expAvgSq };
  }

  loadState(state: AdamWState): void {
    const n = this.params.length;
    if (state.steps.length !== n || state.expAvg.length !== n || state.expAvgSq.length !== n) {
      throw new Error(`AdamW.loadState: state for ${state.steps.length} parameters, optimizer has ${n}`);
    }
    for (let i = 0; i < n; i++) {
      const size = this.params[i].size;
      if (state.expAvg[i].length !== size || state.expAvgSq[i].length !== size) {
        throw new Error(`AdamW.loadState: moments of parameter ${i} hold ${state.expAvg[i].length} and ${state.expAvgSq[i].length} values, expected ${size}`);
      }
      if (!Number.isInteger(state.steps[i]) || state.steps[i] < 0) {
        throw new Error(`AdamW.loadState: step count ${state.steps[i]} of parameter ${i} is not a non-negative integer`);
      }
    }
    for (let i = 0; i < n; i++) {
      upload(this.expAvg[i], state.expAvg[i]);
      upload(this.expAvgSq[i], state.expAvgSq[i]);
      this.steps[i] = state.steps[i];
    }
  }

  // Frees the moments and per-step buffers; the optimizer cannot step afterwards.
  dispose(): void {
    for (const t of [...this.expAvg, ...this.expAvgSq, this.hyper]) t.dispose();
    this.lastSumSquares?.dispose();
    this.lastSumSquares = null;
  }
}
