// CLIP vision transformer (Hugging Face CLIPVisionModel / CLIPVisionModelWithProjection).
// Parameter names follow the checkpoint keys under "vision_model." and "visual_projection.".

import { Module } from "../engine/nn.ts";
import { LayerNorm, Linear, normal } from "./layers.ts";
import * as ops from "../engine/ops.ts";
import { fromArray, Tensor } from "../engine/tensor.ts";
import type { ClipVisionConfig } from "./config.ts";

class ClipEncoderLayer extends Module {
  private readonly q: Linear;
  private readonly k: Linear;
  private readonly v: Linear;
  private readonly out: Linear;
  private readonly norm1: LayerNorm;
  private readonly norm2: LayerNorm;
  private readonly fc1: Linear;
  private readonly fc2: Linear;

  constructor(private readonly config: ClipVisionConfig, seed: number, prefix: string) {
    super();
    const d = config.hidden_size;
    const attn = this.addModule("self_attn", new Module());
    this.q = attn.addModule("q_proj", new Linear(d, d, seed, `${prefix}.q_proj`));
    this.k = attn.addModule("k_proj", new Linear(d, d, seed, `${prefix}.k_proj`));
    this.v = attn.addModule("v_proj", new Linear(d, d, seed, `${prefix}.v_proj`));
    this.out = attn.addModule("out_proj", new Linear(d, d, seed, `${prefix}.out_proj`));
    this.norm1 = this.addModule("layer_norm1", new LayerNorm(d, config.layer_norm_eps));
    const mlp = this.addModule("mlp", new Module());
    this.fc1 = mlp.addModule("fc1", new Linear(d, config.intermediate_size, seed, `${prefix}.fc1`));
    this.fc2 = mlp.addModule("fc2", new Linear(config.intermediate_size, d, seed, `${prefix}.fc2`));
    this.norm2 = this.addModule("layer_norm2", new LayerNorm(d, config.layer_norm_eps));
  }

  forward(x: Tensor): Tensor { // (B, T, D)
    const h = this.norm1.forward(x);
    const q = this.q.forward(h);
    const k = this.k.forward(h);
    const v = this.v.forward(h);
    const a = ops.attention(q, k, v, { heads: this.config.num_attention_heads, causal: false });
    x = ops.add(x, this.out.forward(a));

    const m = this.fc1.forward(this.norm2.forward(x)); // (B, T, intermediate)
    const act = ops.activation(this.config.hidden_act === "quick_gelu" ? "quick_gelu" : "gelu", m);
    return ops.add(x, this.fc2.forward(act));
  }
}

export interface ClipVisionOutput {
  lastHiddenState: Tensor; // (B, 1 + patches, D)
  poolerOutput: Tensor; // (B, D): post-layernormed class token
  imageEmbeds: Tensor | null; // (B, projection_dim) when the projection is present
}

export class ClipVisionModel extends Module {
  readonly config: ClipVisionConfig;
  private readonly patchWeight: Tensor;
  private readonly classEmbedding: Tensor;
  private readonly positionEmbedding: Tensor;
  private readonly preNorm: LayerNorm;
  private readonly layers: ClipEncoderLayer[] = [];
  private readonly postNorm: LayerNorm;
  private readonly projection: Linear | null;

  constructor(config: ClipVisionConfig, seed: number, withProjection = true) {
    super();
    this.config = config;
    const d = config.hidden_size;
    const p = config.patch_size;
    const grid = Math.floor(config.image_size / p);
    const vision = this.addModule("vision_model", new Module());
    const embeddings = vision.addModule("embeddings", new Module());
    this.classEmbedding = embeddings.addParameter("class_embedding", [d], normal(seed, "class_embedding"));
    const patch = embeddings.addModule("patch_embedding", new Module());
    // Conv2d weight (out, in, kh, kw); with stride = kernel it is a matmul over flattened patches.
    this.patchWeight = patch.addParameter("weight", [d, config.num_channels, p, p], normal(seed, "patch_embedding"));
    const position = embeddings.addModule("position_embedding", new Module());
    this.positionEmbedding = position.addParameter("weight", [grid * grid + 1, d], normal(seed, "position_embedding"));
    this.preNorm = vision.addModule("pre_layrnorm", new LayerNorm(d, config.layer_norm_eps));
    const encoder = vision.addModule("encoder", new Module());
    const layers = encoder.addModule("layers", new Module());
    for (let i = 0; i < config.num_hidden_layers; i++) {
      this.layers.push(layers.addModule(`${i}`, new ClipEncoderLayer(config, seed, `layers.${i}`)));
    }
    this.postNorm = vision.addModule("post_layernorm", new LayerNorm(d, config.layer_norm_eps));
    this.projection = withProjection
      ? this.addModule("visual_projection", new Linear(d, config.projection_dim, seed, "visual_projection", false))
      : null;
  }

  get numPatches(): number {
    const grid = Math.floor(this.config.image_size / this.config.patch_size);
    return grid * grid;
  }

  // pixels: (B, 3, H, W) preprocessed images in CHW layout, concatenated.
  forward(pixels: Float32Array, batch: number): ClipVisionOutput {
    const c = this.config;
    const d = c.hidden_size;
    const patches = fromArray(extractPatches(pixels, batch, c), [batch, this.numPatches, c.num_channels * c.patch_size ** 2]);

    const weight2d = ops.reshape(this.patchWeight, [d, c.num_channels * c.patch_size ** 2]);
    let x = ops.linear(patches, weight2d, null, "out_in"); // (B, patches, D)
    x = ops.prependRow(x, this.classEmbedding); // (B, 1 + patches, D)
    x = ops.add(x, this.positionEmbedding);
    x = this.preNorm.forward(x);

    for (const layer of this.layers) x = layer.forward(x);

    const cls = ops.reshape(ops.sliceSeq(x, 0, 1), [batch, d]);
    const pooled = this.postNorm.forward(cls); // (B, D)
    const imageEmbeds = this.projection ? this.projection.forward(pooled) : null; // (B, proj)
    return { lastHiddenState: x, poolerOutput: pooled, imageEmbeds };
  }
}

// Rearranges CHW images into rows of flattened patches (c, py, px), in row-major grid order,
// which is the element order of a Conv2d weight with stride equal to its kernel.
export function extractPatches(pixels: Float32Array, batch: number, c: ClipVisionConfig): Float32Array {
  const size = c.image_size;
  const p = c.patch_size;
  const grid = Math.floor(size / p);
  const channels = c.num_channels;
  const perImage = channels * size * size;
  if (pixels.length !== batch * perImage) {
    throw new Error(`extractPatches: ${pixels.length} values for ${batch} images of ${channels}x${size}x${size}`);
  }
  const rowWidth = channels * p * p;
  const out = new Float32Array(batch * grid * grid * rowWidth);
  let o = 0;
  for (let b = 0; b < batch; b++) {
    for (let gy = 0; gy < grid; gy++) {
      for (let gx = 0; gx < grid; gx++) {
        for (let ch = 0; ch < channels; ch++) {
          for (let py = 0; py < p; py++) {
            const src = b * perImage + ch * size * size + (gy * p + py) * size + gx * p;
            out.set(pixels.subarray(src, src + p), o);
            o += p;
          }
        }
      }
    }
  }
  return out;
}
