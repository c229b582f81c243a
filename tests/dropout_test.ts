import { fromArray, type Tensor, tidy, upload } from "../engine/tensor.ts";
import { dropout, dropoutBackward } from "../kernels/dropout.ts";
import { assert, assertClose, dot, finiteDifferences, gpuReady, randomArray } from "./testing.ts";

await gpuReady();

// The keep mask as kernels/dropout.wgsl specifies it, written again from that specification.
function mix32(value: number): number {
  let h = value >>> 0;
  h = (h ^ (h >>> 16)) >>> 0;
  h = Math.imul(h, 0x85ebca6b) >>> 0;
  h = (h ^ (h >>> 13)) >>> 0;
  h = Math.imul(h, 0xc2b2ae35) >>> 0;
  h = (h ^ (h >>> 16)) >>> 0;
  return h;
}

function referenceMask(n: number, p: number, seed: number, salt: number): Uint8Array {
  const mask = new Uint8Array(n);
  if (p === 1) return mask;
  const threshold = Math.min(Math.round(p * 2 ** 32), 0xffffffff);
  const key = mix32((seed ^ mix32((salt ^ 0x9e3779b9) >>> 0)) >>> 0);
  for (let i = 0; i < n; i++) {
    const bits = mix32((mix32((Math.imul(i, 0x9e3779b9) + key) >>> 0) ^ key) >>> 0);
    mask[i] = bits >= threshold ? 1 : 0;
  }
  return mask;
}

// float64 reference forward. The backward is the same map applied to dy.
function referenceDropout(x: ArrayLike<number>, mask: Uint8Array, p: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = mask[i] ? x[i] / (1 - p) : 0;
  return y;
}

// Random f32 values away from 0, so that a zero output always means a dropped element.
function randomNonZero(n: number, seed: number): Float64Array {
  const values = randomArray(n, seed, 0.5, 1.5);
  for (let i = 0; i < n; i += 2) values[i] = -values[i];
  return Float64Array.from(Float32Array.from(values));
}

function seedTensor(seed: number): Tensor {
  return fromArray(Uint32Array.of(seed), [1], "u32");
}

async function readAndDispose(t: Tensor): Promise<Float32Array> {
  const data = await t.toFloat32();
  t.dispose();
  return data;
}

function gpuDropout(
  x: ArrayLike<number>,
  p: number,
  seed: number,
  salt: number,
): Promise<Float32Array> {
  return readAndDispose(tidy(() => dropout(fromArray(x, [x.length]), p, seedTensor(seed), salt)));
}

function maskOf(y: Float32Array): Uint8Array {
  const mask = new Uint8Array(y.length);
  for (let i = 0; i < y.length; i++) mask[i] = y[i] !== 0 ? 1 : 0;
  return mask;
}

function assertSameMask(actual: Uint8Array, expected: Uint8Array, label: string): void {
  assert(
    actual.length === expected.length,
    `${label}: ${actual.length} mask entries, expected ${expected.length}`,
  );
  for (let i = 0; i < actual.length; i++) {
    // The message is built only on a mismatch, because building it per element is slow.
    if (actual[i] !== expected[i]) {
      throw new Error(
        `${label}: element ${i} is ${actual[i] ? "kept" : "dropped"}, expected the opposite`,
      );
    }
  }
}

function keptCount(mask: Uint8Array): number {
  let kept = 0;
  for (const m of mask) kept += m;
  return kept;
}

// Fraction of positions where two masks agree. Independent masks agree with probability
// q^2 + (1 - q)^2 for keep probability q.
function agreement(a: Uint8Array, b: Uint8Array): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

// Five standard deviations of a binomial proportion. An unbiased hash falls outside with
// probability 6e-7 per seed (the seeds here are fixed, so the tests are deterministic), while a
// keep fraction off by 0.01 at p = 0.5 falls outside at n = 100000.
function binomialTolerance(n: number, probability: number): number {
  return 5 * Math.sqrt(probability * (1 - probability) / n);
}

