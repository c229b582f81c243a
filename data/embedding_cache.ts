// CLIP image embeddings computed once per (image set, model, preprocessing) and kept on disk.
//
// Layout of <cacheDir>/<first 24 hex digits of the key>/:
//   chunk-000000.f32, chunk-000001.f32, ...  one file per embedded batch: float32 values in
//                                             the platform's byte order (little-endian on x86
//                                             and ARM), rows in the order of the index entry
//   index.json                                key, dim, the image ids of each chunk, skipped files
// Each chunk is renamed into place before index.json is rewritten, which also goes through a
// temporary file and a rename. A killed run therefore keeps every finished batch, and the next
// run embeds only the rest.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  CLIP_MEAN,
  CLIP_STD,
  clipPreprocess,
  type ClipPreprocessOptions,
} from "./clip_preprocess.ts";
import { decodeImageFile, ImageDecodeError } from "./image.ts";

const INDEX_VERSION = 1;

export interface EmbeddingItem {
  imageId: string;
  imagePath: string;
}

/** Embeds n preprocessed images (n x 3 x crop x crop, CHW) into n x dim values. */
export type EmbedFunction = (pixels: Float32Array, n: number) => Promise<Float32Array>;

export interface EmbeddingRequest {
  items: readonly EmbeddingItem[];
  /** Identifies the model weights and configuration. A new value starts a new cache. */
  modelKey: string;
  dim: number;
  /** Images per embed call. */
  batchSize: number;
  embed: EmbedFunction;
  cacheDir: string;
  preprocess?: ClipPreprocessOptions;
  /** Called after each batch with the number of images handled so far. */
  onProgress?: (done: number, total: number) => void;
  /** Receives one line per skipped image (default: console.warn). */
  onWarning?: (line: string) => void;
}

export interface SkippedImage {
  imageId: string;
  path: string;
  reason: string;
}

export interface EmbeddingSummary {
  computed: number;
  fromCache: number;
  skipped: SkippedImage[];
  /** Folder that contains this image set's chunks and index.json. */
  cachePath: string;
}

export interface EmbeddingResult {
  embeddings: Map<string, Float32Array>;
  summary: EmbeddingSummary;
}

interface CacheIndex {
  version: number;
  key: string;
  modelKey: string;
  dim: number;
  chunks: { file: string; imageIds: string[] }[];
  skipped: SkippedImage[];
}

/**
 * Returns an embedding for every readable image, reading finished batches from the cache and
 * embedding the rest. Unreadable images (corrupt, truncated, empty, not an image, or deleted)
 * are skipped with one warning line each and listed in the summary. They are not retried
 * until the image set changes.
 */
export async function getOrComputeEmbeddings(request: EmbeddingRequest): Promise<EmbeddingResult> {
  validateRequest(request);
  const items = uniqueById(request.items);
  const preprocess = resolvePreprocess(request.preprocess);
  const key = cacheKey(items, request.modelKey, request.dim, preprocess);
  const cachePath = join(request.cacheDir, key.slice(0, 24));
  mkdirSync(cachePath, { recursive: true });
  const warn = request.onWarning ?? ((line: string) => console.warn(line));

  const index = readIndex(cachePath, key, request, warn);
  const embeddings = readChunks(cachePath, index, request.dim, warn);
  const fromCache = embeddings.size;
  const skippedIds = new Set(index.skipped.map((entry) => entry.imageId));
  for (const entry of index.skipped) warn(skipWarning(entry));

  const pending = items.filter((item) =>
    !embeddings.has(item.imageId) && !skippedIds.has(item.imageId)
  );
  let done = items.length - pending.length;
  request.onProgress?.(done, items.length);
  for (let start = 0; start < pending.length;) {
    const batch = await preprocessBatch(pending, start, request.batchSize, preprocess, warn);
    start = batch.next;
    await embedBatch(batch, request, cachePath, index, embeddings);
    done += batch.items.length + batch.skipped.length;
    request.onProgress?.(done, items.length);
  }

  const summary = {
    computed: embeddings.size - fromCache,
    fromCache,
    skipped: index.skipped,
    cachePath,
  };
  return { embeddings, summary };
}

/** The cache as one object, for callers that prefer `embeddingCache.getOrCompute(...)`. */
export const embeddingCache = { getOrCompute: getOrComputeEmbeddings };

function validateRequest(request: EmbeddingRequest): void {
  for (const [name, value] of [["dim", request.dim], ["batchSize", request.batchSize]] as const) {
    if (!Number.isInteger(value) || value < 1) {
      throw new RangeError(`invalid ${name} ${value}: use an integer >= 1`);
    }
  }
}

function uniqueById(items: readonly EmbeddingItem[]): EmbeddingItem[] {
  const seen = new Map<string, EmbeddingItem>();
  for (const item of items) if (!seen.has(item.imageId)) seen.set(item.imageId, item);
  return [...seen.values()];
}

function resolvePreprocess(options: ClipPreprocessOptions = {}): Required<ClipPreprocessOptions> {
  return {
    size: options.size ?? 224,
    cropSize: options.cropSize ?? 224,
    mean: options.mean ?? CLIP_MEAN,
    std: options.std ?? CLIP_STD,
  };
}

