// deno task evaluate -C NAME -S SIZE: captions a split with a trained run, prints each caption
// beside its references, scores them with the COCO caption metrics and saves visualisations.

import { parseArgs } from "node:util";
import { join } from "node:path";
import { resolveSize, type SizeConfig } from "./model/config.ts";
import { Captioner } from "./model/captioner.ts";
import { generate } from "./model/generate.ts";
import { checkpointDir, loadCheckpoint } from "./io/checkpoint.ts";
import { atomicWriteJson } from "./io/atomic.ts";
import { checkPretrainedSources, imageEmbeddings, loadClip, loadLm, runCli, runDirFor, startGpu, UsageError } from "./pipeline/run.ts";
import { writeVisualisations } from "./pipeline/visualize.ts";
import { loadDataset, loadDefaultDataset } from "./data/dataset.ts";
import { HfTokenizer } from "./data/tokenizer.ts";
import { decodeImageFile } from "./data/image.ts";
import { formatMetricsTable, scoreCaptions } from "./metrics/mod.ts";
import { loadTrainable } from "./train.ts";
import { ProgressBar } from "./util/progress.ts";

const HELP = `Usage: deno task evaluate -C NAME -S SIZE [options]

Captions a data split with the run runs/NAME, prints every generated caption beside its
references, reports BLEU-1..4, ROUGE-L and CIDEr-D, and writes results and visualisations to
runs/NAME/eval-SPLIT-MODE/ (MODE: greedy, beamN or sample).

Options:
  -C, --checkpoint-name NAME  run to evaluate (required)
  -S, --size SIZE             model size the run was trained with: S, L, T, Q or TQ (required)
      --checkpoint WHICH      best or last (default best)
      --clip DIR              CLIP model directory for sizes S, L and Q (default: the Hugging
                              Face cache, then a download into it)
      --lm DIR                language model directory for sizes S, L and Q (same default)
      --data PATH             dataset, as for train (default: the run's training data)
      --split NAME            train, val or test (default test)
      --beams N               beam search with N beams (default 1: greedy)
      --sample                sample instead of greedy decoding
      --temperature X         sampling temperature, with --sample (default 1.0)
      --top-k N               with --sample: draw from the N most likely tokens (default 50,
                              at most 64; 0 means the 64 most likely)
      --top-p X               with --sample: nucleus mass in (0, 1] (default 1.0)
      --seed N                sampling seed (default 0)
      --max-len N             maximum caption tokens including EOS (default: the run's max_len)
      --visualisations N      number of PNG visualisations (default 5)
      --batch-size N          images decoded together (default 32)
  -h, --help                  show this help
`;

function parseNumber(name: string, value: string | undefined, check: (n: number) => boolean, expected: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || !check(n)) throw new UsageError(`invalid --${name} "${value}": expected ${expected}`);
  return n;
}