Deno.test("dropout forward and backward vs reference", async () => {
  for (
    const [n, p, seed, salt] of [[1, 0.5, 3, 0], [1001, 0.3, 12345, 7], [
      4099,
      0.9,
      0xffffffff,
      0xffffffff,
    ]]
  ) {
    const label = `n=${n} p=${p}`;
    const x = randomNonZero(n, seed + 1);
    const dy = randomNonZero(n, seed + 2);
    const mask = referenceMask(n, p, seed, salt);

    const y = await gpuDropout(x, p, seed, salt);
    assertSameMask(maskOf(y), mask, `${label} forward mask`);
    // Kept values are x * f32(1 / (1 - p)), one f32 rounding of the scale and one of the product.
    assertClose(y, referenceDropout(x, mask, p), 0, 2.5e-7, `${label} forward`);

    const dx = await readAndDispose(
      tidy(() => dropoutBackward(fromArray(dy, [n]), p, seedTensor(seed), salt)),
    );
    assertSameMask(maskOf(dx), mask, `${label} backward mask`);
    const expectedDx = referenceDropout(dy, mask, p);
    assertClose(dx, expectedDx, 0, 2.5e-7, `${label} backward`); // as forward

    if (n <= 1001) {
      const numeric = finiteDifferences((v) => dot(referenceDropout(v, mask, p), dy), x);
      // Dropout is linear, so only float64 rounding remains: about 1e-13 in a 1001-term dot
      // product, divided by the 2e-6 step.
      assertClose(
        expectedDx,
        numeric,
        1e-6,
        1e-6,
        `${label} reference backward vs finite differences`,
      );
    }
  }
});

Deno.test("dropout p zero is identity", async () => {
  // Subnormals, signed zeros, infinities and NaN must all come back bit for bit.
  const bits = Uint32Array.of(
    0x00000001,
    0x807fffff,
    0x80000000,
    0,
    0x7f800000,
    0xff800000,
    0x7fc00001,
    0x3f800000,
    0xc2f6e979,
  );
  const x = new Float32Array(bits.buffer);
  const y = await readAndDispose(
    tidy(() => dropout(fromArray(x, [x.length]), 0, seedTensor(1), 2)),
  );
  const yBits = new Uint32Array(y.buffer);
  for (let i = 0; i < bits.length; i++) {
    assert(
      yBits[i] === bits[i],
      `element ${i}: bits 0x${yBits[i].toString(16)}, expected 0x${bits[i].toString(16)}`,
    );
  }
  const dx = await readAndDispose(
    tidy(() => dropoutBackward(fromArray(x, [x.length]), 0, seedTensor(1), 2)),
  );
  const dxBits = new Uint32Array(dx.buffer);
  for (let i = 0; i < bits.length; i++) {
    assert(
      dxBits[i] === bits[i],
      `backward element ${i}: bits 0x${dxBits[i].toString(16)}, expected 0x${bits[i].toString(16)}`,
    );
  }
});

Deno.test("dropout p one drops everything", async () => {
  const x = randomNonZero(1000, 4);
  const y = await gpuDropout(x, 1, 5, 6);
  for (let i = 0; i < y.length; i++) {
    assert(Object.is(y[i], 0), `element ${i} is ${y[i]}, expected +0`);
  }
});

Deno.test("dropout scale", async () => {
  // Dropout of ones returns exactly f32(1 / (1 - p)) at kept positions.
  const ones = new Float32Array(5000).fill(1);
  for (const p of [0.1, 0.25, 0.5, 0.75]) {
    const y = await gpuDropout(ones, p, 9, 1);
    const scale = Math.fround(1 / (1 - p));
    for (let i = 0; i < y.length; i++) {
      assert(
        y[i] === 0 || y[i] === scale,
        `p=${p}: element ${i} is ${y[i]}, expected 0 or ${scale}`,
      );
    }
  }
});

Deno.test("dropout same seed same mask", async () => {
  const x = randomNonZero(10007, 10);
  const first = maskOf(await gpuDropout(x, 0.4, 77, 3));
  const second = maskOf(await gpuDropout(x, 0.4, 77, 3));
  assertSameMask(second, first, "repeat");
});

Deno.test("dropout salt and seed change mask", async () => {
  const n = 100000, p = 0.5;
  const ones = new Float32Array(n).fill(1);
  const base = maskOf(await gpuDropout(ones, p, 1000, 1));
  const otherSalt = maskOf(await gpuDropout(ones, p, 1000, 2));
  const otherSeed = maskOf(await gpuDropout(ones, p, 1001, 1));
  const expected = p * p + (1 - p) * (1 - p);
  const tolerance = binomialTolerance(n, expected);
  const saltAgreement = agreement(base, otherSalt);
  const seedAgreement = agreement(base, otherSeed);
  console.log(
    `  agreement: other salt ${saltAgreement.toFixed(4)}, other seed ${
      seedAgreement.toFixed(4)
    }, expected ${expected} +- ${tolerance.toFixed(4)}`,
  );
  assert(
    Math.abs(saltAgreement - expected) <= tolerance,
    `masks for salts 1 and 2 agree on ${saltAgreement}, expected ${expected}`,
  );
  assert(
    Math.abs(seedAgreement - expected) <= tolerance,
    `masks for seeds 1000 and 1001 agree on ${seedAgreement}, expected ${expected}`,
  );
});

