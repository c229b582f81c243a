// Layers shared by the models: nn.Linear, GPT-2's Conv1D and LayerNorm, with PyTorch names.

import { Module, type ParamInit, seedFor } from "../engine/nn.ts";
import * as ops from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";

// Standard deviation of random weight initialisation, as GPT-2 and CLIP's text tower use.
export const INIT_STD = 0.02;

export function normal(seed: number, name: string, std = INIT_STD): ParamInit {
  return { kind: "normal", std, seed: seedFor(seed, name) };
}

// PyTorch nn.Linear: weight stored (out_features, in_features).
export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  constructor(inFeatures: number, outFeatures: number, seed: number, name: string, hasBias = true) {
    super();
    this.weight = this.addParameter("weight", [outFeatures, inFeatures], normal(seed, `${name}.weight`));
    this.bias = hasBias ? this.addParameter("bias", [outFeatures], { kind: "zeros" }) : null;
  }
  forward(x: Tensor): Tensor {
    return ops.linear(x, this.weight, this.bias, "out_in");
  }
}

// GPT-2's Conv1D: a linear layer whose weight is stored (in_features, out_features).
export class Conv1D extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  constructor(inFeatures: number, outFeatures: number, seed: number, name: string, std = INIT_STD) {
    super();
    this.weight = this.addParameter("weight", [inFeatures, outFeatures], normal(seed, `${name}.weight`, std));
    this.bias = this.addParameter("bias", [outFeatures], { kind: "zeros" });
  }
  forward(x: Tensor): Tensor {
    return ops.linear(x, this.weight, this.bias, "in_out");
  }
}

export class LayerNorm extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  constructor(width: number, readonly eps: number) {
    super();
    this.weight = this.addParameter("weight", [width], { kind: "ones" });
    this.bias = this.addParameter("bias", [width], { kind: "zeros" });
  }
  forward(x: Tensor): Tensor {
    return ops.layerNorm(x, this.weight, this.bias, this.eps);
  }
}
