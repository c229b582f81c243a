// Caption decoding with a KV cache: greedy, beam search, and temperature / top-k / top-p
// sampling. Every step runs on the GPU; the host reads back only token ids and, for beam search
// and sampling, the top candidates of each row.

import { noGrad } from "../engine/autograd.ts";
import { fromArray, type Tensor, tidy } from "../engine/tensor.ts";
import { argmaxRows, logSoftmaxRows, topkRows } from "../kernels/reduce.ts";
import { embedding } from "../kernels/embedding.ts";
import { copyBlock } from "../kernels/copy.ts";
import type { Captioner } from "./captioner.ts";
import type { LayerCache } from "./lm.ts";
import { scale } from "../kernels/elementwise.ts";
import { mulberry32 } from "../util/random.ts";

export interface DecodeOptions {
  maxLen: number; // caption tokens, EOS included
  eosTokenId: number;
  beams?: number; // > 1 selects beam search
  temperature?: number; // > 0 with sample = true selects sampling
  topK?: number;
  topP?: number;
  sample?: boolean;
  seed?: number;
  // Token ids never generated, e.g. a word-level tokenizer's unknown-word token.
  suppressTokens?: number[];
}

// Candidates read back per row when sampling; top-p only looks inside this many tokens.
// NOTE: with topK disabled (0), nucleus sampling is cut at the 64 most likely tokens.
const MAX_SAMPLING_CANDIDATES = 64;

// Decodes one caption per image embedding. Returns token ids without the EOS token.
export async function generate(model: Captioner, imgEmb: Float32Array, count: number, options: DecodeOptions): Promise<number[][]> {
  model.train(false);
  if ((options.beams ?? 1) > 1) {
    const width = imgEmb.length / count;
    const out: number[][] = [];
    for (let i = 0; i < count; i++) out.push(await beamSearch(model, imgEmb.subarray(i * width, (i + 1) * width), options));
    return out;
  }
  return await stepwise(model, imgEmb, count, options);
}

// Greedy decoding or sampling for a batch of images, all advanced together.
async function stepwise(model: Captioner, imgEmb: Float32Array, count: number, options: DecodeOptions): Promise<number[][]> {
  const width = imgEmb.length / count;
  const seed = fromArray(new Uint32Array([0]), [1], "u32").keep();
  const random = mulberry32(options.seed ?? 0);
  const tokens: number[][] = Array.from({ length: count }, () => []);
  const done = new Array<boolean>(count).fill(false);

  let state = noGrad(() => tidy(() => model.startDecoding(fromArray(imgEmb, [count, width]), seed)));
  try {
    for (let step = 0; step < options.maxLen; step++) {
      suppressTokens(state.logits, options.suppressTokens);
      const next = await pickTokens(state.logits, count, options, random);
      for (let b = 0; b < count; b++) {
        if (done[b]) continue;
        if (next[b] === options.eosTokenId) done[b] = true;
        else tokens[b].push(next[b]);
      }
      if (done.every(Boolean) || step === options.maxLen - 1) break;
      const previous = state;
      state = noGrad(() => tidy(() => model.decodeStep(fromArray(Int32Array.from(next), [count, 1], "i32"), previous.cache)));
      disposeState(previous);
    }
  } finally {
    disposeState(state);
    seed.dispose();
  }
  return tokens;
}

async function pickTokens(logits: Tensor, rows: number, options: DecodeOptions, random: () => number): Promise<number[]> {
  if (!options.sample) {
    const ids = tidy(() => argmaxRows(logits));
    const values = Array.from(await ids.toArray());
    ids.dispose();
    return values;
  }
  const temperature = options.temperature ?? 1;
  if (temperature <= 0) throw new Error(`temperature ${temperature} must be > 0; use greedy decoding instead of temperature 0`);
  const k = Math.min(options.topK && options.topK > 0 ? options.topK : MAX_SAMPLING_CANDIDATES, logits.shape[1], MAX_SAMPLING_CANDIDATES);
  const { values, indices } = tidy(() => topkRows(scale(logits, 1 / temperature), k));
  const v = await values.toFloat32();
  const ix = await indices.toArray();
  values.dispose();
  indices.dispose();

  const picked: number[] = [];
  for (let r = 0; r < rows; r++) {
    const row = Array.from(v.subarray(r * k, (r + 1) * k));
    const probs = softmax(row);
    // Nucleus: keep the smallest prefix of the sorted candidates whose mass reaches top_p.
    const topP = options.topP ?? 1;
    let keep = probs.length;
    let mass = 0;
    for (let i = 0; i < probs.length; i++) {
      mass += probs[i];
      if (mass >= topP) {
        keep = i + 1;
        break;
      }
    }
    const total = probs.slice(0, keep).reduce((a, b) => a + b, 0);
    let u = random() * total;
    let choice = keep - 1;
    for (let i = 0; i < keep; i++) {
      u -= probs[i];
      if (u <= 0) {
        choice = i;
        break;
      }
    }
    picked.push(ix[r * k + choice]);
  }
  return picked;
}