Deno.test("dropout seed read from buffer each call", async () => {
  // One seed tensor rewritten between calls, as a training step does: the uniform parameters stay
  // identical, so only a seed read from the storage buffer can change the mask.
  const n = 4096, p = 0.5;
  const x = fromArray(new Float32Array(n).fill(1), [n]);
  const seeds = seedTensor(21);
  const first = maskOf(await readAndDispose(dropout(x, p, seeds, 8)));
  upload(seeds, Uint32Array.of(22));
  const second = maskOf(await readAndDispose(dropout(x, p, seeds, 8)));
  x.dispose();
  seeds.dispose();
  assertSameMask(first, referenceMask(n, p, 21, 8), "seed 21");
  assertSameMask(second, referenceMask(n, p, 22, 8), "seed 22");
});

Deno.test("dropout kept fraction", async () => {
  const n = 100000;
  const ones = new Float32Array(n).fill(1);
  for (const p of [0.01, 0.1, 0.5, 0.9]) {
    const mask = maskOf(await gpuDropout(ones, p, 31337, 4));
    const fraction = keptCount(mask) / n;
    const tolerance = binomialTolerance(n, 1 - p);
    // Neighbouring elements must be independent too: both kept with probability (1 - p)^2.
    let pairs = 0;
    for (let i = 0; i + 1 < n; i += 2) pairs += mask[i] & mask[i + 1];
    const pairFraction = pairs / (n / 2);
    const pairTolerance = binomialTolerance(n / 2, (1 - p) ** 2);
    console.log(
      `  p=${p}: kept ${fraction.toFixed(4)} (expected ${1 - p} +- ${
        tolerance.toFixed(4)
      }), neighbours ${pairFraction.toFixed(4)} (expected ${((1 - p) ** 2).toFixed(4)} +- ${
        pairTolerance.toFixed(4)
      })`,
    );
    assert(
      Math.abs(fraction - (1 - p)) <= tolerance,
      `p=${p}: kept fraction ${fraction}, expected ${1 - p} +- ${tolerance}`,
    );
    assert(
      Math.abs(pairFraction - (1 - p) ** 2) <= pairTolerance,
      `p=${p}: neighbour pairs kept ${pairFraction}`,
    );
  }
});

Deno.test("dropout backward uses forward mask", async () => {
  const shape = [3, 5, 77];
  const n = 3 * 5 * 77;
  const x = randomNonZero(n, 40);
  const dy = randomNonZero(n, 41);
  const p = 0.2;
  const [y, dx] = tidy(() => {
    const seeds = seedTensor(99);
    return [
      dropout(fromArray(x, shape), p, seeds, 12),
      dropoutBackward(fromArray(dy, shape), p, seeds, 12),
    ];
  });
  const yMask = maskOf(await readAndDispose(y));
  const dxValues = await readAndDispose(dx);
  assertSameMask(maskOf(dxValues), yMask, "backward vs forward");
  assertClose(dxValues, referenceDropout(dy, yMask, p), 0, 2.5e-7, "backward values"); // one rounding each
});

Deno.test("dropout beyond one grid row", async () => {
  // More than 65535 workgroups of 256 elements, so the grid wraps into a second row.
  const n = 65535 * 256 + 1000;
  const p = 0.5;
  const y = await readAndDispose(
    tidy(() => dropout(fromArray(new Float32Array(n).fill(1), [n]), p, seedTensor(5), 6)),
  );
  assertSameMask(maskOf(y), referenceMask(n, p, 5, 6), "2-D grid");
});

Deno.test("dropout rejects invalid arguments", () => {
  tidy(() => {
    const x = fromArray(new Float32Array(4), [4]);
    const cases: [string, () => unknown, string][] = [
      ["p above 1", () => dropout(x, 1.5, seedTensor(1), 0), "[0, 1]"],
      ["p negative", () => dropout(x, -0.1, seedTensor(1), 0), "[0, 1]"],
      ["f32 seed", () => dropout(x, 0.5, fromArray([1], [1]), 0), "u32"],
      ["negative salt", () => dropoutBackward(x, 0.5, seedTensor(1), -1), "salt"],
    ];
    for (const [label, call, expected] of cases) {
      let message = "";
      try {
        call();
      } catch (e) {
        message = (e as Error).message;
      }
      assert(
        message.includes(expected),
        `${label}: expected an error containing "${expected}", got "${message}"`,
      );
    }
  });
});
