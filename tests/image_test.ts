import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  CLIP_MEAN,
  CLIP_STD,
  clipPreprocess,
  decodeImage,
  decodeImageFile,
  ImageDecodeError,
  resizeBicubic,
  type RgbImage,
} from "../data/image.ts";
import { mulberry32 } from "../util/random.ts";

// Fixtures come from tools/make_image_fixtures.py (Pillow 12.3, transformers 5.18).
const FIXTURES = fileURLToPath(new URL("./fixtures/images/", import.meta.url));

interface DecodeExpectation {
  mode: string;
  width: number;
  height: number;
  rgb: number[];
  high_byte_rgb?: number[];
}

const expected = JSON.parse(await Deno.readTextFile(FIXTURES + "expected.json")) as {
  decode: Record<string, DecodeExpectation>;
  clip_normalization: { channels: number[][] };
};

async function rejection<T extends Error>(
  run: () => Promise<unknown>,
  type: new (...args: never[]) => T,
): Promise<T> {
  try {
    await run();
  } catch (error) {
    assert.ok(error instanceof type, `expected ${type.name}, got ${error}`);
    return error;
  }
  throw new assert.AssertionError({ message: `expected ${type.name}, but nothing was thrown` });
}

function maxAbsDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.deepEqual(a.length, b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

function randomImage(width: number, height: number, seed: number): RgbImage {
  const next = mulberry32(seed);
  const data = new Uint8Array(width * height * 3);
  for (let i = 0; i < data.length; i++) data[i] = Math.floor(next() * 256);
  return { width, height, data };
}

async function assertDecodeError(name: string, reasonPart: string): Promise<void> {
  const path = FIXTURES + name;
  const error = await rejection(() => decodeImageFile(path), ImageDecodeError);
  assert(error.message.includes(path), `message names the file: ${error.message}`);
  assert(error.message.includes(reasonPart), `message gives the reason: ${error.message}`);
  assert(!error.message.includes("\n"), "message is one line");
}

Deno.test("decode corrupt JPEG", () =>
  assertDecodeError("corrupt.jpg", "corrupt or truncated JPEG"));
Deno.test("decode truncated JPEG", () =>
  assertDecodeError("truncated.jpg", "corrupt or truncated JPEG"));
Deno.test("decode truncated PNG", () =>
  assertDecodeError("truncated.png", "corrupt or truncated PNG"));
Deno.test("decode empty file", () => assertDecodeError("empty.jpg", "empty file (0 bytes)"));
Deno.test("decode text file", () =>
  assertDecodeError("not_an_image.jpg", 'starts with the text "caption: a cat'));

Deno.test("decode unsupported formats name format", async () => {
  const cases = [["anim.gif", "GIF89a\x01\x00"], ["scan.tif", "II*\x00\x08\x00"], [
    "icon.bmp",
    "BM\x36\x00",
  ]];
  for (const [file, start] of cases) {
    const format = { gif: "GIF", tif: "TIFF", bmp: "BMP" }[file.split(".")[1]];
    const error = await rejection(
      () => decodeImage(new TextEncoder().encode(start), file),
      ImageDecodeError,
    );
    assert.equal(
      error.message,
      `failed to decode image ${file}: ${format} is not supported; convert the file to PNG or JPEG`,
    );
  }
});

Deno.test("decode missing file raises NotFound", async () => {
  await rejection(() => decodeImageFile(FIXTURES + "no_such_file.png"), Deno.errors.NotFound);
});

// Lossless inputs and flat-colour JPEGs must equal Pillow's convert("RGB") byte for byte.
const EXACT_CASES = [
  "gray.png",
  "gray_alpha.png",
  "rgba.png",
  "rgb.png",
  "palette.png",
  "palette_4bit.png",
  "bilevel.png",
  "rgb16.png",
  "gray_alpha16.png",
  "interlaced.png",
  "interlaced16.png",
  "cmyk.jpg",
  "rgb.jpg",
  "progressive.jpg",
  "gray.jpg",
];

for (const name of EXACT_CASES) {
  Deno.test(`decode ${name} equals Pillow`, async () => {
    const image = await decodeImageFile(FIXTURES + name);
    const reference = expected.decode[name];
    assert.deepEqual([image.width, image.height], [reference.width, reference.height]);
    assert.deepEqual(Array.from(image.data), reference.rgb);
  });
}

Deno.test("decode RGBA drops alpha without compositing", async () => {
  // palette.png marks palette index 2 (pure blue) transparent, and Pillow keeps the blue.
  const image = await decodeImageFile(FIXTURES + "palette.png");
  const pixels = Array.from(
    { length: image.width * image.height },
    (_, i) => Array.from(image.data.subarray(i * 3, i * 3 + 3)),
  );
  assert(
    pixels.some((p) => p[0] === 0 && p[1] === 0 && p[2] === 255),
    "transparent blue pixels stay blue",
  );
});

Deno.test("decode 16-bit gray keeps high byte", async () => {
  const image = await decodeImageFile(FIXTURES + "gray16.png");
  const reference = expected.decode["gray16.png"];
  assert.deepEqual(Array.from(image.data), reference.high_byte_rgb);
  // Pillow clips mode I;16 at 255 instead, and this decoder deliberately differs there.
  assert.notDeepEqual(reference.rgb, reference.high_byte_rgb);
});

Deno.test("decode noisy JPEGs near Pillow", async () => {
  // imagescript's JPEG decoder is not libjpeg-turbo, which Pillow's wheels use, so noisy JPEGs
  // decode a little differently. Measured here: 2 levels for 4:2:0 RGB, 1 level for CMYK.
  for (const [name, tolerance] of [["photo.jpg", 2], ["cmyk_photo.jpg", 1]] as const) {
    const image = await decodeImageFile(FIXTURES + name);
    const difference = maxAbsDifference(image.data, expected.decode[name].rgb);
    assert(difference <= tolerance, `${name}: max difference ${difference} > ${tolerance}`);
  }
});

function expectedClipOutput(crop: RgbImage): Float32Array {
  const plane = 224 * 224;
  const out = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    for (let channel = 0; channel < 3; channel++) {
      out[channel * plane + i] =
        expected.clip_normalization.channels[channel][crop.data[i * 3 + channel]];
    }
  }
  return out;
}

