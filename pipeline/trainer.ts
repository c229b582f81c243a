// The training loop: epochs of shuffled batches, AdamW with warmup and linear decay, gradient
// clipping, validation loss after every epoch, and the last and best checkpoints.
//
// A step is recorded into one command buffer (after the batch upload) and nothing is read back
// except the running loss sum, every `logEvery` steps.

import { backward, noGrad } from "../engine/autograd.ts";
import { rt } from "../engine/runtime.ts";
import { fromArray, pool, type Tensor, tidy, upload } from "../engine/tensor.ts";
import { addInto, fillInto } from "../kernels/elementwise.ts";
import { AdamW } from "../kernels/adamw.ts";
import { type Captioner, makeTrainBatch } from "../model/captioner.ts";
import { learningRate } from "./schedule.ts";
import { ProgressBar } from "../util/progress.ts";

export interface Sample {
  imageId: string;
  caption: string;
}

export interface Collated {
  imgEmb: Float32Array;
  inputIds: Int32Array;
  attentionMask: ArrayLike<number>;
  batchSize: number;
  seqLen: number;
}

export interface EpochResult {
  epoch: number;
  trainLoss: number;
  valLoss: number;
  seconds: number;
  samplesPerSecond: number;
}

export interface TrainerOptions {
  model: Captioner;
  optimizer: AdamW;
  train: Sample[];
  val: Sample[];
  collate: (samples: Sample[]) => Collated;
  shuffle: (samples: Sample[], epoch: number) => Sample[];
  epochs: number;
  batchSize: number;
  lr: number;
  warmupSteps: number;
  seed: number;
  logEvery: number;
  startEpoch: number;
  globalStep: number;
  onEpochEnd: (result: EpochResult, globalStep: number) => Promise<void>;
  // Invoked after each step with the pool's allocated bytes, for the memory-stability check.
  onStep?: (globalStep: number, allocatedBytes: number) => void;
}

export async function train(o: TrainerOptions): Promise<void> {
  const stepsPerEpoch = Math.ceil(o.train.length / o.batchSize);
  const totalSteps = stepsPerEpoch * o.epochs;
  const lossSum = fillInto(fromArray(new Float32Array(1), [1]), 0).keep();
  const seed = fromArray(new Uint32Array([0]), [1], "u32").keep();
  let globalStep = o.globalStep;

  try {
    for (let epoch = o.startEpoch; epoch < o.epochs; epoch++) {
      const started = performance.now();
      o.model.train(true);
      const order = o.shuffle(o.train, epoch);
      const bar = new ProgressBar({ total: stepsPerEpoch, label: `epoch ${epoch + 1}/${o.epochs}` });
      let pendingSteps = 0;
      let lossTotal = 0;
      let lossSteps = 0;
      let lastLoss = NaN;

      for (let step = 0; step < stepsPerEpoch; step++) {
        const samples = order.slice(step * o.batchSize, (step + 1) * o.batchSize);
        const c = o.collate(samples);
        upload(seed, new Uint32Array([(o.seed * 1_000_003 + globalStep) >>> 0]));
        const lr = learningRate(globalStep, o.lr, o.warmupSteps, totalSteps);

        tidy(() => {
          const batch = makeTrainBatch(c.imgEmb, c.inputIds, c.attentionMask, c.batchSize, c.seqLen, o.model.epLen);
          const loss = o.model.loss(batch, seed);
          backward(loss);
          o.optimizer.step(lr);
          o.optimizer.zeroGrad();
          addInto(lossSum, loss);
        });
        rt().flush();
        globalStep++;
        pendingSteps++;
        o.onStep?.(globalStep, pool.allocatedBytes);

        // The first step of an epoch is read too, so the bar shows a loss from the start.
        if (pendingSteps === o.logEvery || step === 0 || step === stepsPerEpoch - 1) {
          const total = (await lossSum.toFloat32())[0];
          fillInto(lossSum, 0);
          lastLoss = total / pendingSteps;
          lossTotal += total;
          lossSteps += pendingSteps;
          pendingSteps = 0;
        }
        const elapsed = (performance.now() - started) / 1000;
        const seen = Math.min((step + 1) * o.batchSize, o.train.length);
        bar.update(1, { loss: Number.isNaN(lastLoss) ? "-" : lastLoss.toFixed(4), "samples/s": (seen / elapsed).toFixed(1), step: globalStep });
      }
      bar.close();

      const trainLoss = lossTotal / lossSteps;
      const valLoss = await evaluateLoss(o.model, o.val, o.batchSize, o.collate, seed);
      const seconds = (performance.now() - started) / 1000;
      await o.onEpochEnd({ epoch: epoch + 1, trainLoss, valLoss, seconds, samplesPerSecond: o.train.length / seconds }, globalStep);
    }
  } finally {
    lossSum.dispose();
    seed.dispose();
  }
}

// Mean validation loss over batches, weighted by the number of caption tokens in each.
export async function evaluateLoss(
  model: Captioner,
  samples: Sample[],
  batchSize: number,
  collate: (samples: Sample[]) => Collated,
  seed: Tensor,
): Promise<number> {
  if (samples.length === 0) return NaN;
  model.train(false);
  let weighted = 0;
  let tokens = 0;
  for (let i = 0; i < samples.length; i += batchSize) {
    const c = collate(samples.slice(i, i + batchSize));
    const loss = noGrad(() =>
      tidy(() => {
        const batch = makeTrainBatch(c.imgEmb, c.inputIds, c.attentionMask, c.batchSize, c.seqLen, model.epLen);
        return model.loss(batch, seed);
      })
    );
    const value = (await loss.toFloat32())[0];
    loss.dispose();
    let count = 0;
    for (let k = 0; k < c.attentionMask.length; k++) count += c.attentionMask[k] !== 0 ? 1 : 0;
    weighted += value * count;
    tokens += count;
  }
  model.train(true);
  return weighted / tokens;
}
