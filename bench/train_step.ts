// Times training steps of a captioner size on the current WebGPU adapter, with random inputs:
// milliseconds per step, samples per second, dispatches and submits per step, and pool memory.

import { backward } from "../engine/autograd.ts";
import { getRuntime, rt } from "../engine/runtime.ts";
import { fromArray, pool, tidy } from "../engine/tensor.ts";
import { AdamW } from "../kernels/adamw.ts";
import { resolveSize } from "../model/config.ts";
import { Captioner, makeTrainBatch } from "../model/captioner.ts";

export interface TrainStepResult {
  name: string;
  msPerStep: number;
  samplesPerSecond: number;
  dispatchesPerStep: number;
  submitsPerStep: number;
  poolBytes: number;
}

// `batchSize` overrides the size's batch, so the large sizes can be timed on a CPU adapter.
export async function benchTrainStep(sizeName = "T", batchSize?: number, steps = 5, warmup = 2, vocab = 600): Promise<TrainStepResult> {
  await getRuntime();
  const size = resolveSize(sizeName);
  if (size.lm.config.vocab_size === 0) size.lm.config.vocab_size = vocab;
  const B = batchSize ?? size.train.batch_size;
  const L = 16;
  const E = size.clip.config.hidden_size;
  const model = new Captioner(size, E);
  const optimizer = new AdamW(model.trainableParameters().map(([, p]) => p), { lr: 1e-4, maxGradNorm: 1 });
  const seed = fromArray(new Uint32Array([1]), [1], "u32").keep();
  const emb = new Float32Array(B * E).map((_, i) => Math.sin(i));
  const ids = new Int32Array(B * L).map((_, i) => (i * 7919) % size.lm.config.vocab_size);
  const mask = new Float32Array(B * L).map((_, i) => (i % L < 12 ? 1 : 0));

  const step = () =>
    tidy(() => {
      const batch = makeTrainBatch(emb, ids, mask, B, L, size.mapper.ep_len);
      backward(model.loss(batch, seed));
      optimizer.step(1e-4);
      optimizer.zeroGrad();
    });

  for (let i = 0; i < warmup; i++) step();
  await rt().sync();
  const dispatches = rt().dispatchCount;
  const submits = rt().submitCount;
  const start = performance.now();
  for (let i = 0; i < steps; i++) step();
  await rt().sync();
  const ms = (performance.now() - start) / steps;
  const result = {
    name: `train step, size ${size.name}, batch ${B} x ${L} tokens`,
    msPerStep: ms,
    samplesPerSecond: (B * 1000) / ms,
    dispatchesPerStep: (rt().dispatchCount - dispatches) / steps,
    submitsPerStep: (rt().submitCount - submits) / steps,
    poolBytes: pool.allocatedBytes,
  };
  optimizer.dispose();
  model.mapper.dispose();
  model.lm.dispose();
  seed.dispose();
  return result;
}

if (import.meta.main) {
  const r = await benchTrainStep(Deno.args[0] ?? "T", Deno.args[1] ? Number(Deno.args[1]) : undefined);
  console.log(
    `${r.name}: ${r.msPerStep.toFixed(1)} ms/step, ${r.samplesPerSecond.toFixed(1)} samples/s, ` +
      `${r.dispatchesPerStep} dispatches and ${r.submitsPerStep} submits per step, pool ${(r.poolBytes / 2 ** 20).toFixed(1)} MiB`,
  );
}
