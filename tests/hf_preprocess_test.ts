// CLIP preprocessing equals transformers' CLIPImageProcessor (PIL backend) on real photos and
// odd-sized synthetic images, and the CLIP embeddings of those photos match the reference.
// Fixtures: tests/fixtures/hf/clip-preprocess-224 and clip-vision-224-tiny.

import { noGrad } from "../engine/autograd.ts";
import { tidy } from "../engine/tensor.ts";
import { clipPreprocess, decodeImageFile } from "../data/image.ts";
import { openCheckpoint } from "../io/safetensors.ts";
import { loadClipVision } from "../model/hf.ts";
import { assert, gpuReady } from "./testing.ts";

await gpuReady();

const DIR = new URL("./fixtures/hf/clip-preprocess-224/", import.meta.url).pathname;
const NAMES = ["coco_000000000790", "coco_000000159269", "synthetic_rgb_37x91", "synthetic_gray_301x57", "synthetic_rgba_83x64"];
const FILES: Record<string, string> = {
  coco_000000000790: "coco_000000000790.jpg",
  coco_000000159269: "coco_000000159269.jpg",
  synthetic_rgb_37x91: "synthetic_rgb_37x91.png",
  synthetic_gray_301x57: "synthetic_gray_301x57.png",
  synthetic_rgba_83x64: "synthetic_rgba_83x64.png",
};

// The processor's pixel_values, rebuilt from the stored uint8 crop and the normalize table.
async function referencePixels(name: string): Promise<Float32Array> {
  const ref = await openCheckpoint(`${DIR}reference.safetensors`);
  const table = await ref.readTensor("normalize_table"); // (3, 256)
  const crop = await ref.readRaw(`${name}.crop`); // u8 (3, 224, 224)
  ref.close();
  const out = new Float32Array(crop.length);
  const plane = 224 * 224;
  for (let i = 0; i < crop.length; i++) out[i] = table[Math.floor(i / plane) * 256 + crop[i]];
  return out;
}

async function ourPixels(name: string): Promise<Float32Array> {
  return clipPreprocess(await decodeImageFile(`${DIR}images/${FILES[name]}`));
}

const results = new Map<string, number>();

for (const name of NAMES) {
  Deno.test(`clip preprocess ${name}`, async () => {
    const expected = await referencePixels(name);
    const actual = await ourPixels(name);
    assert(actual.length === expected.length, `${actual.length} values, expected ${expected.length}`);
    let maxDiff = 0;
    for (let i = 0; i < actual.length; i++) maxDiff = Math.max(maxDiff, Math.abs(actual[i] - expected[i]));
    results.set(name, maxDiff);
    console.log(`  ${name}: max abs diff ${maxDiff.toExponential(2)} (one uint8 level is about 0.0150 after normalisation)`);
    if (name.startsWith("synthetic")) {
      // PNG decoding is lossless, so resize, crop and normalisation must agree exactly.
      assert(maxDiff === 0, `${name}: preprocessing differs from CLIPImageProcessor by ${maxDiff}`);
    } else {
      // JPEG: imagescript's decoder and Pillow's libjpeg-turbo round the IDCT and chroma
      // upsampling differently, by a few levels at most.
      assert(maxDiff <= 6 * 0.0151, `${name}: preprocessing differs by ${maxDiff}, more than 6 uint8 levels`);
    }
  });
}

Deno.test("clip embeddings of preprocessed photos match", async () => {
  const model = await loadClipVision(new URL("./fixtures/hf/clip-vision-224-tiny", import.meta.url).pathname);
  const ref = await openCheckpoint(new URL("./fixtures/hf/clip-vision-224-tiny/reference.safetensors", import.meta.url).pathname);
  const expected = await ref.readTensor("image_embeds"); // (5, 24), rows in NAMES order
  ref.close();
  const pixels = new Float32Array(5 * 3 * 224 * 224);
  for (const [i, name] of NAMES.entries()) pixels.set(await ourPixels(name), i * 3 * 224 * 224);
  const embeds = noGrad(() => tidy(() => model.forward(pixels, 5).imageEmbeds!));
  const actual = await embeds.toFloat32();
  embeds.dispose();
  model.dispose();
  for (let i = 0; i < 5; i++) {
    const a = actual.subarray(i * 24, (i + 1) * 24);
    const e = expected.subarray(i * 24, (i + 1) * 24);
    let dot = 0, na = 0, ne = 0;
    for (let k = 0; k < 24; k++) {
      dot += a[k] * e[k];
      na += a[k] * a[k];
      ne += e[k] * e[k];
    }
    const cosine = dot / Math.sqrt(na * ne);
    console.log(`  ${NAMES[i]}: cosine similarity ${cosine.toFixed(7)}`);
    assert(cosine >= 0.9999, `${NAMES[i]}: cosine similarity ${cosine} below 0.9999`);
  }
});
