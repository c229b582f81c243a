// The captioning model: mapper + causal LM, trained ClipCap-style. The mapper turns a CLIP
// embedding into ep_len prefix embeddings. The LM reads [prefix, caption tokens] and is trained
// with next-token cross-entropy on the caption tokens only.

import * as ops from "../engine/ops.ts";
import { fromArray, type Tensor } from "../engine/tensor.ts";
import type { SizeConfig } from "./config.ts";
import { Gpt2Model } from "./gpt2.ts";
import { Qwen2Model } from "./qwen2.ts";
import type { CausalLM, LayerCache } from "./lm.ts";
import { Mapper } from "./mapper.ts";

// Label value that the loss skips, as in PyTorch's cross_entropy.
export const IGNORE_INDEX = -100;

export interface TrainBatch {
  imgEmb: Tensor; // (B, E)
  inputIds: Tensor; // (B, L) i32, caption tokens ending with EOS, then padding
  fullMask: Tensor; // (B, ep_len + L) f32: 1 for prefix and real tokens, 0 for padding
  labels: Tensor; // (B * L) i32: the token each caption position must predict, or IGNORE_INDEX
}

export class Captioner {
  readonly mapper: Mapper;
  readonly lm: CausalLM;

  // `lm` is a loaded pretrained model; without it the LM starts from the size's seed.
  constructor(readonly size: SizeConfig, clipWidth: number, lm?: CausalLM) {
    const seed = size.train.seed;
    this.lm = lm ?? createLm(size, seed + 1);
    this.mapper = new Mapper(clipWidth, this.lm.width, size.mapper, seed + 2);
    this.lm.setTrainable(size.train.train_lm);
  }

  get epLen(): number {
    return this.size.mapper.ep_len;
  }

  trainableParameters(): [string, Tensor][] {
    return [
      ...this.mapper.namedParameters("mapper."),
      ...(this.size.train.train_lm ? this.lm.namedParameters("lm.") : []),
    ];
  }

  train(mode = true): void {
    this.mapper.train(mode);
    this.lm.train(mode);
  }

  // Mean next-token cross-entropy over the real caption tokens of the batch.
  loss(batch: TrainBatch, seed: Tensor): Tensor {
    const [B, L] = batch.inputIds.shape;
    const ep = this.epLen;
    const prefix = this.mapper.forward(batch.imgEmb, seed); // (B, ep, D)
    const tokens = this.lm.embed(batch.inputIds); // (B, L, D)
    const x = ops.concatSeq([prefix, tokens]); // (B, ep + L, D)
    const { hiddenStates } = this.lm.forward(x, batch.fullMask);

    // Position ep - 1 + i predicts caption token i, so only those L rows need logits.
    const h = ops.sliceSeq(hiddenStates, ep - 1, L); // (B, L, D)
    const logits = this.lm.logits(h); // (B, L, V)
    return ops.crossEntropy(ops.reshape(logits, [B * L, this.lm.vocabSize]), batch.labels);
  }

  // Runs the prefix through the LM and returns the cache plus the last position's logits (B, V).
  startDecoding(imgEmb: Tensor, seed: Tensor): { cache: LayerCache[]; logits: Tensor } {
    const B = imgEmb.shape[0];
    const prefix = this.mapper.forward(imgEmb, seed);
    const mask = fromArray(new Float32Array(B * this.epLen).fill(1), [B, this.epLen]);
    const { hiddenStates, cache } = this.lm.forward(prefix, mask, null, true);
    const last = ops.sliceSeq(hiddenStates, this.epLen - 1, 1); // (B, 1, D)
    return { cache: cache!, logits: ops.reshape(this.lm.logits(last), [B, this.lm.vocabSize]) };
  }

  // Feeds one new token per sequence (ids (B, 1) i32) and returns the updated cache and logits.
  decodeStep(ids: Tensor, cache: LayerCache[]): { cache: LayerCache[]; logits: Tensor } {
    const B = ids.shape[0];
    const past = cache[0].key.shape[1];
    const mask = fromArray(new Float32Array(B * (past + 1)).fill(1), [B, past + 1]);
    const { hiddenStates, cache: next } = this.lm.forward(this.lm.embed(ids), mask, cache);
    return { cache: next!, logits: ops.reshape(this.lm.logits(hiddenStates), [B, this.lm.vocabSize]) };
  }
}

// A randomly initialised LM of the size's architecture.
export function createLm(size: SizeConfig, seed: number): CausalLM {
  const spec = size.lm;
  return spec.arch === "gpt2" ? new Gpt2Model(spec.config, seed) : new Qwen2Model(spec.config, seed);
}

// Builds the GPU tensors of a training batch from collated host arrays.
export function makeTrainBatch(
  imgEmb: Float32Array,
  inputIds: Int32Array,
  attentionMask: ArrayLike<number>,
  batchSize: number,
  seqLen: number,
  epLen: number,
): TrainBatch {
  const embWidth = imgEmb.length / batchSize;
  const fullMask = new Float32Array(batchSize * (epLen + seqLen));
  const labels = new Int32Array(batchSize * seqLen);
  for (let b = 0; b < batchSize; b++) {
    for (let i = 0; i < epLen; i++) fullMask[b * (epLen + seqLen) + i] = 1;
    for (let i = 0; i < seqLen; i++) {
      const real = attentionMask[b * seqLen + i] !== 0;
      fullMask[b * (epLen + seqLen) + epLen + i] = real ? 1 : 0;
      labels[b * seqLen + i] = real ? inputIds[b * seqLen + i] : IGNORE_INDEX;
    }
  }
  return {
    imgEmb: fromArray(imgEmb, [batchSize, embWidth]),
    inputIds: fromArray(inputIds, [batchSize, seqLen], "i32"),
    fullMask: fromArray(fullMask, [batchSize, epLen + seqLen]),
    labels: fromArray(labels, [batchSize * seqLen], "i32"),
  };
}
