// Qwen2ForCausalLM (tied, 2 KV heads, f32; untied, 1 KV head, bf16) and LlamaForCausalLM
// checkpoints compute what transformers computes: logits with right padding, the prefix loss
// and its gradient through the frozen model, and greedy generation token for token.
// Fixtures: tests/fixtures/hf/{qwen2-tiny-tied,qwen2-tiny-untied-bf16,llama-tiny}.

import { backward, noGrad } from "../engine/autograd.ts";
import * as ops from "../engine/ops.ts";
import { fromArray, type Tensor, tidy } from "../engine/tensor.ts";
import { argmaxRows } from "../kernels/reduce.ts";
import { openCheckpoint } from "../io/safetensors.ts";
import { loadQwen2 } from "../model/hf.ts";
import type { CausalLM, LayerCache } from "../model/lm.ts";
import { assert, assertClose, gpuReady } from "./testing.ts";

await gpuReady();

const fixture = (name: string) => new URL(`./fixtures/hf/${name}`, import.meta.url).pathname;

async function checkLogits(model: CausalLM, dir: string): Promise<void> {
  const ref = await openCheckpoint(`${dir}/reference.safetensors`);
  const ids = await ref.readInt32("input_ids"); // (3, 9), right padded
  const mask = await ref.readInt32("attention_mask");
  const expected = await ref.readTensor("logits");
  ref.close();
  const V = model.vocabSize;
  const logits = noGrad(() =>
    tidy(() => model.logits(model.forward(model.embed(fromArray(ids, [3, 9], "i32")), fromArray(Float32Array.from(mask), [3, 9])).hiddenStates))
  );
  const actual = await logits.toFloat32();
  logits.dispose();
  const keep = (values: ArrayLike<number>) => Array.from(values).filter((_, i) => mask[Math.floor(i / V)] === 1);
  // f32 on both sides through 2 layers: observed differences are a few 1e-6.
  assertClose(keep(actual), keep(expected), 1e-4, 1e-4, "logits at real tokens");
}

