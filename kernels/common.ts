// Helpers shared by the kernel launchers: parameter packing, grid sizing, and windows of buffers
// larger than one storage binding.

import { rt } from "../engine/runtime.ts";
import type { Tensor } from "../engine/tensor.ts";

// Packs uniform parameters in declaration order: integers as u32, `{ f32: x }` as f32.
export function packParams(values: (number | { f32: number } | { i32: number })[]): Uint32Array {
  const words = new Uint32Array(values.length);
  const floats = new Float32Array(words.buffer);
  const ints = new Int32Array(words.buffer);
  values.forEach((v, i) => {
    if (typeof v === "number") {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new Error(`packParams: ${v} is not a u32`);
      words[i] = v;
    } else if ("f32" in v) floats[i] = v.f32;
    else ints[i] = v.i32;
  });
  return words;
}

// Workgroup counts covering `groups` workgroups in a 2-D grid within the per-dimension limit;
// shaders rebuild the linear index as (wid.y * num_workgroups.x + wid.x).
export function grid1d(groups: number): [number, number] {
  const maxGroups = rt().device.limits.maxComputeWorkgroupsPerDimension;
  if (groups <= maxGroups) return [Math.max(groups, 1), 1];
  const y = Math.ceil(groups / maxGroups);
  return [Math.ceil(groups / y), y];
}

export function ceilDiv(a: number, b: number): number {
  return Math.ceil(a / b);
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

// ---- binding chunks ---------------------------------------------------------------------------

// A range of whole rows that fits in one storage binding.
export interface RowChunk {
  row0: number; // first row of the chunk
  rows: number;
  byteOffset: number; // binding start, a multiple of minStorageBufferOffsetAlignment
  byteSize: number; // binding length in bytes
  elementOffset: number; // index of the chunk's first element inside the binding
}

// Splits `rows` rows of `cols` 4-byte elements into ranges that each fit one storage binding
// (rt().gpu.maxBindingBytes), so one kernel can walk a matrix larger than a binding, such as
// 1024 rows of GPT-2 logits (206 MB). Bindings start at aligned offsets, so each chunk also
// records where its first row lies inside its binding.
export function rowChunks(rows: number, cols: number): RowChunk[] {
  const rowBytes = cols * 4;
  const totalBytes = rows * rowBytes;
  const maxBytes = rt().gpu.maxBindingBytes;
  if (totalBytes <= maxBytes) {
    return [{ row0: 0, rows, byteOffset: 0, byteSize: Math.max(totalBytes, 4), elementOffset: 0 }];
  }
  const alignment = rt().device.limits.minStorageBufferOffsetAlignment;
  // The aligned start can precede the first row by up to alignment - 4 bytes.
  const rowsPerChunk = Math.floor((maxBytes - alignment) / rowBytes);
  if (rowsPerChunk < 1) {
    throw new Error(`a row of ${cols} f32 values does not fit in one storage binding of ${maxBytes} bytes`);
  }
  const chunks: RowChunk[] = [];
  for (let row0 = 0; row0 < rows; row0 += rowsPerChunk) {
    const chunkRows = Math.min(rowsPerChunk, rows - row0);
    const start = row0 * rowBytes;
    const byteOffset = Math.floor(start / alignment) * alignment;
    chunks.push({
      row0,
      rows: chunkRows,
      byteOffset,
      byteSize: start + chunkRows * rowBytes - byteOffset,
      elementOffset: (start - byteOffset) / 4,
    });
  }
  return chunks;
}

// The byte range of `t` that `chunk` covers, as a bind group entry.
export function chunkBinding(t: Tensor, chunk: RowChunk): { buffer: GPUBuffer; offset: number; size: number } {
  return { buffer: t.buffer, offset: chunk.byteOffset, size: chunk.byteSize };
}

// A storage binding over a range of 4-byte elements of a buffer. Bindings start at multiples of
// minStorageBufferOffsetAlignment, so the range's first element may lie inside the binding.
export interface ElementWindow {
  binding: { buffer: GPUBuffer; offset: number; size: number };
  elementOffset: number; // index of the range's first element inside the binding
}

// Whether the whole buffer can be bound at once.
export function fitsOneBinding(buffer: GPUBuffer): boolean {
  return buffer.size <= rt().gpu.maxBindingBytes;
}

// Largest number of consecutive elements that `elementWindow` can bind wherever they start,
// because the aligned start can precede the first element by up to alignment - 4 bytes.
export function maxWindowElements(): number {
  const alignment = rt().device.limits.minStorageBufferOffsetAlignment;
  return Math.floor((rt().gpu.maxBindingBytes - alignment + 4) / 4);
}

// Computes the aligned binding that covers elements [first, end) of `buffer`. Throws if it is
// larger than one storage binding may be.
export function elementWindow(buffer: GPUBuffer, first: number, end: number): ElementWindow {
  const alignment = rt().device.limits.minStorageBufferOffsetAlignment;
  const maxBytes = rt().gpu.maxBindingBytes;
  const start = first * 4;
  const offset = Math.floor(start / alignment) * alignment;
  const size = Math.max(end * 4 - offset, 4);
  if (size > maxBytes) {
    throw new Error(`elements [${first}, ${end}) need a binding of ${size} bytes, above the limit of ${maxBytes} bytes`);
  }
  return { binding: { buffer, offset, size }, elementOffset: (start - offset) / 4 };
}
