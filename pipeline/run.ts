// Run setup shared by train.ts and evaluate.ts: the run directory, GPU start-up, the frozen
// CLIP model and the CLIP-embedding cache.

import { join } from "node:path";
import { noGrad } from "../engine/autograd.ts";
import { NoAdapterError } from "../engine/gpu.ts";
import { getRuntime } from "../engine/runtime.ts";
import { tidy } from "../engine/tensor.ts";
import { ClipVisionModel } from "../model/clip_vision.ts";
import type { SizeConfig } from "../model/config.ts";
import type { CausalLM } from "../model/lm.ts";
import { loadClipVision, loadGpt2, loadQwen2 } from "../model/hf.ts";
import { getOrComputeEmbeddings } from "../data/embedding_cache.ts";
import type { ClipPreprocessOptions } from "../data/clip_preprocess.ts";
import { type HfTokenizer, loadTokenizer } from "../data/tokenizer.ts";
import { resolveModelDir } from "../io/hub.ts";

export const RUNS_DIR = "runs";
export const CACHE_DIR = join(".cache", "embeddings");

// An error whose message is complete for the user: the CLI prints it on one line and exits 1.
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

// Errors whose message already names the value and the fix; the CLIs print them on one line.
const USER_ERRORS = new Set(["UsageError", "UnknownSizeError", "DatasetError", "SafetensorsError", "CaptionDataError", "ImageDecodeError", "NoAdapterError", "ModelConfigError", "ModelFilesError"]);

// Runs a command's main function, printing user errors as one line with exit code 1.
export async function runCli(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (error) {
    // node:util parseArgs raises TypeErrors with ERR_PARSE_ARGS_* codes for bad command lines.
    const code = (error as { code?: unknown }).code;
    const argumentError = typeof code === "string" && code.startsWith("ERR_PARSE_ARGS");
    if (error instanceof Error && (USER_ERRORS.has(error.name) || argumentError)) {
      let message = error.message;
      if (argumentError && message.includes("argument is ambiguous")) {
        message = message.split(".")[0] + ": write negative values as --option=-1";
      }
      console.error(`error: ${message}${argumentError ? "; see --help" : ""}`);
      Deno.exit(1);
    }
    throw error;
  }
}

export function runDirFor(name: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name)) {
    throw new UsageError(`invalid checkpoint name "${name}": use letters, digits, '_', '-' and '.', e.g. -C demo`);
  }
  return join(RUNS_DIR, name);
}

export async function startGpu(): Promise<string> {
  try {
    const runtime = await getRuntime();
    return runtime.gpu.adapterDescription;
  } catch (error) {
    if (error instanceof NoAdapterError) throw new UsageError(error.message);
    throw error;
  }
}

// Sources of pretrained weights: --clip DIR and --lm DIR, else the Hugging Face cache, else a
// download into it.
export interface ModelSources {
  clipDir?: string;
  lmDir?: string;
}

// Finds both pretrained models before anything is loaded, so a user missing both hears about
// both in one error instead of one per run.
export async function checkPretrainedSources(size: SizeConfig, sources: ModelSources): Promise<void> {
  const problems: string[] = [];
  const attempts: [string | null, string[], string | undefined, string][] = [
    [size.clip.pretrained, ["config.json", "model.safetensors"], sources.clipDir, "--clip"],
    [size.lm.pretrained, ["config.json", "model.safetensors", "tokenizer.json"], sources.lmDir, "--lm"],
  ];
  for (const [repo, files, explicitDir, dirOption] of attempts) {
    if (repo === null) continue;
    try {
      await resolveModelDir(repo, { files, explicitDir, dirOption });
    } catch (error) {
      if (!(error instanceof Error) || error.name !== "ModelFilesError") throw error;
      problems.push(error.message);
    }
  }
  if (problems.length > 0) throw new UsageError(problems.join("\nerror: "));
}

export interface LoadedClip {
  clip: ClipVisionModel;
  key: string; // identifies the weights, so cached embeddings follow them
  preprocess: ClipPreprocessOptions;
}

