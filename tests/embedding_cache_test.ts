import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, truncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  embeddingCache,
  type EmbeddingItem,
  type EmbeddingRequest,
} from "../data/embedding_cache.ts";
import { clipPreprocess, decodeImageFile } from "../data/image.ts";

const FIXTURES = fileURLToPath(new URL("./fixtures/images/", import.meta.url));
const GOOD = [
  "rgb.png",
  "gray.png",
  "palette.png",
  "rgba.png",
  "rgb16.png",
  "interlaced.png",
  "photo.jpg",
];
const PLANE = 224 * 224;

function withTempDir(run: (dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), "embedding-cache-test-"));
    try {
      await run(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

function copyImages(dir: string, names: string[]): EmbeddingItem[] {
  mkdirSync(join(dir, "images"), { recursive: true });
  return names.map((name, index) => {
    const imagePath = join(dir, "images", name);
    copyFileSync(join(FIXTURES, name), imagePath);
    return { imageId: `img${index}`, imagePath };
  });
}

/** Returns a stand-in for CLIP that embeds each image as its three channel means and records each call's batch size. */
function meanEmbedder(failOnCall?: number) {
  const calls: number[] = [];
  const embed = (pixels: Float32Array, n: number): Promise<Float32Array> => {
    calls.push(n);
    if (calls.length === failOnCall) return Promise.reject(new Error("simulated crash"));
    return Promise.resolve(channelMeans(pixels, n));
  };
  return { embed, calls };
}

function channelMeans(pixels: Float32Array, n: number): Float32Array {
  const out = new Float32Array(n * 3);
  for (let image = 0; image < n; image++) {
    for (let channel = 0; channel < 3; channel++) {
      const start = (image * 3 + channel) * PLANE;
      let sum = 0;
      for (let i = start; i < start + PLANE; i++) sum += pixels[i];
      out[image * 3 + channel] = sum / PLANE;
    }
  }
  return out;
}

function request(
  items: EmbeddingItem[],
  cacheDir: string,
  embed: EmbeddingRequest["embed"],
  warnings: string[],
): EmbeddingRequest {
  return {
    items,
    modelKey: "fake-clip",
    dim: 3,
    batchSize: 3,
    embed,
    cacheDir,
    onWarning: (line) => warnings.push(line),
  };
}

Deno.test(
  "cache computes channel means",
  withTempDir(async (dir) => {
    const items = copyImages(dir, GOOD.slice(0, 4));
    const { embed, calls } = meanEmbedder();
    const { embeddings, summary } = await embeddingCache.getOrCompute(
      request(items, join(dir, "cache"), embed, []),
    );
    assert.deepEqual(calls, [3, 1]);
    assert.equal(summary.computed, 4);
    assert.equal(summary.fromCache, 0);
    for (const item of items) {
      const expected = channelMeans(clipPreprocess(await decodeImageFile(item.imagePath)), 1);
      assert.deepEqual(embeddings.get(item.imageId), expected);
    }
  }),
);

Deno.test(
  "cache second call embeds nothing",
  withTempDir(async (dir) => {
    const items = copyImages(dir, GOOD);
    const first = await embeddingCache.getOrCompute(
      request(items, join(dir, "cache"), meanEmbedder().embed, []),
    );
    const { embed, calls } = meanEmbedder();
    const second = await embeddingCache.getOrCompute(request(items, join(dir, "cache"), embed, []));
    assert.deepEqual(calls, []);
    assert.equal(second.summary.computed, 0);
    assert.equal(second.summary.fromCache, GOOD.length);
    assert.deepEqual(second.embeddings, first.embeddings);
  }),
);

Deno.test(
  "cache skips corrupt files with one warning",
  withTempDir(async (dir) => {
    const items = copyImages(dir, [
      "rgb.png",
      "corrupt.jpg",
      "gray.png",
      "empty.jpg",
      "not_an_image.jpg",
    ]);
    items.push({ imageId: "gone", imagePath: join(dir, "images", "deleted.png") });
    const warnings: string[] = [];
    const { embed, calls } = meanEmbedder();
    const { embeddings, summary } = await embeddingCache.getOrCompute(
      request(items, join(dir, "cache"), embed, warnings),
    );
    assert.deepEqual([...embeddings.keys()].sort(), ["img0", "img2"]);
    assert.deepEqual(calls, [2]);
    assert.equal(summary.computed, 2);
    assert.deepEqual(summary.skipped.map((entry) => entry.imageId), [
      "img1",
      "img3",
      "img4",
      "gone",
    ]);
    assert.equal(summary.skipped[1].reason, "empty file (0 bytes)");
    assert.equal(summary.skipped[3].reason, "file not found");
    assert.equal(warnings.length, 4);
    assert.equal(
      warnings[1],
      `warning: skipping image ${items[3].imagePath} (image id img3): empty file (0 bytes)`,
    );

    // The next run reads the skip list from the cache: no decode retries, same warnings.
    const again: string[] = [];
    const rerun = await embeddingCache.getOrCompute(
      request(items, join(dir, "cache"), meanEmbedder().embed, again),
    );
    assert.equal(rerun.summary.fromCache, 2);
    assert.equal(rerun.summary.skipped.length, 4);
    assert.deepEqual(again, warnings);
  }),
);

Deno.test(
  "cache resumes after crash",
  withTempDir(async (dir) => {
    const items = copyImages(dir, GOOD);
    const cacheDir = join(dir, "cache");
    const crashing = meanEmbedder(2); // the second batch fails, as if the run were killed
    await assert.rejects(
      () => embeddingCache.getOrCompute(request(items, cacheDir, crashing.embed, [])),
      /simulated crash/,
    );

    const { embed, calls } = meanEmbedder();
    const progress: number[] = [];
    const resumed = await embeddingCache.getOrCompute({
      ...request(items, cacheDir, embed, []),
      onProgress: (done) => progress.push(done),
    });
    assert.deepEqual(calls, [3, 1]);
    assert.equal(resumed.summary.fromCache, 3);
    assert.equal(resumed.summary.computed, 4);
    assert.deepEqual(progress, [3, 6, 7]);
    const fresh = await embeddingCache.getOrCompute(
      request(items, join(dir, "fresh"), meanEmbedder().embed, []),
    );
    assert.deepEqual(resumed.embeddings, fresh.embeddings);
  }),
);

Deno.test(
  "cache redoes truncated chunk",
  withTempDir(async (dir) => {
    const items = copyImages(dir, GOOD.slice(0, 5));
    const cacheDir = join(dir, "cache");
    const first = await embeddingCache.getOrCompute(
      request(items, cacheDir, meanEmbedder().embed, []),
    );
    const chunkFile = join(first.summary.cachePath, "chunk-000000.f32");
    truncateSync(chunkFile, 10);
    const warnings: string[] = [];
    const { embed, calls } = meanEmbedder();
    const second = await embeddingCache.getOrCompute(request(items, cacheDir, embed, warnings));
    assert.deepEqual(calls, [3]);
    assert.equal(second.summary.fromCache, 2);
    assert.ok(
      warnings[0].startsWith(
        `warning: embedding cache chunk ${chunkFile} is missing or not 36 bytes`,
      ),
      warnings[0],
    );
    assert.deepEqual(second.embeddings, first.embeddings);
  }),
);

Deno.test(
  "cache key changes with model and files",
  withTempDir(async (dir) => {
    const items = copyImages(dir, GOOD.slice(0, 2));
    const cacheDir = join(dir, "cache");
    await embeddingCache.getOrCompute(request(items, cacheDir, meanEmbedder().embed, []));
    const { embed, calls } = meanEmbedder();
    await embeddingCache.getOrCompute({
      ...request(items, cacheDir, embed, []),
      modelKey: "other-clip",
    });
    assert.deepEqual(calls, [2]);
    copyFileSync(join(FIXTURES, "rgba.png"), items[0].imagePath); // new size and mtime
    await embeddingCache.getOrCompute(request(items, cacheDir, embed, []));
    assert.deepEqual(calls, [2, 2]);
    assert.equal(readdirSync(cacheDir).length, 3);
  }),
);

Deno.test(
  "cache rejects wrong embed output size",
  withTempDir(async (dir) => {
    const items = copyImages(dir, GOOD.slice(0, 2));
    const embed = (_pixels: Float32Array, n: number) => Promise.resolve(new Float32Array(n * 2));
    await assert.rejects(
      () => embeddingCache.getOrCompute(request(items, join(dir, "cache"), embed, [])),
      /embed returned 4 values for 2 images of dim 3; expected 6/,
    );
  }),
);