for (const name of ["qwen2-tiny-tied", "qwen2-tiny-untied-bf16"]) {
  const dir = fixture(name);

  Deno.test(`${name} logits with right padding`, async () => {
    const model = await loadQwen2(dir);
    await checkLogits(model, dir);
    model.dispose();
  });

  Deno.test(`${name} prefix loss and input gradient`, async () => {
    const model = await loadQwen2(dir);
    const ref = await openCheckpoint(`${dir}/reference.safetensors`);
    const embeds = await ref.readTensor("prefix.inputs_embeds");
    const [, T, D] = ref.info("prefix.inputs_embeds").shape;
    const B = 2;
    const mask = Float32Array.from(await ref.readInt32("prefix.attention_mask"));
    const labels = await ref.readInt32("prefix.labels");
    const shifted = new Int32Array(B * (T - 1));
    for (let b = 0; b < B; b++) for (let t = 0; t < T - 1; t++) shifted[b * (T - 1) + t] = labels[b * T + t + 1];

    const input = fromArray(embeds, [B, T, D]);
    input.requiresGrad = true; // the model stays frozen; the gradient flows through it
    model.setTrainable(false);
    let grad: Tensor | null = null;
    const loss = tidy(() => {
      const hidden = model.forward(input, fromArray(mask, [B, T])).hiddenStates;
      const logits = model.logits(ops.sliceSeq(hidden, 0, T - 1));
      const loss = ops.crossEntropy(ops.reshape(logits, [B * (T - 1), model.vocabSize]), fromArray(shifted, [B * (T - 1)], "i32"));
      backward(loss);
      grad = input.grad!.keep();
      return loss;
    });
    assertClose(await loss.toFloat32(), await ref.readTensor("prefix.loss"), 1e-5, 1e-5, "loss");
    assertClose(await grad!.toFloat32(), await ref.readTensor("prefix.grad.inputs_embeds"), 1e-5, 1e-4, "d loss / d inputs_embeds");
    assert(model.parameters().every((p) => p.grad === null), "frozen weights must not receive gradients");
    for (const t of [loss, grad!, input]) t.dispose();
    ref.close();
    model.dispose();
  });

  for (const run of ["embeds", "prompt"] as const) {
    Deno.test(`${name} greedy generation from ${run}`, async () => {
      const model = await loadQwen2(dir);
      const ref = await openCheckpoint(`${dir}/reference.safetensors`);
      const info = JSON.parse(await Deno.readTextFile(`${dir}/reference.json`)).generation;
      let start: Tensor;
      if (run === "embeds") {
        start = fromArray(await ref.readTensor("generate.embeds.inputs_embeds"), [...ref.info("generate.embeds.inputs_embeds").shape]);
      } else {
        const prompt = await ref.readInt32("generate.prompt.input_ids");
        start = noGrad(() => model.embed(fromArray(prompt, [1, prompt.length], "i32")));
      }
      const tokens: number[] = [];
      const stepLogits: number[] = [];
      let cache: LayerCache[] | null = null;
      let x: Tensor = start;
      for (let step = 0; step < info.max_new_tokens; step++) {
        const past: number = cache ? cache[0].key.shape[1] : 0;
        const T = x.shape[1];
        const r = noGrad(() =>
          tidy(() => {
            const out = model.forward(x, fromArray(new Float32Array(past + T).fill(1), [1, past + T]), cache, true);
            const logits = model.logits(ops.sliceSeq(out.hiddenStates, T - 1, 1));
            return { next: argmaxRows(ops.reshape(logits, [1, model.vocabSize])), logits, cache: out.cache! };
          })
        );
        for (const c of cache ?? []) [c.key, c.value].forEach((t) => t.dispose());
        x.dispose();
        cache = r.cache;
        const id = (await r.next.toArray())[0];
        stepLogits.push(...await r.logits.toFloat32());
        r.next.dispose();
        r.logits.dispose();
        tokens.push(id);
        if (id === info.eos_token_id) break;
        x = noGrad(() => model.embed(fromArray(new Int32Array([id]), [1, 1], "i32")));
      }
      for (const c of cache ?? []) [c.key, c.value].forEach((t) => t.dispose());
      const expected = info[run].new_tokens as number[];
      assert(tokens.join(",") === expected.join(","), `tokens ${tokens} differ from generate()'s ${expected}`);
      assertClose(stepLogits, await ref.readTensor(`generate.${run}.step_logits`), 1e-4, 1e-4, "step logits with KV cache");
      ref.close();
      model.dispose();
    });
  }
}

Deno.test("llama-tiny logits with right padding", async () => {
  const dir = fixture("llama-tiny");
  const model = await loadQwen2(dir);
  await checkLogits(model, dir);
  model.dispose();
});

Deno.test("qwen2 bf16 storage equals f32 on bf16 weights", async () => {
  // The untied fixture stores bf16 weights, so keeping them packed changes no value: only the
  // order of f32 accumulation differs between the two matmul kernels.
  const dir = fixture("qwen2-tiny-untied-bf16");
  const f32 = await loadQwen2(dir);
  const bf16 = await loadQwen2(dir, true);
  const ids = fromArray(new Int32Array([5, 17, 3, 99, 42, 7]), [2, 3], "i32");
  const mask = fromArray(new Float32Array(6).fill(1), [2, 3]);
  const run = (m: CausalLM) => noGrad(() => tidy(() => m.logits(m.forward(m.embed(ids), mask).hiddenStates)));
  const a = run(f32);
  const b = run(bf16);
  assertClose(await b.toFloat32(), await a.toFloat32(), 1e-5, 1e-5, "bf16-stored vs f32 logits");
  const bytes = (m: CausalLM) => m.namedBf16Weights().reduce((s, [, slot]) => s + (slot.weight?.tensor.bytes ?? 0), 0);
  assert(bytes(bf16) > 0, "the bf16 model must hold packed weights");
  assert(bf16.parameters().every((p) => p.shape.length === 1), "only norm weights and biases stay f32 parameters");
  for (const t of [a, b, ids, mask]) t.dispose();
  f32.dispose();
  bf16.dispose();
});
