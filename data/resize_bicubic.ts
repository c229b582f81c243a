// Bicubic resize with the same fixed-point arithmetic as Pillow's Image.resize(size, BICUBIC)
// on 8-bit images (libImaging/Resample.c as of Pillow 12.3), so the output bytes are identical
// to Pillow's rather than merely close.
import type { RgbImage } from "./image.ts";

// Pillow keeps 32 - 8 - 2 fraction bits: 8 for the pixel value and 2 spare bits because
// bicubic weights can be negative or sum above 1 before normalization.
const PRECISION_BITS = 22;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);

// Keys' cubic convolution kernel with a = -0.5, which is zero outside [-2, 2].
const CUBIC_A = -0.5;
const CUBIC_SUPPORT = 2;

/** Fixed-point filter taps for one axis: output pixel i reads `counts[i]` inputs from `starts[i]`. */
interface AxisKernel {
  taps: number;
  starts: Int32Array;
  counts: Int32Array;
  weights: Int32Array;
}

function cubic(x: number): number {
  if (x < 0) x = -x;
  if (x < 1) return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * CUBIC_A;
  return 0;
}

/**
 * Computes the taps the way Pillow's precompute_coeffs does. When shrinking, the kernel is
 * stretched by the scale factor (antialiasing). Weights are normalized to sum to 1 in float64,
 * then rounded half away from zero to 22 fraction bits.
 */
function axisKernel(inSize: number, outSize: number): AxisKernel {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = CUBIC_SUPPORT * filterScale;
  const taps = Math.ceil(support) * 2 + 1;
  // Pillow multiplies by the reciprocal instead of dividing, which changes the last bits of
  // some weights.
  const inverseFilterScale = 1 / filterScale;
  const starts = new Int32Array(outSize);
  const counts = new Int32Array(outSize);
  const weights = new Int32Array(outSize * taps);
  const raw = new Float64Array(taps);

  for (let out = 0; out < outSize; out++) {
    const center = (out + 0.5) * scale;
    const start = Math.max(0, Math.trunc(center - support + 0.5));
    const end = Math.min(inSize, Math.trunc(center + support + 0.5));
    let sum = 0;
    for (let i = 0; i < end - start; i++) {
      raw[i] = cubic((i + start - center + 0.5) * inverseFilterScale);
      sum += raw[i];
    }
    for (let i = 0; i < end - start; i++) {
      const weight = sum !== 0 ? raw[i] / sum : raw[i];
      weights[out * taps + i] = Math.trunc(weight < 0 ? weight * ONE - 0.5 : weight * ONE + 0.5);
    }
    starts[out] = start;
    counts[out] = end - start;
  }
  return { taps, starts, counts, weights };
}

// Bicubic weights sum to at most 1.25 in absolute value, so sums stay below 255 * 1.25 * 2^22
// (inside int32) and `>>` is an exact floor.
function clip8(sum: number): number {
  const value = sum >> PRECISION_BITS;
  if (value < 0) return 0;
  if (value > 255) return 255;
  return value;
}

function resampleRows(image: RgbImage, outWidth: number): RgbImage {
  const { width, height, data } = image;
  const { taps, starts, counts, weights } = axisKernel(width, outWidth);
  const out = new Uint8Array(outWidth * height * 3);
  for (let y = 0; y < height; y++) {
    const row = y * width;
    for (let x = 0; x < outWidth; x++) {
      let r = HALF, g = HALF, b = HALF;
      const first = x * taps;
      for (let i = 0; i < counts[x]; i++) {
        const w = weights[first + i];
        const p = (row + starts[x] + i) * 3;
        r += data[p] * w;
        g += data[p + 1] * w;
        b += data[p + 2] * w;
      }
      const q = (y * outWidth + x) * 3;
      out[q] = clip8(r);
      out[q + 1] = clip8(g);
      out[q + 2] = clip8(b);
    }
  }
  return { width: outWidth, height, data: out };
}

function resampleColumns(image: RgbImage, outHeight: number): RgbImage {
  const { width, height, data } = image;
  const { taps, starts, counts, weights } = axisKernel(height, outHeight);
  const out = new Uint8Array(width * outHeight * 3);
  for (let y = 0; y < outHeight; y++) {
    const first = y * taps;
    for (let x = 0; x < width; x++) {
      let r = HALF, g = HALF, b = HALF;
      for (let i = 0; i < counts[y]; i++) {
        const w = weights[first + i];
        const p = ((starts[y] + i) * width + x) * 3;
        r += data[p] * w;
        g += data[p + 1] * w;
        b += data[p + 2] * w;
      }
      const q = (y * width + x) * 3;
      out[q] = clip8(r);
      out[q + 1] = clip8(g);
      out[q + 2] = clip8(b);
    }
  }
  return { width, height: outHeight, data: out };
}

/**
 * Resizes like Pillow's `image.resize((width, height), Image.BICUBIC)`: a horizontal pass,
 * rounded to bytes, then a vertical pass. An axis whose size does not change is skipped, as
 * Pillow skips it.
 */
export function resizeBicubic(image: RgbImage, width: number, height: number): RgbImage {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new RangeError(
      `invalid resize target ${width}x${height}: both sides must be integers >= 1`,
    );
  }
  let result = image;
  if (width !== image.width) result = resampleRows(result, width);
  if (height !== image.height) result = resampleColumns(result, height);
  if (result === image) result = { ...image, data: image.data.slice() };
  return result;
}
