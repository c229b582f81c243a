// Helpers shared by the kernel launchers: parameter packing and grid sizing.

import { rt } from "../engine/runtime.ts";

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