/** sha256 over the model, the preprocessing and every image's id, path, size and mtime. */
function cacheKey(
  items: EmbeddingItem[],
  modelKey: string,
  dim: number,
  preprocess: Required<ClipPreprocessOptions>,
): string {
  const images = items
    .map((item) => {
      const stat = existsSync(item.imagePath) ? statSync(item.imagePath) : null;
      return [item.imagePath, item.imageId, stat?.size ?? -1, stat?.mtimeMs ?? -1];
    })
    .sort((a, b) => comparePaths(String(a[0]), String(b[0])));
  const description = JSON.stringify({ version: INDEX_VERSION, modelKey, dim, preprocess, images });
  return createHash("sha256").update(description).digest("hex");
}

// Locale-independent order, unlike localeCompare.
function comparePaths(a: string, b: string): number {
  if (a < b) return -1;
  if (a > b) return 1;
  return 0;
}

function readIndex(
  cachePath: string,
  key: string,
  request: EmbeddingRequest,
  warn: (line: string) => void,
): CacheIndex {
  const fresh: CacheIndex = {
    version: INDEX_VERSION,
    key,
    modelKey: request.modelKey,
    dim: request.dim,
    chunks: [],
    skipped: [],
  };
  const file = join(cachePath, "index.json");
  if (!existsSync(file)) return fresh;
  try {
    const index = JSON.parse(readFileSync(file, "utf8")) as CacheIndex;
    if (index.version === INDEX_VERSION && index.key === key && index.dim === request.dim) {
      return index;
    }
    warn(
      `warning: embedding cache index ${file} belongs to another image set or model; recomputing`,
    );
  } catch (error) {
    warn(`warning: unreadable embedding cache index ${file} (${error}); recomputing`);
  }
  return fresh;
}

/** Loads every intact chunk. A missing or short chunk file is dropped, so its images are embedded again. */
function readChunks(
  cachePath: string,
  index: CacheIndex,
  dim: number,
  warn: (line: string) => void,
): Map<string, Float32Array> {
  const embeddings = new Map<string, Float32Array>();
  index.chunks = index.chunks.filter((chunk) => {
    const file = join(cachePath, chunk.file);
    const expectedBytes = chunk.imageIds.length * dim * 4;
    if (!existsSync(file) || statSync(file).size !== expectedBytes) {
      warn(
        `warning: embedding cache chunk ${file} is missing or not ${expectedBytes} bytes; recomputing its ${chunk.imageIds.length} images`,
      );
      return false;
    }
    const bytes = readFileSync(file);
    const values = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4).slice();
    chunk.imageIds.forEach((id, row) =>
      embeddings.set(id, values.subarray(row * dim, (row + 1) * dim))
    );
    return true;
  });
  return embeddings;
}

interface PreparedBatch {
  items: EmbeddingItem[];
  pixels: Float32Array;
  skipped: SkippedImage[];
  /** Position in the pending list after this batch. */
  next: number;
}

/** Decodes pending images from `start` until batchSize of them are readable or none remain. */
async function preprocessBatch(
  pending: EmbeddingItem[],
  start: number,
  batchSize: number,
  preprocess: Required<ClipPreprocessOptions>,
  warn: (line: string) => void,
): Promise<PreparedBatch> {
  const imageSize = 3 * preprocess.cropSize * preprocess.cropSize;
  const pixels = new Float32Array(batchSize * imageSize);
  const items: EmbeddingItem[] = [];
  const skipped: SkippedImage[] = [];
  let next = start;
  while (items.length < batchSize && next < pending.length) {
    const item = pending[next++];
    try {
      const image = await decodeImageFile(item.imagePath);
      pixels.set(clipPreprocess(image, preprocess), items.length * imageSize);
      items.push(item);
    } catch (error) {
      const reason = unreadableReason(error);
      if (reason === null) throw error;
      const entry = { imageId: item.imageId, path: item.imagePath, reason };
      warn(skipWarning(entry));
      skipped.push(entry);
    }
  }
  return { items, pixels: pixels.subarray(0, items.length * imageSize), skipped, next };
}

function unreadableReason(error: unknown): string | null {
  if (error instanceof ImageDecodeError) return error.reason;
  if (error instanceof Deno.errors.NotFound) return "file not found";
  return null;
}

function skipWarning(entry: SkippedImage): string {
  return `warning: skipping image ${entry.path} (image id ${entry.imageId}): ${entry.reason}`;
}

async function embedBatch(
  batch: PreparedBatch,
  request: EmbeddingRequest,
  cachePath: string,
  index: CacheIndex,
  embeddings: Map<string, Float32Array>,
): Promise<void> {
  const { dim } = request;
  if (batch.items.length > 0) {
    const output = await request.embed(batch.pixels, batch.items.length);
    if (output.length !== batch.items.length * dim) {
      throw new RangeError(
        `embed returned ${output.length} values for ${batch.items.length} images of dim ${dim}; expected ${
          batch.items.length * dim
        }`,
      );
    }
    const values = output.slice(); // owns its buffer, so the file contains exactly these values
    const file = `chunk-${String(index.chunks.length).padStart(6, "0")}.f32`;
    writeAtomically(join(cachePath, file), new Uint8Array(values.buffer));
    index.chunks.push({ file, imageIds: batch.items.map((item) => item.imageId) });
    batch.items.forEach((item, row) =>
      embeddings.set(item.imageId, values.subarray(row * dim, (row + 1) * dim))
    );
  }
  index.skipped.push(...batch.skipped);
  writeAtomically(join(cachePath, "index.json"), JSON.stringify(index) + "\n");
}

function writeAtomically(path: string, data: Uint8Array | string): void {
  const temporary = `${path}.${Deno.pid}.tmp`;
  writeFileSync(temporary, data);
  renameSync(temporary, path);
}
