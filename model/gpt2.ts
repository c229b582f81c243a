// GPT-2 language model (Hugging Face GPT2LMHeadModel). Parameter names are the checkpoint keys
// under "transformer."; lm_head is tied to the token embedding, so it has no tensor of its own.
// NOTE: dropout inside the LM is not applied (it runs as in eval mode); only the mapper uses
// dropout during training.

import { Module } from "../engine/nn.ts";
import * as ops from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { Gpt2Config } from "./config.ts";
import { Conv1D, INIT_STD, LayerNorm, normal } from "./layers.ts";

import type { CausalLM, LayerCache, LmOutput } from "./lm.ts";
export type { LayerCache } from "./lm.ts";

class Gpt2Block extends Module {
  private readonly ln1: LayerNorm;
  private readonly cAttn: Conv1D;
  private readonly attnProj: Conv1D;
  private readonly ln2: LayerNorm;
  private readonly cFc: Conv1D;
  private readonly mlpProj: Conv1D;

  constructor(private readonly config: Gpt2Config, seed: number, prefix: string) {
    super();
    const d = config.n_embd;
    const inner = config.n_inner ?? 4 * d;
    // GPT-2 scales the residual output projections by 1/sqrt(2 * n_layer) at initialisation.
    const projStd = INIT_STD / Math.sqrt(2 * config.n_layer);
    this.ln1 = this.addModule("ln_1", new LayerNorm(d, config.layer_norm_epsilon));
    const attn = this.addModule("attn", new Module());
    this.cAttn = attn.addModule("c_attn", new Conv1D(d, 3 * d, seed, `${prefix}.attn.c_attn`));
    this.attnProj = attn.addModule("c_proj", new Conv1D(d, d, seed, `${prefix}.attn.c_proj`, projStd));
    this.ln2 = this.addModule("ln_2", new LayerNorm(d, config.layer_norm_epsilon));
    const mlp = this.addModule("mlp", new Module());
    this.cFc = mlp.addModule("c_fc", new Conv1D(d, inner, seed, `${prefix}.mlp.c_fc`));
    this.mlpProj = mlp.addModule("c_proj", new Conv1D(inner, d, seed, `${prefix}.mlp.c_proj`, projStd));
  }

  // With `useCache`, keys and values of earlier positions come from `cache`, and the returned
  // cache covers every position so far. Without it, attention reads the fused projection.
  forward(x: Tensor, attentionMask: Tensor | null, cache: LayerCache | null, useCache: boolean): { out: Tensor; cache: LayerCache | null } {
    const d = this.config.n_embd;
    const h = this.ln1.forward(x);
    const qkv = this.cAttn.forward(h); // (B, T, 3D)
    const options = { heads: this.config.n_head, causal: true, keyPaddingMask: attentionMask };
    let a: Tensor;
    let next: LayerCache | null = null;
    if (useCache) {
      let [q, k, v] = ops.splitLast(qkv, [d, d, d]); // 3 x (B, T, D)
      if (cache) {
        k = ops.concatSeq([cache.key, k]); // (B, T_past + T, D)
        v = ops.concatSeq([cache.value, v]);
      }
      a = ops.attention(q, k, v, options);
      next = { key: k, value: v };
    } else {
      a = ops.attentionPacked(qkv, options);
    }
    x = ops.add(x, this.attnProj.forward(a));

    const m = this.cFc.forward(this.ln2.forward(x)); // (B, T, inner)
    x = ops.add(x, this.mlpProj.forward(ops.activation("gelu", m)));
    return { out: x, cache: next };
  }
}

export class Gpt2Model extends Module implements CausalLM {
  readonly config: Gpt2Config;
  readonly wte: Tensor;
  readonly wpe: Tensor;
  private readonly blocks: Gpt2Block[] = [];
  private readonly lnF: LayerNorm;

  constructor(config: Gpt2Config, seed: number) {
    super();
    this.config = config;
    const d = config.n_embd;
    const transformer = this.addModule("transformer", new Module());
    this.wte = transformer.addModule("wte", new Module()).addParameter("weight", [config.vocab_size, d], normal(seed, "wte"));
    this.wpe = transformer.addModule("wpe", new Module()).addParameter("weight", [config.n_positions, d], normal(seed, "wpe", 0.01));
    const h = transformer.addModule("h", new Module());
    for (let i = 0; i < config.n_layer; i++) {
      this.blocks.push(h.addModule(`${i}`, new Gpt2Block(config, seed, `h.${i}`)));
    }
    this.lnF = transformer.addModule("ln_f", new LayerNorm(d, config.layer_norm_epsilon));
  }

  get width(): number {
    return this.config.n_embd;
  }

  get vocabSize(): number {
    return this.config.vocab_size;
  }

  get maxPositions(): number {
    return this.config.n_positions;
  }

  // Token embeddings for input ids (B, T) i32.
  embed(inputIds: Tensor): Tensor {
    return ops.embedding(inputIds, this.wte); // (B, T, D)
  }

  // Runs the blocks over inputs_embeds (B, T, D). Positions start after the cached ones, and
  // position embeddings are added here once. attentionMask: (B, T_past + T), 1 = real token.
  // `useCache` returns keys and values for incremental decoding (implied when a cache is given).
  forward(inputsEmbeds: Tensor, attentionMask: Tensor | null, cache: LayerCache[] | null = null, useCache = cache !== null): LmOutput {
    const [, T] = inputsEmbeds.shape;
    const past = cache ? cache[0].key.shape[1] : 0;
    if (past + T > this.config.n_positions) {
      throw new Error(`sequence of ${past + T} positions exceeds n_positions = ${this.config.n_positions}`);
    }
    const wpe3 = ops.reshape(this.wpe, [1, this.config.n_positions, this.config.n_embd]);
    const positions = ops.reshape(ops.sliceSeq(wpe3, past, T), [T, this.config.n_embd]);
    let x = ops.add(inputsEmbeds, positions);

    const newCache: LayerCache[] = [];
    this.blocks.forEach((block, i) => {
      const r = block.forward(x, attentionMask, cache ? cache[i] : null, useCache);
      x = r.out;
      if (r.cache) newCache.push(r.cache);
    });
    return { hiddenStates: this.lnF.forward(x), cache: useCache ? newCache : null };
  }

  // lm_head tied to wte: logits = hidden @ wte^T, (..., D) -> (..., V).
  logits(hidden: Tensor): Tensor {
    return ops.linear(hidden, this.wte, null, "out_in");
  }
}
