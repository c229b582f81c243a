// Run setup shared by train.ts and evaluate.ts: the run directory, GPU start-up, the frozen
// CLIP model and the CLIP-embedding cache.

import { join } from "node:path";
import { noGrad } from "../engine/autograd.ts";
import { NoAdapterError } from "../engine/gpu.ts";
import { getRuntime } from "../engine/runtime.ts";
import { tidy } from "../engine/tensor.ts";
import { ClipVisionModel } from "../model/clip_vision.ts";
import type { SizeConfig } from "../model/config.ts";
import { getOrComputeEmbeddings } from "../data/embedding_cache.ts";

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
const USER_ERRORS = new Set(["UsageError", "UnknownSizeError", "DatasetError", "SafetensorsError", "CaptionDataError", "ImageDecodeError", "NoAdapterError"]);

// Runs a command's main function, printing user errors as one line with exit code 1.
export async function runCli(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (error) {
    if (error instanceof Error && (USER_ERRORS.has(error.name) || error.name === "TypeError" && error.message.startsWith("Unknown option"))) {
      const hint = error.name === "TypeError" ? "; see --help" : "";
      console.error(`error: ${error.message}${hint}`);
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

// The frozen CLIP vision tower. Size T has no pretrained weights and starts from its seed.
export function buildClip(size: SizeConfig): ClipVisionModel {
  if (size.clip.pretrained !== null) {
    throw new UsageError(
      `size ${size.name} needs pretrained CLIP weights (${size.clip.pretrained}), which this version cannot load yet; ` +
        `use -S T`,
    );
  }
  const clip = new ClipVisionModel(size.clip.config, size.train.seed);
  clip.setTrainable(false);
  clip.eval();
  return clip;
}

// An identifier of the CLIP weights, so cached embeddings are recomputed when they change.
export function clipKey(size: SizeConfig): string {
  const c = size.clip;
  return JSON.stringify({ pretrained: c.pretrained, config: c.config, seed: c.pretrained ? null : size.train.seed });
}

export interface EmbeddingItem {
  imageId: string;
  imagePath: string;
}

// CLIP pooler_output for every image, from the cache where present.
export async function imageEmbeddings(size: SizeConfig, clip: ClipVisionModel, items: EmbeddingItem[]) {
  const dim = size.clip.config.hidden_size;
  return await getOrComputeEmbeddings({
    items,
    modelKey: clipKey(size),
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
