// The trainable mapper: a PyTorch-style nn.TransformerEncoder (post-norm layers with ReLU,
// like nn.TransformerEncoderLayer's defaults) over the CLIP embedding, then a linear layer that
// produces ep_len prefix embeddings of the LM's width.
//
// The CLIP embedding enters as a sequence of one token per image, so self-attention reduces to
// the value and output projections. That keeps every image independent of its batch.
// NOTE: dropout on the attention probabilities is not applied; dropout after attention, inside
// the feed-forward block and after it is.

import { Module } from "../engine/nn.ts";
import * as ops from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { MapperConfig } from "./config.ts";
import { LayerNorm, Linear, normal } from "./layers.ts";

// PyTorch's nn.LayerNorm default epsilon.
const LAYER_NORM_EPS = 1e-5;

class EncoderLayer extends Module {
  private readonly inProjWeight: Tensor;
  private readonly inProjBias: Tensor;
  private readonly outProj: Linear;
  private readonly linear1: Linear;
  private readonly linear2: Linear;
  private readonly norm1: LayerNorm;
  private readonly norm2: LayerNorm;

  constructor(private readonly width: number, private readonly config: MapperConfig, seed: number, private readonly index: number) {
    super();
    const prefix = `layers.${index}`;
    const attn = this.addModule("self_attn", new Module());
    this.inProjWeight = attn.addParameter("in_proj_weight", [3 * width, width], normal(seed, `${prefix}.in_proj_weight`));
    this.inProjBias = attn.addParameter("in_proj_bias", [3 * width], { kind: "zeros" });
    this.outProj = attn.addModule("out_proj", new Linear(width, width, seed, `${prefix}.out_proj`));
    const ff = width * config.forward_expansion;
    this.linear1 = this.addModule("linear1", new Linear(width, ff, seed, `${prefix}.linear1`));
    this.linear2 = this.addModule("linear2", new Linear(ff, width, seed, `${prefix}.linear2`));
    this.norm1 = this.addModule("norm1", new LayerNorm(width, LAYER_NORM_EPS));
    this.norm2 = this.addModule("norm2", new LayerNorm(width, LAYER_NORM_EPS));
  }

  forward(x: Tensor, seed: Tensor): Tensor { // (B, S, E)
    const p = this.config.dropout;
    const salt = this.index * 4;
    const qkv = ops.linear(x, this.inProjWeight, this.inProjBias, "out_in"); // (B, S, 3E)
    const a = this.outProj.forward(ops.attentionPacked(qkv, { heads: this.config.n_heads, causal: false }));
    x = this.norm1.forward(ops.add(x, ops.dropout(a, p, seed, salt, this.training)));

    let f = ops.activation("relu", this.linear1.forward(x)); // (B, S, ff)
    f = this.linear2.forward(ops.dropout(f, p, seed, salt + 1, this.training));
    return this.norm2.forward(ops.add(x, ops.dropout(f, p, seed, salt + 2, this.training)));
  }
}

export class Mapper extends Module {
  readonly config: MapperConfig;
  private readonly layers: EncoderLayer[] = [];
  private readonly mapper: Linear;

  constructor(readonly clipWidth: number, readonly lmWidth: number, config: MapperConfig, seed: number) {
    super();
    this.config = config;
    if (clipWidth % config.n_heads !== 0) {
      throw new Error(`mapper: CLIP width ${clipWidth} is not divisible by n_heads = ${config.n_heads}`);
    }
    const encoder = this.addModule("transformer_encoder", new Module());
    const layers = encoder.addModule("layers", new Module());
    for (let i = 0; i < config.num_layers; i++) {
      this.layers.push(layers.addModule(`${i}`, new EncoderLayer(clipWidth, config, seed, i)));
    }
    this.mapper = this.addModule("mapper", new Linear(clipWidth, config.ep_len * lmWidth, seed, "mapper"));
  }

  // imgEmb (B, E) -> prefix (B, ep_len, D). `seed` is a one-element u32 tensor written each step.
  forward(imgEmb: Tensor, seed: Tensor): Tensor {
    const [B, E] = imgEmb.shape;
    let x = ops.reshape(imgEmb, [B, 1, E]);
    for (const layer of this.layers) x = layer.forward(x, seed);
    const prefix = this.mapper.forward(x); // (B, 1, ep_len * D)
    return ops.reshape(prefix, [B, this.config.ep_len, this.lmWidth]);
  }
}
