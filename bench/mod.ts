// deno task bench: runs every benchmark and prints one line each. Speed and memory targets are
// checked here, never in tests; see BENCHMARKS.md for recorded results.

import { benchMetrics } from "./metrics_bench.ts";
import { benchSafetensorsMemory } from "./safetensors_memory.ts";
import { benchTrainStep } from "./train_step.ts";

const metrics = await benchMetrics();
console.log(`metrics: ${metrics.images} images x ${metrics.referencesPerImage} references: ${metrics.seconds.toFixed(2)} s (target 10 s, ${(metrics.seconds / 10).toFixed(2)}x)`);

const memory = await benchSafetensorsMemory();
console.log(
  `safetensors load: ${(memory.weightsBytes / 1e6).toFixed(0)} MB of weights, peak RSS ${(memory.peakRssBytes / 1e6).toFixed(0)} MB ` +
    `(${memory.ratio.toFixed(3)}x the weights, target < 1.5x), ${memory.seconds.toFixed(2)} s`,
);

// Size S runs at batch 8 with random real-shaped weights: at its batch of 64 one step takes
// minutes on a CPU adapter.
for (const [size, batch, steps, warmup] of [["T", undefined, 5, 2], ["S", 8, 2, 1]] as const) {
  const step = await benchTrainStep(size, batch, steps, warmup);
  console.log(
    `${step.name}: ${step.msPerStep.toFixed(1)} ms/step, ${step.samplesPerSecond.toFixed(1)} samples/s, ` +
      `${step.dispatchesPerStep} dispatches in ${step.submitsPerStep} submits per step, pool ${(step.poolBytes / 2 ** 20).toFixed(0)} MiB`,
  );
}
