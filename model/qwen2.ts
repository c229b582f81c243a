// Qwen2 and Llama causal language models (Hugging Face Qwen2ForCausalLM, LlamaForCausalLM).
// Parameter names are the checkpoint keys: "model.layers.0.self_attn.q_proj.weight", ...
// The two architectures differ only in flags. Qwen2 has biases on q/k/v and Llama has none
// unless attention_bias is set. lm_head is tied to embed_tokens when tie_word_embeddings is set.

import { type Bf16Slot, Module } from "../engine/nn.ts";
import * as ops from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { CausalLM, LayerCache, LmOutput } from "./lm.ts";
import type { Qwen2Config } from "./config.ts";
export type { Qwen2Config } from "./config.ts";
import { normal } from "./layers.ts";

// A projection y = x W^T (+ b) whose weight (out, in) is an f32 parameter, or a frozen packed
// bf16 weight when the model is built with `bf16Weights` (biases stay f32).
class Projection extends Module {
  private readonly weight: Tensor | null = null;
  private readonly slot: Bf16Slot | null = null;
  private readonly bias: Tensor | null;

  constructor(inFeatures: number, outFeatures: number, seed: number, name: string, hasBias: boolean, bf16: boolean) {
    super();
    if (bf16) this.slot = this.addBf16Weight("weight", outFeatures, inFeatures);
    else this.weight = this.addParameter("weight", [outFeatures, inFeatures], normal(seed, `${name}.weight`));
    this.bias = hasBias ? this.addParameter("bias", [outFeatures], { kind: "zeros" }) : null;
  }

  forward(x: Tensor): Tensor {
    if (this.slot) return ops.linearBf16(x, loaded(this.slot), this.bias);
    return ops.linear(x, this.weight!, this.bias, "out_in");
  }
}

function loaded(slot: Bf16Slot) {
  if (!slot.weight) throw new Error("a bf16 weight was used before the checkpoint was loaded");
  return slot.weight;
}


class RmsNorm extends Module {
  readonly weight: Tensor;
  constructor(width: number, readonly eps: number) {
    super();
    this.weight = this.addParameter("weight", [width], { kind: "ones" });
  }
  forward(x: Tensor): Tensor {
    return ops.rmsNorm(x, this.weight, this.eps);
  }
}

class DecoderLayer extends Module {
  private readonly inputNorm: RmsNorm;
  private readonly q: Projection;
  private readonly k: Projection;
  private readonly v: Projection;
  private readonly o: Projection;
  private readonly postNorm: RmsNorm;
  private readonly gate: Projection;
  private readonly up: Projection;
  private readonly down: Projection;

  constructor(private readonly config: Qwen2Config, seed: number, prefix: string, bf16: boolean) {
    super();
    const c = config;
    const d = c.hidden_size;
    const qWidth = c.num_attention_heads * c.head_dim;
    const kvWidth = c.num_key_value_heads * c.head_dim;
    this.inputNorm = this.addModule("input_layernorm", new RmsNorm(d, c.rms_norm_eps));
    const attn = this.addModule("self_attn", new Module());
    this.q = attn.addModule("q_proj", new Projection(d, qWidth, seed, `${prefix}.q_proj`, c.attention_bias, bf16));
    this.k = attn.addModule("k_proj", new Projection(d, kvWidth, seed, `${prefix}.k_proj`, c.attention_bias, bf16));
    this.v = attn.addModule("v_proj", new Projection(d, kvWidth, seed, `${prefix}.v_proj`, c.attention_bias, bf16));
    this.o = attn.addModule("o_proj", new Projection(qWidth, d, seed, `${prefix}.o_proj`, false, bf16));
    this.postNorm = this.addModule("post_attention_layernorm", new RmsNorm(d, c.rms_norm_eps));
    const mlp = this.addModule("mlp", new Module());
    this.gate = mlp.addModule("gate_proj", new Projection(d, c.intermediate_size, seed, `${prefix}.gate_proj`, false, bf16));
    this.up = mlp.addModule("up_proj", new Projection(d, c.intermediate_size, seed, `${prefix}.up_proj`, false, bf16));
    this.down = mlp.addModule("down_proj", new Projection(c.intermediate_size, d, seed, `${prefix}.down_proj`, false, bf16));
  }

