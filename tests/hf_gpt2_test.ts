// GPT2LMHeadModel checkpoints compute what transformers computes: logits with right padding,
// the ClipCap prefix loss and its gradients, and greedy generation token for token.
// Fixtures: tests/fixtures/hf/gpt2-tiny, written by tools/fixtures/make_fixtures.py.

import { backward, noGrad } from "../engine/autograd.ts";
import * as ops from "../engine/ops.ts";
import { fromArray, type Tensor, tidy } from "../engine/tensor.ts";
import { argmaxRows } from "../kernels/reduce.ts";
import { openCheckpoint } from "../io/safetensors.ts";
import { loadGpt2 } from "../model/hf.ts";
import type { Gpt2Model, LayerCache } from "../model/gpt2.ts";
import { assert, assertClose, gpuReady } from "./testing.ts";

await gpuReady();

const DIR = new URL("./fixtures/hf/gpt2-tiny", import.meta.url).pathname;
const ref = await openCheckpoint(`${DIR}/reference.safetensors`);
const info = JSON.parse(await Deno.readTextFile(`${DIR}/reference.json`));
const model = await loadGpt2(DIR);
const V = model.config.vocab_size;
const D = model.config.n_embd;

Deno.test("gpt2 logits with right padding", async () => {
  const ids = await ref.readInt32("input_ids"); // (3, 9); rows have 9, 7 and 4 real tokens
  const mask = await ref.readInt32("attention_mask");
  const expected = await ref.readTensor("logits");
  const logits = noGrad(() =>
    tidy(() => {
      const x = model.embed(fromArray(ids, [3, 9], "i32"));
      return model.logits(model.forward(x, fromArray(Float32Array.from(mask), [3, 9])).hiddenStates);
    })
  );
  const actual = await logits.toFloat32();
  logits.dispose();
  // Compare real positions only: transformers' padded queries see a different key set.
  const keep = (values: ArrayLike<number>) => Array.from(values).filter((_, i) => mask[Math.floor(i / V)] === 1);
  // f32 through 2 layers with weights ~N(0, 1/fan_in): observed differences are near 1e-6.
  assertClose(keep(actual), keep(expected), 1e-4, 1e-4, "logits at real tokens");
});

Deno.test("gpt2 prefix loss and gradients", async () => {
  const [B, T] = [2, 11];
  const prefixEmbeds = await ref.readTensor("prefix.prefix_embeds"); // (2, 4, 36)
  const tokenIds = await ref.readInt32("prefix.token_ids"); // (2, 7)
  const mask = Float32Array.from(await ref.readInt32("prefix.attention_mask"));
  const labels = await ref.readInt32("prefix.labels"); // (2, 11), -100 on prefix and padding

  // transformers shifts labels inside the loss: logits at t are scored against labels[t + 1].
  const shifted = new Int32Array(B * (T - 1));
  for (let b = 0; b < B; b++) for (let t = 0; t < T - 1; t++) shifted[b * (T - 1) + t] = labels[b * T + t + 1];

  const prefix = fromArray(prefixEmbeds, [B, 4, D]);
  prefix.requiresGrad = true;
  model.setTrainable(true);
  const kept: Record<string, Tensor> = {};
  const loss = tidy(() => {
    const inputsEmbeds = ops.concatSeq([prefix, model.embed(fromArray(tokenIds, [B, 7], "i32"))]);
    const hidden = model.forward(inputsEmbeds, fromArray(mask, [B, T])).hiddenStates;
    const logits = model.logits(ops.sliceSeq(hidden, 0, T - 1));
    const loss = ops.crossEntropy(ops.reshape(logits, [B * (T - 1), V]), fromArray(shifted, [B * (T - 1)], "i32"));
    backward(loss);
    for (const [name, p] of model.namedParameters()) if (p.grad) kept[name] = p.grad.keep();
    kept.prefix = prefix.grad!.keep();
    return loss;
  });

  // Sums over 2 layers in f32; gradients are O(1e-2) with differences near 1e-7.
  assertClose(await loss.toFloat32(), await ref.readTensor("prefix.loss"), 1e-5, 1e-5, "loss");
  const gradEmbeds = await ref.readTensor("prefix.grad.inputs_embeds"); // (2, 11, 36)
  const prefixRows = Array.from(gradEmbeds).filter((_, i) => Math.floor(i / D) % T < 4);
  assertClose(await kept.prefix.toFloat32(), prefixRows, 1e-5, 1e-4, "d loss / d prefix embeds");
  for (const name of ["transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight", "transformer.h.0.ln_1.weight", "transformer.wte.weight"]) {
    // The full wte gradient: lm_head plus the embedding lookup of the caption tokens.
    assertClose(await kept[name].toFloat32(), await ref.readTensor(`prefix.grad.${name}`), 1e-5, 1e-4, name);
  }
  for (const t of [loss, ...Object.values(kept)]) t.dispose();
  for (const p of model.parameters()) p.grad = null;
  model.setTrainable(false);
  prefix.dispose();
});

// Greedy decoding with the KV cache from either inputs_embeds or input_ids, as generate() does.
async function greedy(start: (m: Gpt2Model) => Tensor, maxNew: number, eos: number) {
  const tokens: number[] = [];
  const stepLogits: number[] = [];
  let cache: LayerCache[] | null = null;
  let input: ((m: Gpt2Model) => Tensor) | null = start;
  for (let step = 0; step < maxNew; step++) {
    const { next, logits, newCache } = noGrad(() =>
      tidy(() => {
        const x = input!(model);
        const past = cache ? cache[0].key.shape[1] : 0;
        const T = x.shape[1];
        const out = model.forward(x, fromArray(new Float32Array(past + T).fill(1), [1, past + T]), cache, true);
        const logits = model.logits(ops.sliceSeq(out.hiddenStates, T - 1, 1));
        return { next: argmaxRows(ops.reshape(logits, [1, V])), logits, newCache: out.cache! };
      })
    );
    if (cache) for (const c of cache) [c.key, c.value].forEach((t) => t.dispose());
    cache = newCache;
    const id = (await next.toArray())[0];
    stepLogits.push(...await logits.toFloat32());
    next.dispose();
    logits.dispose();
    tokens.push(id);
    if (id === eos) break;
    input = (m) => m.embed(fromArray(new Int32Array([id]), [1, 1], "i32"));
  }
  for (const c of cache ?? []) [c.key, c.value].forEach((t) => t.dispose());
  return { tokens, stepLogits };
}

for (const run of ["embeds", "prompt"] as const) {
  Deno.test(`gpt2 greedy generation from ${run}`, async () => {
    const expectedTokens = info.generation[run].new_tokens as number[];
    const eos = info.generation.eos_token_id as number;
    const start = run === "embeds"
      ? await ref.readTensor("generate.embeds.inputs_embeds").then((e) => (_: Gpt2Model) => fromArray(e, [1, 4, D]))
      : await ref.readInt32("generate.prompt.input_ids").then((ids) => (m: Gpt2Model) => m.embed(fromArray(ids, [1, ids.length], "i32")));
    const { tokens, stepLogits } = await greedy(start, info.generation.max_new_tokens, eos);
    assert(tokens.join(",") === expectedTokens.join(","), `tokens ${tokens} differ from generate()'s ${expectedTokens}`);
    // Each step's logits with the KV cache against generate()'s scores.
    assertClose(stepLogits, await ref.readTensor(`generate.${run}.step_logits`), 1e-4, 1e-4, "step logits");
  });
}