const positiveInt = (n: number) => Number.isInteger(n) && n > 0;

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      "checkpoint-name": { type: "string", short: "C" },
      size: { type: "string", short: "S" },
      checkpoint: { type: "string", default: "best" },
      data: { type: "string" },
      clip: { type: "string" },
      lm: { type: "string" },
      split: { type: "string", default: "test" },
      beams: { type: "string" },
      sample: { type: "boolean" },
      temperature: { type: "string" },
      "top-k": { type: "string" },
      "top-p": { type: "string" },
      seed: { type: "string" },
      "max-len": { type: "string" },
      visualisations: { type: "string" },
      "batch-size": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  if (!values["checkpoint-name"]) throw new UsageError("missing -C/--checkpoint-name: name the run to evaluate, e.g. -C demo");
  if (!values.size) throw new UsageError("missing -S/--size: pass the size the run was trained with, e.g. -S T");
  if (values.checkpoint !== "best" && values.checkpoint !== "last") {
    throw new UsageError(`invalid --checkpoint "${values.checkpoint}": use best or last`);
  }
  if (!["train", "val", "test"].includes(values.split!)) throw new UsageError(`invalid --split "${values.split}": use train, val or test`);

  const beams = parseNumber("beams", values.beams, positiveInt, "a positive integer") ?? 1;
  const temperature = parseNumber("temperature", values.temperature, (n) => n > 0, "a number > 0") ?? 1;
  const topK = parseNumber("top-k", values["top-k"], (n) => Number.isInteger(n) && n >= 0 && n <= 64, "an integer in 0..64") ?? 50;
  const topP = parseNumber("top-p", values["top-p"], (n) => n > 0 && n <= 1, "a number in (0, 1]") ?? 1;
  const seed = parseNumber("seed", values.seed, (n) => Number.isInteger(n) && n >= 0, "a non-negative integer") ?? 0;
  const visualisationCount = parseNumber("visualisations", values.visualisations, (n) => Number.isInteger(n) && n >= 0, "a non-negative integer") ?? 5;
  const batchSize = parseNumber("batch-size", values["batch-size"], positiveInt, "a positive integer") ?? 32;
  if (values.sample && beams > 1) throw new UsageError("--sample and --beams > 1 exclude each other: choose one decoding mode");
  const samplingOptions = ["temperature", "top-k", "top-p", "seed"].filter((name) => values[name as "seed"] !== undefined);
  if (!values.sample && samplingOptions.length > 0) {
    console.warn(`warning: --${samplingOptions.join(", --")} only apply with --sample; decoding is ${beams > 1 ? "beam search" : "greedy"}`);
  }

  const runDir = runDirFor(values["checkpoint-name"]);
  const dir = await checkpointDir(runDir, values.checkpoint as "best" | "last");
  if (!dir) throw new UsageError(`no ${values.checkpoint} checkpoint in ${runDir}: train it first with deno task train -C ${values["checkpoint-name"]} -S ${values.size}`);
  const saved = await loadCheckpoint(dir);
  const savedConfig = saved.config as { size?: string; lm?: SizeConfig["lm"]; train?: { max_len: number } };
  const size = resolveSize(values.size);
  if (savedConfig.size !== size.name) {
    throw new UsageError(`checkpoint ${dir} was trained with size ${savedConfig.size}, not ${size.name}: pass -S ${savedConfig.size}`);
  }
  if (!saved.tokenizer) throw new UsageError(`checkpoint ${dir} has no tokenizer.json; it is incomplete, train again`);
  const tokenizer = new HfTokenizer(saved.tokenizer.json as never, saved.tokenizer.config);
  if (savedConfig.lm) size.lm = savedConfig.lm;
  const maxLen = parseNumber("max-len", values["max-len"], positiveInt, "a positive integer") ?? savedConfig.train?.max_len ?? size.train.max_len;

  // Default to the data the run was trained on.
  const savedData = (saved.config as { data?: string | null }).data ?? undefined;
  const dataPath = values.data ?? savedData;
  const dataset = dataPath ? await loadDataset(dataPath) : await loadDefaultDataset();
  const items = dataset.items.filter((item) => item.split === values.split);
  if (items.length === 0) {
    const splits = [...new Set(dataset.items.map((item) => item.split))].join(", ");
    throw new UsageError(`dataset ${dataset.annotationFile} has no images in split "${values.split}"; it has ${splits}: pass --split with one of them`);
  }

  const adapter = await startGpu();
  console.log(`WebGPU adapter: ${adapter}`);
  const sources = { clipDir: values.clip, lmDir: values.lm };
  await checkPretrainedSources(size, sources);
  const loadedClip = await loadClip(size, sources);
  const { embeddings, summary } = await imageEmbeddings(loadedClip, items);
  loadedClip.clip.dispose();
  const pretrained = await loadLm(size, sources);
  const usable = items.filter((item) => embeddings.has(item.imageId));
  if (summary.skipped.length > 0) console.log(`skipped ${summary.skipped.length} unreadable images`);

  const model = new Captioner(size, size.clip.config.hidden_size, pretrained.lm ?? undefined);
  loadTrainable(model, saved.model, dir);
  model.train(false);

  let mode = "greedy";
  if (values.sample) mode = `sampling (temperature ${temperature}, top-k ${topK}, top-p ${topP})`;
  else if (beams > 1) mode = `beam search (${beams} beams)`;
  console.log(`captioning ${usable.length} ${values.split} images from ${dir}, ${mode}`);
  const captions = new Map<string, string>();
  const bar = new ProgressBar({ total: usable.length, label: "captioning" });
  const width = size.clip.config.hidden_size;
  for (let i = 0; i < usable.length; i += batchSize) {
    const chunk = usable.slice(i, i + batchSize);
    const emb = new Float32Array(chunk.length * width);
    chunk.forEach((item, k) => emb.set(embeddings.get(item.imageId)!, k * width));
    const ids = await generate(model, emb, chunk.length, {
      maxLen,
      eosTokenId: tokenizer.eosTokenId,
      beams,
      sample: values.sample ?? false,
      temperature,
      topK,
      topP,
      seed: seed + i,
      suppressTokens: unknownTokenId(tokenizer),
    });
    chunk.forEach((item, k) => captions.set(item.imageId, tokenizer.decode(ids[k])));
    bar.update(chunk.length);
  }
  bar.close();

  for (const item of usable) {
    console.log(`\n${item.imageId}: ${captions.get(item.imageId)}`);
    for (const ref of item.captions) console.log(`    ref: ${ref}`);
  }

  const references = new Map(usable.map((item) => [item.imageId, item.captions]));
  const scores = scoreCaptions(captions, references);
  // One folder per split and decoding mode, so greedy, beam and sampled results sit side by side.
  let modeName = "greedy";
  if (values.sample) modeName = "sample";
  else if (beams > 1) modeName = `beam${beams}`;
  const outDir = join(runDir, `eval-${values.split}-${modeName}`);
  await Deno.mkdir(outDir, { recursive: true });
  for (const entry of Deno.readDirSync(outDir)) {
    if (entry.name.startsWith("caption_") && entry.name.endsWith(".png")) await Deno.remove(join(outDir, entry.name));
  }
  console.log("\n" + formatMetricsTable(scores.corpus, `${values.split} split, ${usable.length} images, ${mode}`));

  const results = usable.map((item) => ({ image_id: cocoId(item.imageId), caption: captions.get(item.imageId)! }));
  await atomicWriteJson(join(outDir, "results.json"), results);
  // The references in the COCO captions format, so `deno task score results.json
  // references.json` (or the official COCO tooling) can re-score the results.
  let annotationId = 0;
  await atomicWriteJson(join(outDir, "references.json"), {
    images: usable.map((item) => ({ id: cocoId(item.imageId), file_name: item.imagePath.split("/").pop() })),
    annotations: usable.flatMap((item) => item.captions.map((caption) => ({ id: ++annotationId, image_id: cocoId(item.imageId), caption }))),
  });
  await atomicWriteJson(join(outDir, "scores.json"), {
    split: values.split,
    decoding: mode,
    checkpoint: dir,
    images: usable.length,
    corpus: scores.corpus,
    per_image: Object.fromEntries(scores.perImage),
  });

  const visuals = [];
  for (const item of usable.slice(0, visualisationCount)) {
    visuals.push({ imageId: item.imageId, image: await decodeImageFile(item.imagePath), caption: captions.get(item.imageId)!, references: item.captions });
  }
  const files = await writeVisualisations(outDir, visuals, `clip-captioner: ${values["checkpoint-name"]}, ${values.split} split, ${mode}`);
  const count = files.length - 1;
  console.log(`wrote results.json, references.json, scores.json and ${count} visualisation${count === 1 ? "" : "s"} with index.html to ${outDir}`);
}

// A word-level tokenizer's unknown-word token, which decoding should never produce.
function unknownTokenId(tokenizer: HfTokenizer): number[] {
  const model = (tokenizer.tokenizerJson as { model: { unk_token?: string | null; vocab: unknown } }).model;
  if (!model.unk_token || Array.isArray(model.vocab)) return [];
  const id = (model.vocab as Record<string, number>)[model.unk_token];
  return id === undefined ? [] : [id];
}

// COCO result files use numeric image ids where the dataset has them.
function cocoId(imageId: string): number | string {
  return /^\d+$/.test(imageId) ? Number(imageId) : imageId;
}

if (import.meta.main) await runCli(main);