// Each crop fixture is what transformers' CLIPImageProcessor (PIL backend) produced, so these
// cases check resize, crop and normalization bit for bit.
for (
  const name of ["clip_noise_37x23", "clip_scene_500x301", "clip_scene_41x97", "clip_scene_224x250"]
) {
  Deno.test(`clipPreprocess ${name} equals transformers`, async () => {
    const source = await decodeImageFile(`${FIXTURES}${name}.png`);
    const crop = await decodeImageFile(`${FIXTURES}${name}_crop224.png`);
    const output = clipPreprocess(source);
    assert.deepEqual(output.length, 3 * 224 * 224);
    assert.deepEqual(maxAbsDifference(output, expectedClipOutput(crop)), 0);
  });
}

Deno.test("clipPreprocess normalization equals transformers", () => {
  const data = new Uint8Array(224 * 224 * 3);
  for (let i = 0; i < 224 * 224; i++) data.fill(i % 256, i * 3, i * 3 + 3);
  const output = clipPreprocess({ width: 224, height: 224, data });
  for (let channel = 0; channel < 3; channel++) {
    const values = Array.from({ length: 224 }, (_, x) => output[channel * 224 * 224 + x]);
    assert.deepEqual(values, expected.clip_normalization.channels[channel].slice(0, 224));
  }
  // Spot check against the formula: (255 / 255 - mean) / std, within float32 rounding.
  const white = clipPreprocess({
    width: 224,
    height: 224,
    data: new Uint8Array(224 * 224 * 3).fill(255),
  });
  for (let channel = 0; channel < 3; channel++) {
    const formula = (1 - CLIP_MEAN[channel]) / CLIP_STD[channel];
    assert(Math.abs(white[channel * 224 * 224] - formula) < 1e-6);
  }
});

Deno.test("clipPreprocess pads small crop with zeros", () => {
  const image: RgbImage = { width: 10, height: 8, data: new Uint8Array(10 * 8 * 3).fill(200) };
  // Size 8 keeps the image as is. A 12-pixel crop pads 2 rows above and 1 column left
  // (floor((8 - 12) / 2) = -2 and floor((10 - 12) / 2) = -1).
  const output = clipPreprocess(image, { size: 8, cropSize: 12 });
  const zero = -CLIP_MEAN[0] / CLIP_STD[0];
  const filled = (200 / 255 - CLIP_MEAN[0]) / CLIP_STD[0];
  assert.deepEqual(output.length, 3 * 12 * 12);
  assert(Math.abs(output[0] - zero) < 1e-6, "top-left corner is padding");
  assert(Math.abs(output[2 * 12 + 1] - filled) < 1e-6, "row 2, column 1 is the first image pixel");
  assert(Math.abs(output[1 * 12 + 1] - zero) < 1e-6, "row 1 is padding");
  assert(Math.abs(output[11 * 12 + 11] - zero) < 1e-6, "bottom-right corner is padding");
});