  forward(x: Tensor, mask: Tensor | null, cache: LayerCache | null, useCache: boolean, offset: number) {
    const c = this.config;
    const h = this.inputNorm.forward(x);
    const rope = { headDim: c.head_dim, positionOffset: offset, theta: c.rope_theta };
    let q = this.q.forward(h); // (B, T, H * Dh)
    let k = this.k.forward(h); // (B, T, Hkv * Dh)
    let v = this.v.forward(h);
    q = ops.rope(q, { ...rope, heads: c.num_attention_heads });
    k = ops.rope(k, { ...rope, heads: c.num_key_value_heads });
    if (cache) {
      k = ops.concatSeq([cache.key, k]); // (B, T_past + T, Hkv * Dh)
      v = ops.concatSeq([cache.value, v]);
    }
    const a = ops.attention(q, k, v, {
      heads: c.num_attention_heads,
      kvHeads: c.num_key_value_heads,
      causal: true,
      keyPaddingMask: mask,
    });
    x = ops.add(x, this.o.forward(a));

    const m = this.postNorm.forward(x);
    x = ops.add(x, this.down.forward(ops.swiglu(this.gate.forward(m), this.up.forward(m))));
    return { out: x, cache: useCache ? { key: k, value: v } : null };
  }
}

export class Qwen2Model extends Module implements CausalLM {
  readonly config: Qwen2Config;
  private readonly embedTokens: Tensor | null = null;
  private readonly embedSlot: Bf16Slot | null = null;
  private readonly layers: DecoderLayer[] = [];
  private readonly norm: RmsNorm;
  private readonly lmHead: Projection | null; // null when tied to embed_tokens

  // `bf16Weights` keeps every projection and embedding weight as frozen packed bf16, for a
  // pretrained model that is not trained; norms and biases stay f32.
  constructor(config: Qwen2Config, seed: number, readonly bf16Weights = false) {
    super();
    this.config = config;
    const d = config.hidden_size;
    const model = this.addModule("model", new Module());
    const embed = model.addModule("embed_tokens", new Module());
    if (bf16Weights) this.embedSlot = embed.addBf16Weight("weight", config.vocab_size, d);
    else this.embedTokens = embed.addParameter("weight", [config.vocab_size, d], normal(seed, "embed_tokens"));
    const layers = model.addModule("layers", new Module());
    for (let i = 0; i < config.num_hidden_layers; i++) {
      this.layers.push(layers.addModule(`${i}`, new DecoderLayer(config, seed, `layers.${i}`, bf16Weights)));
    }
    this.norm = model.addModule("norm", new RmsNorm(d, config.rms_norm_eps));
    this.lmHead = config.tie_word_embeddings
      ? null
      : this.addModule("lm_head", new Projection(d, config.vocab_size, seed, "lm_head", false, bf16Weights));
  }

  get width(): number {
    return this.config.hidden_size;
  }

  get vocabSize(): number {
    return this.config.vocab_size;
  }

  get maxPositions(): number {
    return this.config.max_position_embeddings;
  }

  embed(inputIds: Tensor): Tensor {
    if (this.embedSlot) return ops.embeddingBf16(inputIds, loaded(this.embedSlot));
    return ops.embedding(inputIds, this.embedTokens!);
  }

  forward(inputsEmbeds: Tensor, attentionMask: Tensor | null, cache: LayerCache[] | null = null, useCache = cache !== null): LmOutput {
    const past = cache ? cache[0].key.shape[1] : 0;
    let x = inputsEmbeds;
    const next: LayerCache[] = [];
    this.layers.forEach((layer, i) => {
      const r = layer.forward(x, attentionMask, cache ? cache[i] : null, useCache, past);
      x = r.out;
      if (r.cache) next.push(r.cache);
    });
    return { hiddenStates: this.norm.forward(x), cache: useCache ? next : null };
  }

  logits(hidden: Tensor): Tensor {
    if (this.lmHead) return this.lmHead.forward(hidden);
    if (this.embedSlot) return ops.linearBf16(hidden, loaded(this.embedSlot), null);
    return ops.linear(hidden, this.embedTokens!, null, "out_in");
  }
}
