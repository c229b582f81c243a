// CLIP input preprocessing equal to Hugging Face transformers' CLIPImageProcessor on its PIL
// backend, which was the only backend before transformers 5 and is CLIPImageProcessorPil in
// 5.x. Steps: shortest-edge bicubic resize, center crop, rescale by 1/255, normalize with the
// CLIP mean and std. The torchvision backend of transformers 5 is not matched, because it
// resizes with torchvision, whose results can differ slightly.
import type { RgbImage } from "./image.ts";
import { resizeBicubic } from "./resize_bicubic.ts";

/** Per-channel RGB mean and standard deviation used to train OpenAI CLIP. */
export const CLIP_MEAN: readonly number[] = [0.48145466, 0.4578275, 0.40821073];
export const CLIP_STD: readonly number[] = [0.26862954, 0.26130258, 0.27577711];

export interface ClipPreprocessOptions {
  /** Target length of the shorter image side after resizing, in pixels (default 224). */
  size?: number;
  /** Side of the square center crop, in pixels (default 224). */
  cropSize?: number;
  mean?: readonly number[];
  std?: readonly number[];
}

/**
 * Returns the normalized crop as float32 in CHW layout (3 x cropSize x cropSize).
 * A crop larger than the resized image is padded with zero bytes before normalization,
 * as transformers' center_crop pads.
 */
export function clipPreprocess(image: RgbImage, options: ClipPreprocessOptions = {}): Float32Array {
  const size = options.size ?? 224;
  const cropSize = options.cropSize ?? 224;
  const [width, height] = shortestEdgeSize(image.width, image.height, size);
  const resized = resizeBicubic(image, width, height);
  const table = normalizationTable(options.mean ?? CLIP_MEAN, options.std ?? CLIP_STD);
  return cropAndNormalize(resized, cropSize, table);
}

/** Output size as transformers' get_resize_output_image_size computes it, as [width, height]. */
export function shortestEdgeSize(width: number, height: number, size: number): [number, number] {
  if (width <= height) return [size, Math.trunc((size * height) / width)];
  return [Math.trunc((size * width) / height), size];
}

/**
 * Maps every byte value to its normalized float32, per channel. transformers rescales in
 * float64 and casts to float32, then subtracts and divides in float32. Math.fround after each
 * operation reproduces those roundings exactly.
 */
function normalizationTable(mean: readonly number[], std: readonly number[]): Float32Array[] {
  return [0, 1, 2].map((channel) => {
    const channelMean = Math.fround(mean[channel]);
    const channelStd = Math.fround(std[channel]);
    const table = new Float32Array(256);
    for (let value = 0; value < 256; value++) {
      const rescaled = Math.fround(value * (1 / 255));
      table[value] = Math.fround(Math.fround(rescaled - channelMean) / channelStd);
    }
    return table;
  });
}

function cropAndNormalize(image: RgbImage, cropSize: number, table: Float32Array[]): Float32Array {
  // Floor division like Python's `//` in transformers' center_crop. A negative offset pads.
  const top = Math.floor((image.height - cropSize) / 2);
  const left = Math.floor((image.width - cropSize) / 2);
  const plane = cropSize * cropSize;
  const out = new Float32Array(3 * plane);
  for (let y = 0; y < cropSize; y++) {
    const sourceY = y + top;
    for (let x = 0; x < cropSize; x++) {
      const sourceX = x + left;
      const inside = sourceY >= 0 && sourceY < image.height && sourceX >= 0 &&
        sourceX < image.width;
      const p = (sourceY * image.width + sourceX) * 3;
      for (let channel = 0; channel < 3; channel++) {
        const value = inside ? image.data[p + channel] : 0;
        out[channel * plane + y * cropSize + x] = table[channel][value];
      }
    }
  }
  return out;
}
