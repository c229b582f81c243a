// The interface the captioner needs from a causal language model. GPT-2 and Qwen2/Llama
// implement it.

import type { Module } from "../engine/nn.ts";
import type { Tensor } from "../engine/tensor.ts";

// Keys and values of one layer for every position seen so far: (B, T_past, width of k or v).
export interface LayerCache {
  key: Tensor;
  value: Tensor;
}

export interface LmOutput {
  hiddenStates: Tensor; // (B, T, D) after the final norm
  cache: LayerCache[] | null; // set when forward was asked to keep a cache
}

export interface CausalLM extends Module {
  readonly width: number; // hidden size D, the width of inputs_embeds
  readonly vocabSize: number;
  readonly maxPositions: number;
  // Token embeddings for input ids (B, T) i32.
  embed(inputIds: Tensor): Tensor;
  // Runs the blocks over inputs_embeds (B, T, D); positions start after the cached ones.
  // attentionMask: (B, T_past + T), 1 = real token. `useCache` returns keys and values.
  forward(inputsEmbeds: Tensor, attentionMask: Tensor | null, cache?: LayerCache[] | null, useCache?: boolean): LmOutput;
  // lm_head: (..., D) -> (..., V).
  logits(hidden: Tensor): Tensor;
}
