// float64 references and helpers shared by the embedding tests.

import type { Tensor } from "../engine/tensor.ts";
import { randomArray } from "./testing.ts";

// out[n, :] = table[ids[n], :]; ids outside [0, vocab) give NaN rows.
export function refGather(ids: ArrayLike<number>, table: ArrayLike<number>, vocab: number, dim: number): Float64Array {
  const out = new Float64Array(ids.length * dim);
  for (let n = 0; n < ids.length; n++) {
    for (let d = 0; d < dim; d++) {
      out[n * dim + d] = ids[n] >= 0 && ids[n] < vocab ? table[ids[n] * dim + d] : NaN;
    }
  }
  return out;
}

// grad[v, :] = sum of dOut[n, :] over tokens n with ids[n] = v, for v in [rowOffset, rowOffset + rows).
export function refScatter(ids: ArrayLike<number>, dOut: ArrayLike<number>, dim: number, rowOffset: number, rows: number): Float64Array {
  const grad = new Float64Array(rows * dim);
  for (let n = 0; n < ids.length; n++) {
    const row = ids[n] - rowOffset;
    if (row < 0 || row >= rows) continue;
    for (let d = 0; d < dim; d++) grad[row * dim + d] += dOut[n * dim + d];
  }
  return grad;
}

export function randomIds(n: number, vocab: number, seed: number): Int32Array {
  return Int32Array.from(randomArray(n, seed, 0, vocab), Math.floor);
}

// f32 round trip, so that references see exactly the values the GPU holds.
export function asF32(x: Float64Array): Float64Array {
  return Float64Array.from(Float32Array.from(x));
}

export async function readAndDispose(t: Tensor): Promise<Float32Array> {
  const data = await t.toFloat32();
  t.dispose();
  return data;
}