// The frozen CLIP vision tower. Size T has no pretrained weights and starts from its seed.
export async function loadClip(size: SizeConfig, sources: ModelSources): Promise<LoadedClip> {
  if (size.clip.pretrained === null) {
    const clip = new ClipVisionModel(size.clip.config, size.train.seed);
    clip.setTrainable(false);
    clip.eval();
    const key = JSON.stringify({ config: size.clip.config, seed: size.train.seed });
    return { clip, key, preprocess: {} };
  }
  const dir = await resolveModelDir(size.clip.pretrained, {
    files: ["config.json", "model.safetensors"],
    optional: ["preprocessor_config.json"],
    explicitDir: sources.clipDir,
    dirOption: "--clip",
  });
  const clip = await loadClipVision(dir);
  size.clip.config = clip.config;
  const weights = await Deno.stat(join(dir, "model.safetensors")).catch(() => null);
  const key = JSON.stringify({ dir: await Deno.realPath(dir), size: weights?.size, mtime: weights?.mtime?.getTime() });
  return { clip, key, preprocess: await readPreprocessorConfig(dir) };
}

// Image size, crop and normalisation from preprocessor_config.json, where present.
async function readPreprocessorConfig(dir: string): Promise<ClipPreprocessOptions> {
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(await Deno.readTextFile(join(dir, "preprocessor_config.json")));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return {};
    throw new UsageError(`${join(dir, "preprocessor_config.json")} is not valid JSON: ${(error as Error).message}`);
  }
  const size = config.size as number | { shortest_edge?: number } | undefined;
  const crop = config.crop_size as number | { height?: number } | undefined;
  return {
    size: typeof size === "number" ? size : size?.shortest_edge,
    cropSize: typeof crop === "number" ? crop : crop?.height,
    mean: config.image_mean as number[] | undefined,
    std: config.image_std as number[] | undefined,
  };
}

export interface LoadedLm {
  lm: CausalLM | null; // null: the captioner builds a random LM from the size's seed
  tokenizer: HfTokenizer | null; // null: size T builds a word-level tokenizer from captions
}

export async function loadLm(size: SizeConfig, sources: ModelSources): Promise<LoadedLm> {
  if (size.lm.pretrained === null) return { lm: null, tokenizer: null };
  const dir = await resolveModelDir(size.lm.pretrained, {
    files: ["config.json", "model.safetensors", "tokenizer.json"],
    optional: ["tokenizer_config.json", "generation_config.json"],
    explicitDir: sources.lmDir,
    dirOption: "--lm",
  });
  let lm: CausalLM;
  if (size.lm.arch === "gpt2") {
    const gpt2 = await loadGpt2(dir);
    size.lm.config = gpt2.config;
    lm = gpt2;
  } else {
    // A frozen Qwen2 keeps its weights in bf16 on the GPU, as the checkpoint stores them.
    const qwen2 = await loadQwen2(dir, !size.train.train_lm);
    size.lm.config = qwen2.config;
    lm = qwen2;
  }
  lm.setTrainable(size.train.train_lm);
  return { lm, tokenizer: loadTokenizer(dir) };
}

export interface EmbeddingItem {
  imageId: string;
  imagePath: string;
}

// CLIP pooler_output for every image, from the cache where present.
export async function imageEmbeddings(loaded: LoadedClip, items: EmbeddingItem[]) {
  const { clip } = loaded;
  const dim = clip.config.hidden_size;
  return await getOrComputeEmbeddings({
    items,
    modelKey: loaded.key,
    preprocess: loaded.preprocess,
    dim,
    batchSize: 16,
    cacheDir: CACHE_DIR,
    embed: async (pixels: Float32Array, n: number) => {
      const pooled = noGrad(() => tidy(() => clip.forward(pixels, n).poolerOutput));
      const values = await pooled.toFloat32();
      pooled.dispose();
      return values;
    },
  });
}
