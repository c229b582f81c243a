import { fromArray, tidy } from "../engine/tensor.ts";
import { concatSeq, prependRow, sliceSeq, unsliceSeq } from "../kernels/copy.ts";
import { assertClose, gpuReady, randomArray } from "./testing.ts";

await gpuReady();

// Index helpers for a (B, T, D) array stored row-major.
const at = (b: number, t: number, d: number, T: number, D: number) => (b * T + t) * D + d;

Deno.test("concatSeq and sliceSeq round trip", async () => {
  const B = 3, Ta = 4, Tb = 7, D = 5;
  const a = randomArray(B * Ta * D, 31);
  const b = randomArray(B * Tb * D, 32);
  const expected = new Float64Array(B * (Ta + Tb) * D);
  for (let z = 0; z < B; z++) {
    for (let t = 0; t < Ta + Tb; t++) {
      for (let d = 0; d < D; d++) {
        expected[at(z, t, d, Ta + Tb, D)] = t < Ta ? a[at(z, t, d, Ta, D)] : b[at(z, t - Ta, d, Tb, D)];
      }
    }
  }
  const { joined, back } = tidy(() => {
    const joined = concatSeq([fromArray(a, [B, Ta, D]), fromArray(b, [B, Tb, D])]);
    return { joined, back: sliceSeq(joined, Ta, Tb) };
  });
  assertClose(await joined.toFloat32(), Float32Array.from(expected), 0, 0, "concat"); // copies are exact
  assertClose(await back.toFloat32(), Float32Array.from(b), 0, 0, "slice");
  joined.dispose();
  back.dispose();
});

Deno.test("unsliceSeq zero pads", async () => {
  const B = 2, T = 6, D = 3, start = 2, length = 3;
  const g = randomArray(B * length * D, 33);
  const out = tidy(() => unsliceSeq(fromArray(g, [B, length, D]), T, start));
  const expected = new Float64Array(B * T * D);
  for (let z = 0; z < B; z++) {
    for (let t = 0; t < length; t++) for (let d = 0; d < D; d++) expected[at(z, start + t, d, T, D)] = g[at(z, t, d, length, D)];
  }
  assertClose(await out.toFloat32(), Float32Array.from(expected), 0, 0, "unslice");
  out.dispose();
});

Deno.test("prependRow one row per batch", async () => {
  const B = 4, T = 1, D = 9;
  const x = randomArray(B * T * D, 34);
  const row = randomArray(D, 35);
  const out = tidy(() => prependRow(fromArray(x, [B, T, D]), fromArray(row, [D])));
  const expected = new Float64Array(B * (T + 1) * D);
  for (let z = 0; z < B; z++) {
    for (let d = 0; d < D; d++) {
      expected[at(z, 0, d, T + 1, D)] = row[d];
      expected[at(z, 1, d, T + 1, D)] = x[at(z, 0, d, T, D)];
    }
  }
  assertClose(await out.toFloat32(), Float32Array.from(expected), 0, 0, "prepend");
  out.dispose();
});
