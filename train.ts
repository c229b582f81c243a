// deno task train -C NAME -S SIZE: trains the mapper (and, for size T, the LM) on image-caption
// pairs, resuming the run runs/NAME when it exists.

import { parseArgs } from "node:util";
import { join, resolve } from "node:path";
import { resolveSize, type SizeConfig } from "./model/config.ts";
import { Captioner } from "./model/captioner.ts";
import type { Module } from "./engine/nn.ts";
import { AdamW, type AdamWState } from "./kernels/adamw.ts";
import { checkpointDir, type HostTensor, loadCheckpoint, saveCheckpoint, type TrainerState } from "./io/checkpoint.ts";
import { checkPretrainedSources, imageEmbeddings, loadClip, loadLm, runCli, runDirFor, startGpu, UsageError } from "./pipeline/run.ts";
import { type Sample, train } from "./pipeline/trainer.ts";
import { rt } from "./engine/runtime.ts";
import { loadDataset, loadDefaultDataset } from "./data/dataset.ts";
import { buildWordLevelTokenizer, HfTokenizer } from "./data/tokenizer.ts";
import { collate } from "./data/collate.ts";
import { shuffle } from "./util/random.ts";

const HELP = `Usage: deno task train -C NAME -S SIZE [options]

Trains a captioner and saves checkpoints under runs/NAME/. If runs/NAME already holds a
checkpoint, training resumes from the last complete one.

Options:
  -C, --checkpoint-name NAME  run name; checkpoints go to runs/NAME (required)
  -S, --size SIZE             model size: S, L, T, Q or TQ, case-insensitive (required)
      --clip DIR              CLIP model directory for sizes S, L and Q (default: the Hugging
                              Face cache, then a download into it)
      --lm DIR                language model directory for sizes S, L and Q (same default)
      --val-data PATH         validation data when --data has no "val" split (a COCO
                              captions_val*.json, say); default: the val split of --data
      --data PATH             dataset: a directory with captions.json, a COCO captions_*.json,
                              a ClipCap list or a Karpathy split file (default: shipped photos)
      --epochs N              number of epochs (default: the size's value)
      --batch-size N          samples per step (default: the size's value)
      --lr X                  peak learning rate (default: the size's value)
      --max-samples N         use only the first N training pairs (quick experiments)
      --log-every N           read the loss back every N steps (default 10)
      --profile               time every GPU kernel with timestamp queries and print the
                              slowest at the end (slows training; needs timestamp-query)
  -h, --help                  show this help
`;

function parsePositive(name: string, value: string | undefined, integer = true): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
    throw new UsageError(`invalid --${name} "${value}": expected a positive ${integer ? "integer" : "number"}`);
  }
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      "checkpoint-name": { type: "string", short: "C" },
      size: { type: "string", short: "S" },
      data: { type: "string" },
      "val-data": { type: "string" },
      clip: { type: "string" },
      lm: { type: "string" },
      epochs: { type: "string" },
      "batch-size": { type: "string" },
      lr: { type: "string" },
      "max-samples": { type: "string" },
      "log-every": { type: "string" },
      profile: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  if (!values["checkpoint-name"]) throw new UsageError("missing -C/--checkpoint-name: name the run, e.g. -C demo");
  if (!values.size) throw new UsageError("missing -S/--size: choose S, L, T, Q or TQ, e.g. -S T");

  const runDir = runDirFor(values["checkpoint-name"]);
  const size = resolveSize(values.size);
  const t = size.train;
  t.epochs = parsePositive("epochs", values.epochs) ?? t.epochs;
  t.batch_size = parsePositive("batch-size", values["batch-size"]) ?? t.batch_size;
  t.lr = parsePositive("lr", values.lr, false) ?? t.lr;
  const maxSamples = parsePositive("max-samples", values["max-samples"]);
  const logEvery = parsePositive("log-every", values["log-every"]) ?? 10;

  const unlock = await lockRun(runDir);
  try {
    await trainRun(values, runDir, size, maxSamples, logEvery);
  } finally {
    unlock();
  }
}

