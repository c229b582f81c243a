// Buffers are reused, not leaked, across training steps: the pool's allocated bytes after step
// 100 equal those after step 2.

import { backward } from "../engine/autograd.ts";
import { rt } from "../engine/runtime.ts";
import { fromArray, pool, tidy } from "../engine/tensor.ts";
import { AdamW } from "../kernels/adamw.ts";
import { resolveSize } from "../model/config.ts";
import { Captioner, makeTrainBatch } from "../model/captioner.ts";
import { assert, gpuReady } from "./testing.ts";

await gpuReady();

Deno.test("training step memory stable over 100 steps", async () => {
  const size = resolveSize("T");
  if (size.lm.arch !== "gpt2") throw new Error("size T uses GPT-2");
  size.lm.config = { ...size.lm.config, vocab_size: 53, n_embd: 32, n_layer: 1, n_head: 2, n_positions: 16 };
  size.mapper = { ...size.mapper, num_layers: 1, n_heads: 2 };
  const E = 24;
  const model = new Captioner(size, E);
  const optimizer = new AdamW(model.trainableParameters().map(([, p]) => p), { lr: 1e-3, maxGradNorm: 1 });
  const seed = fromArray(new Uint32Array([7]), [1], "u32").keep();

  const B = 3, L = 5;
  const emb = new Float32Array(B * E).map((_, i) => Math.cos(i));
  const ids = new Int32Array(B * L).map((_, i) => (i * 13) % 53);
  const mask = new Float32Array(B * L).map((_, i) => (i % L < 3 + (i / L | 0) % 2 ? 1 : 0));

  const allocated: number[] = [];
  const live: number[] = [];
  for (let step = 1; step <= 100; step++) {
    tidy(() => {
      const batch = makeTrainBatch(emb, ids, mask, B, L, size.mapper.ep_len);
      backward(model.loss(batch, seed));
      optimizer.step(1e-3);
      optimizer.zeroGrad();
    });
    if (step % 10 === 0) await rt().sync();
    allocated.push(pool.allocatedBytes);
    live.push(pool.liveBytes);
  }
  console.log(`  pool bytes after step 2: ${allocated[1]}, after step 100: ${allocated[99]}; live ${live[1]} -> ${live[99]}`);
  assert(allocated[99] === allocated[1], `allocated bytes grew from ${allocated[1]} (step 2) to ${allocated[99]} (step 100)`);
  assert(live[99] === live[1], `live bytes grew from ${live[1]} (step 2) to ${live[99]} (step 100)`);

  optimizer.dispose();
  model.mapper.dispose();
  model.lm.dispose();
  seed.dispose();
});
