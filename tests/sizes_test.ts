// Sizes S, L and Q at their real shapes (random weights generated here, nothing downloaded):
// one training step of the mapper through the frozen LM, with the peak GPU buffer memory.
// GPT-2's token embedding (154 MB for S, 206 MB for L) and Qwen2.5's (272 MB in bf16) exceed
// the CPU adapter's 128 MiB binding limit, so this also exercises the split bindings.

import { backward } from "../engine/autograd.ts";
import { rt } from "../engine/runtime.ts";
import { fromArray, pool, tidy } from "../engine/tensor.ts";
import { AdamW } from "../kernels/adamw.ts";
import { resolveSize } from "../model/config.ts";
import { Captioner, makeTrainBatch } from "../model/captioner.ts";
import { Qwen2Model, type Qwen2Config } from "../model/qwen2.ts";
import { withoutInit } from "../engine/nn.ts";
import { randomNormal } from "../engine/init.ts";
import { uploadBf16 } from "../kernels/matmul_bf16.ts";
import { assert, gpuReady } from "./testing.ts";

function randomBf16Qwen2(config: Qwen2Config): Qwen2Model {
  const model = withoutInit(() => new Qwen2Model(config, 0, true));
  model.namedBf16Weights().forEach(([, slot], i) => {
    slot.weight = uploadBf16(randomNormal(slot.rows * slot.cols, 1000 + i, 0.02), slot.rows, slot.cols);
  });
  // Norm weights at 1 and biases at 0, as a fresh model would have them.
  for (const [name, p] of model.namedParameters()) {
    const value = name.endsWith("norm.weight") ? 1 : 0;
    model.loadParameter(name, new Float32Array(p.size).fill(value), p.shape);
  }
  return model;
}

await gpuReady();

for (const name of ["S", "L", "Q"]) {
  Deno.test(`size ${name} training step at real shapes`, async () => {
    const size = resolveSize(name);
    const E = size.clip.config.hidden_size;
    const before = pool.allocatedBytes;
    // Q keeps its frozen Qwen2.5 weights as packed bf16; random values stand in for them.
    const lm = size.lm.arch === "qwen2" ? randomBf16Qwen2(size.lm.config) : undefined;
    const model = new Captioner(size, E, lm);
    const mapperParams = model.mapper.parameters();
    const optimizer = new AdamW(mapperParams, { lr: 1e-4, maxGradNorm: 1 });
    const seed = fromArray(new Uint32Array([5]), [1], "u32").keep();

    // A small batch keeps the step within seconds on a CPU adapter; the shapes of every weight
    // are the real ones.
    const B = 2, L = 8;
    const emb = new Float32Array(B * E).map((_, i) => Math.sin(i));
    const ids = new Int32Array(B * L).map((_, i) => (i * 7919) % size.lm.config.vocab_size);
    const mask = new Float32Array(B * L).map((_, i) => (i % L < 6 ? 1 : 0));
    const started = performance.now();
    const loss = tidy(() => {
      const batch = makeTrainBatch(emb, ids, mask, B, L, size.mapper.ep_len);
      const loss = model.loss(batch, seed);
      backward(loss);
      optimizer.step(1e-4);
      return loss;
    });
    const value = await loss.item();
    const seconds = (performance.now() - started) / 1000;
    console.log(
      `  size ${name}: loss ${value.toFixed(4)}, step ${seconds.toFixed(1)} s, ` +
        `peak GPU buffers ${(pool.peakLiveBytes / 2 ** 20).toFixed(0)} MiB, allocated ${((pool.allocatedBytes - before) / 2 ** 20).toFixed(0)} MiB`,
    );
    // Random weights give a loss near ln(vocab) (10.8 for GPT-2, 11.9 for Qwen2.5); a finite
    // value shows the step ran.
    assert(Number.isFinite(value), `loss is ${value}`);
    assert(mapperParams.every((p) => p.grad !== null), "every mapper parameter must receive a gradient");
    assert(model.lm.parameters().every((p) => p.grad === null), "the frozen LM must not receive gradients");

    loss.dispose();
    optimizer.zeroGrad();
    optimizer.dispose();
    model.mapper.dispose();
    model.lm.dispose();
    seed.dispose();
    await rt().sync();
    pool.trim();
  });
}