// Takes runs/NAME/.lock so two processes never train the same run. A lock left by a process
// that no longer exists (killed with SIGKILL, say) is taken over. Ctrl-C and SIGTERM release it
// and print how to resume.
async function lockRun(runDir: string): Promise<() => void> {
  await Deno.mkdir(runDir, { recursive: true });
  const path = join(runDir, ".lock");
  try {
    await Deno.writeTextFile(path, String(Deno.pid), { createNew: true });
  } catch (error) {
    if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
    const owner = Number(await Deno.readTextFile(path).catch(() => "0"));
    const alive = owner > 0 && owner !== Deno.pid && await Deno.stat(`/proc/${owner}`).then(() => true, () => false);
    if (alive) throw new UsageError(`run ${runDir} is being trained by process ${owner}; wait for it to finish or choose another -C name`);
    await Deno.writeTextFile(path, String(Deno.pid));
  }
  const release = () => {
    try {
      Deno.removeSync(path);
    } catch {
      // Already gone: nothing to release.
    }
  };
  const interrupted = () => {
    release();
    console.error(`\ninterrupted: ${runDir} keeps its last complete checkpoint; run the same command again to resume`);
    Deno.exit(130);
  };
  for (const signal of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(signal, interrupted);
  return () => {
    for (const signal of ["SIGINT", "SIGTERM"] as const) Deno.removeSignalListener(signal, interrupted);
    release();
  };
}

interface RunOptions {
  data?: string;
  "val-data"?: string;
  clip?: string;
  lm?: string;
  profile?: boolean;
}

async function trainRun(
  values: RunOptions,
  runDir: string,
  size: SizeConfig,
  maxSamples: number | undefined,
  logEvery: number,
): Promise<void> {
  const t = size.train;
  // Resume: the last complete checkpoint decides the size and the tokenizer.
  const resumeDir = await checkpointDir(runDir, "last");
  const resumed = resumeDir ? await loadCheckpoint(resumeDir) : null;
  if (resumed) {
    const savedSize = (resumed.config as { size?: string }).size;
    if (savedSize !== size.name) {
      throw new UsageError(
        `checkpoint ${resumeDir} was trained with size ${savedSize}, not ${size.name}: pass -S ${savedSize} to resume it, or choose another -C name`,
      );
    }
  }

  // A resumed run keeps the data it was started with unless --data names other data.
  const saved = resumed?.config as { data?: string | null; val_data?: string | null } | undefined;
  const dataPath = values.data ?? saved?.data ?? undefined;
  const valDataPath = values["val-data"] ?? saved?.val_data ?? undefined;
  if (resumed && values.data && saved?.data !== undefined && resolve(values.data) !== saved.data) {
    console.warn(`warning: ${runDir} was trained on ${saved.data ?? "the shipped data"}; continuing on ${values.data}`);
  }
  const dataset = dataPath ? await loadDataset(dataPath) : await loadDefaultDataset();
  const valDataset = valDataPath ? await loadDataset(valDataPath) : dataset;
  let trainPairs: Sample[] = dataset.pairs("train").map((p) => ({ imageId: p.imageId, caption: p.caption }));
  let valSource = valDataset.pairs("val");
  if (valDataPath && valSource.length === 0) valSource = valDataset.pairs();
  const valPairs: Sample[] = valSource.map((p) => ({ imageId: p.imageId, caption: p.caption }));
  if (maxSamples) trainPairs = trainPairs.slice(0, maxSamples);
  if (trainPairs.length === 0) {
    throw new UsageError(
      `dataset ${dataset.annotationFile} has no training pairs: COCO and ClipCap files take their split from the file ` +
        `name ("train", "val" or "test" in it), captions.json from each image's "split"; pass a training file with --data`,
    );
  }
  if (valPairs.length === 0) {
    console.warn(
      `warning: ${valDataset.annotationFile} has no validation pairs, so the best checkpoint follows the training loss; ` +
        `pass --val-data FILE (a COCO captions_val*.json, for instance) to validate`,
    );
  }

  if (values.profile) Deno.env.set("CLIP_CAPTIONER_PROFILE", "1");
  const adapter = await startGpu();
  const sources = { clipDir: values.clip, lmDir: values.lm };
  await checkPretrainedSources(size, sources);
  const pretrained = await loadLm(size, sources);
  let tokenizer: HfTokenizer;
  if (resumed?.tokenizer) tokenizer = new HfTokenizer(resumed.tokenizer.json as never, resumed.tokenizer.config);
  else tokenizer = pretrained.tokenizer ?? buildWordLevelTokenizer(trainPairs.map((p) => p.caption), { minCount: 2 });
  applyTokenizer(size, tokenizer);

  console.log(`size ${size.name}: ${size.description}`);
  console.log(`WebGPU adapter: ${adapter}`);
  console.log(`data: ${dataset.annotationFile}: ${trainPairs.length} training pairs, ${valPairs.length} validation pairs; vocabulary ${tokenizer.vocabSize}`);

  const maxTokens = size.mapper.ep_len + t.max_len;
  if (maxTokens > (pretrained.lm?.maxPositions ?? Infinity)) {
    throw new UsageError(`ep_len ${size.mapper.ep_len} + max_len ${t.max_len} = ${maxTokens} positions exceed the LM's ${pretrained.lm!.maxPositions}; use an LM with more positions`);
  }

  const loadedClip = await loadClip(size, sources);
  const valIds = new Set(valPairs.map((p) => p.imageId));
  const items = [
    ...dataset.items.filter((item) => item.split === "train" || (valDataset === dataset && valIds.has(item.imageId))),
    ...(valDataset === dataset ? [] : valDataset.items.filter((item) => valIds.has(item.imageId))),
  ];
  const { embeddings, summary } = await imageEmbeddings(loadedClip, items);
  loadedClip.clip.dispose();
  if (summary.skipped.length > 0) console.log(`skipped ${summary.skipped.length} unreadable images (see warnings above)`);
  const usable = (p: Sample) => embeddings.has(p.imageId);
  trainPairs = trainPairs.filter(usable);
  const val = valPairs.filter(usable);
  if (summary.skipped.length > 0) console.log(`using ${trainPairs.length} training and ${val.length} validation pairs with readable images`);

  const model = new Captioner(size, size.clip.config.hidden_size, pretrained.lm ?? undefined);
  const params = model.trainableParameters();
  const optimizer = new AdamW(params.map(([, p]) => p), {
    lr: t.lr,
    weightDecay: t.weight_decay,
    maxGradNorm: t.max_grad_norm,
  });
  console.log(`trainable parameters: ${params.reduce((s, [, p]) => s + p.size, 0).toLocaleString("en-US")}`);

  let state: TrainerState = { epoch: 0, globalStep: 0, bestValLoss: null, history: [] };
  if (resumed && resumeDir) {
    loadTrainable(model, resumed.model, resumeDir);
    optimizer.loadState(optimizerStateFromHost(resumed.optimizer, params.map(([name]) => name), resumeDir));
    state = resumed.trainerState;
    console.log(`resuming ${runDir} from ${resumeDir} (epoch ${state.epoch}, step ${state.globalStep})`);
  }
  if (state.epoch >= t.epochs) {
    console.log(`run ${runDir} already finished ${state.epoch} epochs; raise --epochs to continue`);
    return;
  }

  const collateSamples = (samples: Sample[]) =>
    collate(samples.map((s) => ({ embedding: embeddings.get(s.imageId)!, caption: s.caption })), tokenizer, { maxLen: t.max_len });

  await train({
    model,
    optimizer,
    train: trainPairs,
    val,
    collate: collateSamples,
    shuffle: (samples, epoch) => shuffle(samples, t.seed * 7919 + epoch),
    epochs: t.epochs,
    batchSize: t.batch_size,
    lr: t.lr,
    warmupSteps: t.warmup_steps,
    seed: t.seed,
    logEvery,
    startEpoch: state.epoch,
    globalStep: state.globalStep,
    onEpochEnd: async (result, globalStep) => {
      console.log(
        `epoch ${result.epoch}/${t.epochs}: train loss ${result.trainLoss.toFixed(4)}, val loss ${result.valLoss.toFixed(4)}, ` +
          `${result.seconds.toFixed(1)} s, ${result.samplesPerSecond.toFixed(1)} samples/s`,
      );
      // Without validation data the training loss decides which checkpoint is best.
      const score = Number.isNaN(result.valLoss) ? result.trainLoss : result.valLoss;
      const improved = state.bestValLoss === null || score < state.bestValLoss;
      state = {
        epoch: result.epoch,
        globalStep,
        bestValLoss: improved ? score : state.bestValLoss,
        history: [...state.history, { epoch: result.epoch, trainLoss: result.trainLoss, valLoss: result.valLoss }],
      };
      const dir = await saveCheckpoint(runDir, {
        config: { ...runConfig(size), data: dataPath ? resolve(dataPath) : null, val_data: valDataPath ? resolve(valDataPath) : null },
        model: await hostTensors(params),
        optimizer: optimizerStateToHost(await optimizer.state(), params.map(([name]) => name)),
        trainerState: state,
        tokenizer: { json: tokenizer.tokenizerJson, config: tokenizer.config },
      }, improved ? ["last", "best"] : ["last"]);
      console.log(`saved ${dir}${improved ? " (best so far)" : ""}`);
    },
  });

  if (values.profile) await printProfile();

  const first = state.history[0];
  const last = state.history.at(-1)!;
  console.log(
    `done: train loss ${first.trainLoss.toFixed(4)} (epoch ${first.epoch}) -> ${last.trainLoss.toFixed(4)} (epoch ${last.epoch}); ` +
      `best val loss ${state.bestValLoss?.toFixed(4)}; checkpoints in ${join(runDir, "checkpoints")}`,
  );
}

// Prints the kernels that took the most GPU time, as measured by timestamp queries.
async function printProfile(): Promise<void> {
  if (!rt().profiling) {
    console.log("profile: the adapter has no timestamp-query feature, so kernels were not timed");
    return;
  }
  const report = await rt().profileReport();
  const total = report.reduce((sum, r) => sum + r.ms, 0);
  console.log(`profile: ${total.toFixed(0)} ms of GPU time in ${report.reduce((n, r) => n + r.calls, 0)} dispatches`);
  for (const r of report.slice(0, 15)) {
    console.log(`  ${r.kernel.padEnd(36)} ${r.ms.toFixed(1).padStart(10)} ms ${(100 * r.ms / total).toFixed(1).padStart(5)}% ${String(r.calls).padStart(8)} calls`);
  }
}

// Sets the LM's vocabulary and EOS id from the tokenizer (size T builds both from the captions).
function applyTokenizer(size: SizeConfig, tokenizer: HfTokenizer): void {
  if (size.lm.pretrained === null) {
    size.lm.config.vocab_size = tokenizer.vocabSize;
    size.lm.config.eos_token_id = tokenizer.eosTokenId;
    size.lm.config.bos_token_id = tokenizer.eosTokenId;
  }
}

export function runConfig(size: SizeConfig): Record<string, unknown> {
  return { model_type: "clip-captioner", size: size.name, clip: size.clip, lm: size.lm, mapper: size.mapper, train: size.train };
}

async function hostTensors(params: [string, { toFloat32(): Promise<Float32Array>; shape: readonly number[] }][]): Promise<HostTensor[]> {
  const out: HostTensor[] = [];
  for (const [name, t] of params) out.push({ name, shape: [...t.shape], data: await t.toFloat32() });
  return out;
}

// AdamW moments as named tensors: exp_avg.NAME, exp_avg_sq.NAME and one "steps" vector.
function optimizerStateToHost(state: AdamWState, names: string[]): HostTensor[] {
  const out: HostTensor[] = [{ name: "steps", shape: [names.length], data: state.steps }];
  names.forEach((name, i) => {
    out.push({ name: `exp_avg.${name}`, shape: [state.expAvg[i].length], data: state.expAvg[i] });
    out.push({ name: `exp_avg_sq.${name}`, shape: [state.expAvgSq[i].length], data: state.expAvgSq[i] });
  });
  return out;
}

function optimizerStateFromHost(tensors: HostTensor[], names: string[], source: string): AdamWState {
  const byName = new Map(tensors.map((t) => [t.name, t.data]));
  const get = (name: string) => {
    const data = byName.get(name);
    if (!data) throw new UsageError(`${source}: optimizer.safetensors has no tensor "${name}"; the checkpoint is incomplete`);
    return data;
  };
  return {
    steps: get("steps"),
    expAvg: names.map((n) => get(`exp_avg.${n}`)),
    expAvgSq: names.map((n) => get(`exp_avg_sq.${n}`)),
  };
}

export function loadTrainable(model: Captioner, tensors: HostTensor[], source: string): void {
  const byName = new Map(tensors.map((t) => [t.name, t]));
  for (const [name] of model.trainableParameters()) {
    if (!byName.has(name)) throw new UsageError(`${source}: model.safetensors has no tensor "${name}"; the checkpoint is incomplete or from another model`);
  }
  for (const t of tensors) {
    const [owner, ...rest] = t.name.split(".");
    const modules: Record<string, Module> = { mapper: model.mapper, lm: model.lm };
    const module = modules[owner];
    if (!module) throw new UsageError(`${source}: unexpected tensor "${t.name}" in model.safetensors`);
    module.loadParameter(rest.join("."), t.data, t.shape, source);
  }
}

if (import.meta.main) await runCli(main);
