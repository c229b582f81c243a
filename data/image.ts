// Image decoding to 8-bit RGB that matches Pillow's Image.convert("RGB"), so that
// clip_preprocess.ts starts from the same bytes as Hugging Face's CLIPImageProcessor after
// its convert_to_rgb step.
import { Image } from "imagescript";

export { CLIP_MEAN, CLIP_STD, clipPreprocess } from "./clip_preprocess.ts";
export type { ClipPreprocessOptions } from "./clip_preprocess.ts";
export { resizeBicubic } from "./resize_bicubic.ts";

/** Decoded pixels: row-major, 3 bytes (R, G, B) per pixel. */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** Raised for a file that is empty, truncated, corrupt or not an image. */
export class ImageDecodeError extends Error {
  constructor(readonly file: string, readonly reason: string) {
    super(`failed to decode image ${file}: ${reason}`);
    this.name = "ImageDecodeError";
  }
}

type Container = "png" | "jpeg";

// Signatures of formats that Pillow reads but this module rejects, named in the error message.
// imagescript 1.3.1 lists TIFF, but it failed on an uncompressed TIFF from Pillow 12.3.
const UNSUPPORTED_SIGNATURES: [string, string][] = [
  ["GIF", "GIF8"],
  ["BMP", "BM"],
  ["TIFF", "II*\0"],
  ["TIFF", "MM\0*"],
];

function unsupportedFormat(bytes: Uint8Array): string | null {
  for (const [name, signature] of UNSUPPORTED_SIGNATURES) {
    if (startsWith(bytes, ascii(signature))) return name;
  }
  const webp = startsWith(bytes, ascii("RIFF")) && startsWith(bytes.subarray(8), ascii("WEBP"));
  return webp ? "WebP" : null;
}

function ascii(text: string): number[] {
  return [...new TextEncoder().encode(text)];
}

/**
 * Decodes PNG or JPEG bytes to 8-bit RGB. `file` only names the input in errors.
 *
 * Conversions follow Pillow 12.3 `convert("RGB")`: grayscale is copied to all three channels,
 * palettes are looked up, alpha is dropped without compositing, CMYK JPEGs use Adobe's
 * inverted convention, and 16-bit samples keep their high byte.
 * NOTE: Pillow clips 16-bit grayscale PNGs (mode I;16) at 255, which turns most such images
 * white. Here they keep the high byte like 16-bit RGB does, so these files differ from Pillow.
 */
export async function decodeImage(bytes: Uint8Array, file: string): Promise<RgbImage> {
  const container = detectContainer(bytes, file);
  let decoded: Image;
  try {
    decoded = await Image.decode(bytes);
  } catch (error) {
    // imagescript reports truncation and corruption alike, and a WebAssembly trap lands here too.
    const detail = error instanceof Error ? error.message : String(error);
    throw new ImageDecodeError(
      file,
      `corrupt or truncated ${container.toUpperCase()} data (${detail})`,
    );
  }
  return dropAlpha(decoded);
}

/** Reads and decodes an image file. A missing file raises Deno.errors.NotFound unchanged. */
export async function decodeImageFile(path: string): Promise<RgbImage> {
  return decodeImage(await Deno.readFile(path), path);
}

function detectContainer(bytes: Uint8Array, file: string): Container {
  if (bytes.length === 0) throw new ImageDecodeError(file, "empty file (0 bytes)");
  if (startsWith(bytes, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return "png";
  if (startsWith(bytes, [0xff, 0xd8, 0xff])) return "jpeg";
  const unsupported = unsupportedFormat(bytes);
  if (unsupported) {
    throw new ImageDecodeError(
      file,
      `${unsupported} is not supported; convert the file to PNG or JPEG`,
    );
  }
  throw new ImageDecodeError(file, `not a PNG or JPEG file (${describeStart(bytes)})`);
}

function startsWith(bytes: Uint8Array, signature: number[]): boolean {
  return bytes.length >= signature.length && signature.every((value, i) => bytes[i] === value);
}

function describeStart(bytes: Uint8Array): string {
  const head = bytes.subarray(0, 24);
  const printable = head.every((b) =>
    b === 0x09 || b === 0x0a || b === 0x0d || (b >= 0x20 && b < 0x7f)
  );
  if (printable) {
    const text = new TextDecoder().decode(head).replace(/\s+/g, " ").trim();
    return `it starts with the text "${text}"`;
  }
  const hex = Array.from(head.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join(" ");
  return `first bytes: ${hex}`;
}

function dropAlpha(image: Image): RgbImage {
  const pixels = image.width * image.height;
  const rgba = image.bitmap;
  const data = new Uint8Array(pixels * 3);
  for (let i = 0; i < pixels; i++) {
    data[i * 3] = rgba[i * 4];
    data[i * 3 + 1] = rgba[i * 4 + 1];
    data[i * 3 + 2] = rgba[i * 4 + 2];
  }
  return { width: image.width, height: image.height, data };
}