Deno.test("resizeBicubic same size copies", () => {
  const image = randomImage(5, 4, 3);
  const resized = resizeBicubic(image, 5, 4);
  assert.deepEqual(resized.data, image.data);
  assert.notEqual(resized.data, image.data, "the result owns its pixels");
});

// A straightforward float64 version of Pillow's antialiased bicubic, written from its
// definition rather than from data/resize_bicubic.ts. It has the same kernel support and
// normalization but plain float arithmetic, with Math.round in place of 22-bit fixed point.
function referenceResize(image: RgbImage, width: number, height: number): RgbImage {
  const kernel = (x: number) => {
    const t = Math.abs(x);
    if (t < 1) return 1.5 * t ** 3 - 2.5 * t ** 2 + 1;
    if (t < 2) return -0.5 * t ** 3 + 2.5 * t ** 2 - 4 * t + 2;
    return 0;
  };
  const resampleAxis = (
    length: number,
    outLength: number,
    read: (i: number, channel: number) => number,
  ): number[][] => {
    const scale = length / outLength;
    const stretch = Math.max(1, scale);
    return Array.from({ length: outLength }, (_, o) => {
      const center = (o + 0.5) * scale;
      const first = Math.max(0, Math.floor(center - 2 * stretch + 0.5));
      const last = Math.min(length, Math.floor(center + 2 * stretch + 0.5));
      const weights: number[] = [];
      for (let i = first; i < last; i++) weights.push(kernel((i - center + 0.5) / stretch));
      const total = weights.reduce((a, b) => a + b, 0);
      return [0, 1, 2].map((channel) => {
        let sum = 0;
        weights.forEach((w, k) => (sum += (w / total) * read(first + k, channel)));
        return Math.min(255, Math.max(0, Math.round(sum)));
      });
    });
  };
  const temp = new Uint8Array(width * image.height * 3);
  for (let y = 0; y < image.height; y++) {
    const row = resampleAxis(
      image.width,
      width,
      (x, c) => image.data[(y * image.width + x) * 3 + c],
    );
    row.forEach((pixel, x) => temp.set(pixel, (y * width + x) * 3));
  }
  const out = new Uint8Array(width * height * 3);
  for (let x = 0; x < width; x++) {
    const column = resampleAxis(image.height, height, (y, c) => temp[(y * width + x) * 3 + c]);
    column.forEach((pixel, y) => out.set(pixel, (y * width + x) * 3));
  }
  return { width, height, data: out };
}

function referencePreprocess(image: RgbImage): Float64Array {
  const short = Math.min(image.width, image.height);
  const long = Math.max(image.width, image.height);
  const longOut = Math.trunc((224 * long) / short);
  const [width, height] = image.width <= image.height ? [224, longOut] : [longOut, 224];
  const resized = referenceResize(image, width, height);
  const top = Math.floor((height - 224) / 2);
  const left = Math.floor((width - 224) / 2);
  const out = new Float64Array(3 * 224 * 224);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < 224; y++) {
      for (let x = 0; x < 224; x++) {
        const value = resized.data[((y + top) * width + x + left) * 3 + c];
        out[c * 224 * 224 + y * 224 + x] = (value / 255 - CLIP_MEAN[c]) / CLIP_STD[c];
      }
    }
  }
  return out;
}

// One byte level after normalization is 1 / 255 / std, at most 0.0150 (std 0.2613).
const ONE_LEVEL = 1 / 255 / Math.min(...CLIP_STD);

for (const [width, height] of [[37, 23], [500, 301]]) {
  Deno.test(`clipPreprocess ${width}x${height} near float64 reference`, () => {
    const image = randomImage(width, height, width * 1000 + height);
    const output = clipPreprocess(image);
    assert.deepEqual(output.length, 3 * 224 * 224);
    // Fixed-point and float64 rounding can land on neighbouring bytes in each of the two
    // passes. The measured maximum on these inputs is one byte level.
    const difference = maxAbsDifference(output, referencePreprocess(image));
    assert(difference <= ONE_LEVEL + 1e-6, `max difference ${difference} > one level ${ONE_LEVEL}`);
  });
}
