import { noGrad } from "../engine/autograd.ts";
import * as ops from "../engine/ops.ts";
import { fromArray, tidy } from "../engine/tensor.ts";
import { resolveSize } from "../model/config.ts";
import { Captioner } from "../model/captioner.ts";
import { generate } from "../model/generate.ts";
import { assert, assertClose, gpuReady } from "./testing.ts";

await gpuReady();

const VOCAB = 41;
const E = 20;

function tinyCaptioner(): Captioner {
  const size = resolveSize("T");
  if (size.lm.arch !== "gpt2") throw new Error("size T uses GPT-2");
  size.lm.config = { ...size.lm.config, vocab_size: VOCAB, n_embd: 24, n_layer: 2, n_head: 3, n_positions: 32 };
  size.mapper = { ...size.mapper, num_layers: 1, n_heads: 2 };
  const model = new Captioner(size, E);
  model.train(false);
  return model;
}

const model = tinyCaptioner();
const emb = new Float32Array(2 * E).map((_, i) => Math.sin(1.7 * i));
const seed = fromArray(new Uint32Array([0]), [1], "u32").keep();

// Last-position logits of the LM over [prefix, tokens], recomputed from scratch without a cache.
async function fullLogits(image: number, tokens: number[]): Promise<Float32Array> {
  const logits = noGrad(() =>
    tidy(() => {
      const prefix = model.mapper.forward(fromArray(emb.subarray(image * E, (image + 1) * E), [1, E]), seed);
      const parts = [prefix];
      if (tokens.length > 0) parts.push(model.lm.embed(fromArray(Int32Array.from(tokens), [1, tokens.length], "i32")));
      const x = ops.concatSeq(parts);
      const T = x.shape[1];
      const { hiddenStates } = model.lm.forward(x, fromArray(new Float32Array(T).fill(1), [1, T]));
      return model.lm.logits(ops.sliceSeq(hiddenStates, T - 1, 1));
    })
  );
  const values = await logits.toFloat32();
  logits.dispose();
  return values;
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

Deno.test("greedy with KV cache equals recomputation", async () => {
  const maxLen = 12;
  // No EOS inside the vocabulary's reach: decoding runs to maxLen.
  const cached = await generate(model, emb, 2, { maxLen, eosTokenId: -1 });
  for (let image = 0; image < 2; image++) {
    const tokens: number[] = [];
    for (let step = 0; step < maxLen; step++) tokens.push(argmax(await fullLogits(image, tokens)));
    assert(cached[image].length === maxLen, `image ${image}: ${cached[image].length} tokens, expected ${maxLen}`);
    assert(cached[image].join(",") === tokens.join(","), `image ${image}: cached ${cached[image]} vs recomputed ${tokens}`);
  }
});

Deno.test("cached step logits equal recomputed logits", async () => {
  const tokens = [3, 17, 5];
  const { logits } = noGrad(() =>
    tidy(() => {
      let state = model.startDecoding(fromArray(emb.subarray(0, E), [1, E]), seed);
      for (const t of tokens) state = model.decodeStep(fromArray(new Int32Array([t]), [1, 1], "i32"), state.cache);
      return { logits: state.logits };
    })
  );
  const expected = await fullLogits(0, tokens);
  // Same kernels in a different order of sequence lengths: f32 rounding only.
  assertClose(await logits.toFloat32(), expected, 1e-5, 1e-4, "cached vs recomputed logits");
  logits.dispose();
});

Deno.test("greedy stops at EOS", async () => {
  const greedy = await generate(model, emb.subarray(0, E), 1, { maxLen: 8, eosTokenId: -1 });
  const eos = greedy[0][2];
  const stopped = await generate(model, emb.subarray(0, E), 1, { maxLen: 8, eosTokenId: eos });
  const firstEos = greedy[0].indexOf(eos);
  assert(stopped[0].join(",") === greedy[0].slice(0, firstEos).join(","), `stopped ${stopped[0]} vs greedy ${greedy[0]} cut at ${eos}`);
});

Deno.test("one beam and top-k 1 sampling equal greedy", async () => {
  const options = { maxLen: 10, eosTokenId: -1 };
  const greedy = await generate(model, emb.subarray(0, E), 1, options);
  const beam = await generate(model, emb.subarray(0, E), 1, { ...options, beams: 1 });
  const sampled = await generate(model, emb.subarray(0, E), 1, { ...options, sample: true, topK: 1, temperature: 0.7, seed: 3 });
  assert(beam[0].join(",") === greedy[0].join(","), `beam ${beam[0]} vs greedy ${greedy[0]}`);
  assert(sampled[0].join(",") === greedy[0].join(","), `top-k 1 sample ${sampled[0]} vs greedy ${greedy[0]}`);
});

Deno.test("beam search finds a better sequence score than greedy", async () => {
  const maxLen = 6;
  const logProb = async (tokens: number[]) => {
    let total = 0;
    for (let i = 0; i < tokens.length; i++) {
      const logits = await fullLogits(1, tokens.slice(0, i));
      const max = Math.max(...logits);
      const lse = max + Math.log(logits.reduce((s, v) => s + Math.exp(v - max), 0));
      total += logits[tokens[i]] - lse;
    }
    return total;
  };
  const greedy = await generate(model, emb.subarray(E, 2 * E), 1, { maxLen, eosTokenId: -1 });
  const beam = await generate(model, emb.subarray(E, 2 * E), 1, { maxLen, eosTokenId: -1, beams: 4 });
  assert(beam[0].length === maxLen, `beam output has ${beam[0].length} tokens, expected ${maxLen}`);
  // Without EOS every hypothesis has maxLen tokens, so beam search maximises the plain sum.
  const [g, b] = [await logProb(greedy[0]), await logProb(beam[0])];
  assert(b >= g - 1e-4, `beam log-probability ${b} is below greedy's ${g}`);
});

Deno.test("sampling is seeded", async () => {
  const options = { maxLen: 10, eosTokenId: -1, sample: true, topK: 20, topP: 0.9, temperature: 1.5 };
  const a = await generate(model, emb, 2, { ...options, seed: 11 });
  const b = await generate(model, emb, 2, { ...options, seed: 11 });
  assert(a.map((t) => t.join(",")).join("|") === b.map((t) => t.join(",")).join("|"), "same seed gave different samples");
  for (const tokens of a) assert(tokens.every((t) => t >= 0 && t < VOCAB), `token out of range in ${tokens}`);
});
