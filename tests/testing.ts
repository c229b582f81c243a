// Shared test helpers: a seeded random source, float64 comparison with the max difference
// printed, and central finite differences for checking float64 reference gradients.

import { getRuntime } from "../engine/runtime.ts";

export async function gpuReady(): Promise<void> {
  await getRuntime();
}

// Deterministic uniform values in [lo, hi) from a 32-bit seed (mulberry32).
export function randomArray(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  const out = new Float64Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    out[i] = lo + (hi - lo) * u;
  }
  return out;
}

export interface CloseResult {
  maxAbs: number;
  maxRel: number;
  worst: number;
}

// Asserts |actual - expected| <= atol + rtol * |expected| elementwise and logs the max difference.
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  atol: number,
  rtol: number,
  label: string,
): CloseResult {
  if (actual.length !== expected.length) {
    throw new Error(`${label}: length ${actual.length} differs from expected ${expected.length}`);
  }
  let maxAbs = 0;
  let maxRel = 0;
  let worst = -1;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(a) !== Number.isNaN(e) || (!Number.isFinite(a) && !Number.isNaN(a) && a !== e)) {
      throw new Error(`${label}: element ${i} is ${a}, expected ${e}`);
    }
    if (Number.isNaN(a)) continue;
    const diff = Math.abs(a - e);
    const excess = diff - (atol + rtol * Math.abs(e));
    if (diff > maxAbs) maxAbs = diff;
    if (e !== 0) maxRel = Math.max(maxRel, diff / Math.abs(e));
    if (excess > 0 && worst < 0) worst = i;
  }
  console.log(`  ${label}: max abs diff ${maxAbs.toExponential(2)}, max rel diff ${maxRel.toExponential(2)}`);
  if (worst >= 0) {
    throw new Error(
      `${label}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} (atol ${atol}, rtol ${rtol}); max abs diff ${maxAbs}`,
    );
  }
  return { maxAbs, maxRel, worst };
}

// Central finite differences of a scalar float64 function at x, for every element of x.
export function finiteDifferences(f: (x: Float64Array) => number, x: Float64Array, eps = 1e-6): Float64Array {
  const grad = new Float64Array(x.length);
  const probe = Float64Array.from(x);
  for (let i = 0; i < x.length; i++) {
    probe[i] = x[i] + eps;
    const up = f(probe);
    probe[i] = x[i] - eps;
    const down = f(probe);
    probe[i] = x[i];
    grad[i] = (up - down) / (2 * eps);
  }
  return grad;
}

// Dot product of two float64 arrays, used to reduce an output to a scalar for finite differences.
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(message);
}