interface Beam {
  tokens: number[];
  score: number; // sum of token log-probabilities
}

// Beam search for one image. Finished hypotheses are ranked by score / length, as
// Hugging Face's generate() does with length_penalty = 1.
async function beamSearch(model: Captioner, imgEmb: Float32Array, options: DecodeOptions): Promise<number[]> {
  const K = options.beams ?? 1;
  const seed = fromArray(new Uint32Array([0]), [1], "u32").keep();
  const finished: Beam[] = [];
  let beams: Beam[] = [{ tokens: [], score: 0 }];
  let state = noGrad(() => tidy(() => model.startDecoding(fromArray(imgEmb, [1, imgEmb.length]), seed)));

  try {
    for (let step = 0; step < options.maxLen; step++) {
      const rows = beams.length;
      suppressTokens(state.logits, options.suppressTokens);
      const { values, indices } = tidy(() => topkRows(logSoftmaxRows(state.logits), Math.min(K, state.logits.shape[1])));
      const v = await values.toFloat32();
      const ix = await indices.toArray();
      values.dispose();
      indices.dispose();
      const k = v.length / rows;

      const candidates: { parent: number; token: number; score: number }[] = [];
      for (let r = 0; r < rows; r++) {
        for (let j = 0; j < k; j++) candidates.push({ parent: r, token: ix[r * k + j], score: beams[r].score + v[r * k + j] });
      }
      candidates.sort((a, b) => b.score - a.score);

      const next: { parent: number; token: number; score: number }[] = [];
      for (const c of candidates) {
        const tokens = [...beams[c.parent].tokens, c.token];
        if (c.token === options.eosTokenId || step === options.maxLen - 1) {
          finished.push({ tokens: c.token === options.eosTokenId ? tokens.slice(0, -1) : tokens, score: c.score / tokens.length });
        } else {
          next.push(c);
        }
        if (next.length === K) break;
      }
      if (finished.length >= K || next.length === 0) break;
      // Stop once no live beam can beat the best finished hypothesis, even if it ended now.
      const bestFinished = Math.max(...finished.map((b) => b.score), -Infinity);
      if (next.every((c) => c.score / (step + 1) < bestFinished)) break;

      const parents = Int32Array.from(next.map((c) => c.parent));
      const ids = Int32Array.from(next.map((c) => c.token));
      beams = next.map((c) => ({ tokens: [...beams[c.parent].tokens, c.token], score: c.score }));
      const previous = state;
      state = noGrad(() =>
        tidy(() => {
          const cache = reorderCache(previous.cache, parents);
          return model.decodeStep(fromArray(ids, [ids.length, 1], "i32"), cache);
        })
      );
      disposeState(previous);
    }
  } finally {
    disposeState(state);
    seed.dispose();
  }
  finished.sort((a, b) => b.score - a.score);
  return finished[0]?.tokens ?? beams[0].tokens;
}

// Sets the logits of suppressed tokens to -inf in every row of (B, V) logits, in place.
function suppressTokens(logits: Tensor, ids: number[] | undefined): void {
  if (!ids || ids.length === 0) return;
  const [rows, vocab] = logits.shape;
  tidy(() => {
    const negativeInfinity = fromArray(new Float32Array([-Infinity]), [1]);
    for (const id of ids) {
      if (id < 0 || id >= vocab) continue;
      copyBlock(negativeInfinity, logits, { Z: rows, R: 1, C: 1, srcZ: 0, srcR: 0, dstOffset: id, dstZ: vocab, dstR: 0 });
    }
  });
}

// Picks cache rows by parent beam: every (T, D) sequence is one row of the gather.
function reorderCache(cache: LayerCache[], parents: Int32Array): LayerCache[] {
  const ids = fromArray(parents, [parents.length], "i32");
  const gather = (t: Tensor) => {
    const [B, T, D] = t.shape;
    return embedding(ids, t.view([B, T * D])).view([parents.length, T, D]);
  };
  return cache.map((c) => ({ key: gather(c.key), value: gather(c.value) }));
}

function disposeState(state: { cache: LayerCache[]; logits: Tensor }): void {
  state.logits.dispose();
  for (const c of state.cache) {
    c.key.dispose();
    c.value.dispose();
  }
}

function softmax(values: number[]): number[] {
  const max = Math.max(...values);
  const exps = values.map((x) => Math.exp(x - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
}
