import { fromArray, tidy } from "../engine/tensor.ts";
import { softmax, softmaxBackward } from "../kernels/softmax.ts";
import { assert, assertClose, dot, finiteDifferences, gpuReady, randomArray } from "./testing.ts";

await gpuReady();

interface Layout {
  batch: number;
  heads: number;
  tq: number;
  tk: number;
}

interface MaskOptions {
  causal?: boolean;
  mask?: Float64Array | null; // (batch, tk), nonzero = real key
  scale?: number;
}

const rowCount = (l: Layout) => l.batch * l.heads * l.tq;

// float64 reference: a key j is visible to query q when (not causal or j <= q + tk - tq) and
// the padding mask of the row's batch entry is nonzero there. Rows with no visible key are 0.
function referenceSoftmax(x: ArrayLike<number>, l: Layout, o: MaskOptions = {}): Float64Array {
  const scale = o.scale ?? 1;
  const y = new Float64Array(x.length);
  for (let r = 0; r < rowCount(l); r++) {
    const q = r % l.tq;
    const b = Math.floor(r / (l.tq * l.heads));
    const visible = (j: number) =>
      (!o.causal || j <= q + l.tk - l.tq) && (!o.mask || o.mask[b * l.tk + j] !== 0);
    let max = -Infinity;
    for (let j = 0; j < l.tk; j++) if (visible(j)) max = Math.max(max, scale * x[r * l.tk + j]);
    if (max === -Infinity) continue;
    let sum = 0;
    for (let j = 0; j < l.tk; j++) if (visible(j)) sum += Math.exp(scale * x[r * l.tk + j] - max);
    for (let j = 0; j < l.tk; j++) {
      if (visible(j)) y[r * l.tk + j] = Math.exp(scale * x[r * l.tk + j] - max) / sum;
    }
  }
  return y;
}

// float64 reference gradient with respect to the unscaled input: scale * y * (dy - sum(dy * y)).
function referenceSoftmaxBackward(
  y: Float64Array,
  dy: ArrayLike<number>,
  cols: number,
  scale = 1,
): Float64Array {
  const dx = new Float64Array(y.length);
  for (let r = 0; r < y.length / cols; r++) {
    let s = 0;
    for (let j = 0; j < cols; j++) s += y[r * cols + j] * dy[r * cols + j];
    for (let j = 0; j < cols; j++) {
      dx[r * cols + j] = scale * y[r * cols + j] * (dy[r * cols + j] - s);
    }
  }
  return dx;
}

// Random f32 values, returned in float64 so that the reference gets exactly the GPU's inputs.
function randomF32(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  return Float64Array.from(Float32Array.from(randomArray(n, seed, lo, hi)));
}

function gpuSoftmax(
  x: Float64Array,
  shape: number[],
  o: MaskOptions & { heads?: number } = {},
): Promise<Float32Array> {
  const out = tidy(() =>
    softmax(fromArray(x, shape), {
      causal: o.causal,
      scale: o.scale,
      heads: o.heads,
      keyPaddingMask: o.mask
        ? fromArray(o.mask, [o.mask.length / shape[shape.length - 1], shape[shape.length - 1]])
        : null,
    })
  );
  return out.toFloat32().finally(() => out.dispose());
}

function gpuSoftmaxBackward(
  y: Float64Array,
  dy: Float64Array,
  shape: number[],
  scale = 1,
): Promise<Float32Array> {
  const out = tidy(() => softmaxBackward(fromArray(y, shape), fromArray(dy, shape), { scale }));
  return out.toFloat32().finally(() => out.dispose());
}

function assertRowZeros(y: ArrayLike<number>, row: number, cols: number, label: string): void {
  for (let j = 0; j < cols; j++) {
    assert(
      y[row * cols + j] === 0,
      `${label}: row ${row} element ${j} is ${y[row * cols + j]}, expected 0`,
    );
  }
}

// Checks the GPU forward and backward against the reference, and the reference backward against
// finite differences of the reference forward when the input is small enough.
async function checkSoftmax(
  label: string,
  shape: number[],
  l: Layout,
  o: MaskOptions & { heads?: number },
  seed: number,
) {
  const n = rowCount(l) * l.tk;
  const x = randomF32(n, seed, -4, 4);
  const dy = randomF32(n, seed + 1);
  const scale = o.scale ?? 1;

  const expected = referenceSoftmax(x, l, o);
  // Outputs lie in [0, 1]. f32 exp and a sum over up to 50257 terms stay within 1e-6 absolute
  // and 1e-4 relative of float64.
  assertClose(await gpuSoftmax(x, shape, o), expected, 1e-6, 1e-4, `${label} forward`);

  const expectedDx = referenceSoftmaxBackward(expected, dy, l.tk, scale);
  // The GPU backward starts from the float64 y rounded to f32 and takes the row dot product in f32.
  assertClose(
    await gpuSoftmaxBackward(expected, dy, shape, scale),
    expectedDx,
    1e-6,
    1e-4,
    `${label} backward`,
  );

  if (n <= 2000) {
    const numeric = finiteDifferences((v) => dot(referenceSoftmax(v, l, o), dy), x);
    // Central differences with eps 1e-6 on float64 are accurate to about 1e-9 here.
    assertClose(
      expectedDx,
      numeric,
      1e-7,
      1e-6,
      `${label} reference backward vs finite differences`,
    );
  }
}

const plain = (rows: number, cols: number): Layout => ({ batch: 1, heads: 1, tq: rows, tk: cols });

Deno.test("softmax single element", async () => {
  await checkSoftmax("1x1", [1, 1], plain(1, 1), {}, 10);
});

Deno.test("softmax one row", async () => {
  await checkSoftmax("1x37", [1, 37], plain(1, 37), { scale: 0.5 }, 11);
  await checkSoftmax("1-D 37", [37], plain(1, 37), {}, 12);
});

Deno.test("softmax plain shapes", async () => {
  // 31, 32, 33 straddle the narrow workgroup, and 1024, 1025 straddle the switch to the wide one.
  const shapes = [[5, 31], [3, 32], [4, 33], [2, 129], [2, 300], [3, 1024], [2, 1025], [3, 1100]];
  for (const [rows, cols] of shapes) {
    await checkSoftmax(
      `${rows}x${cols}`,
      [rows, cols],
      plain(rows, cols),
      { scale: 0.125 },
      rows * 1000 + cols,
    );
  }
});

Deno.test("softmax vocabulary-wide rows", async () => {
  await checkSoftmax("2x50257", [2, 50257], plain(2, 50257), {}, 13);
});

Deno.test("softmax large scores", async () => {
  // exp(1000) overflows f32, so only a max-subtracted softmax gets these right.
  const l = plain(3, 50);
  const x = randomF32(150, 14, 995, 1005);
  assertClose(await gpuSoftmax(x, [3, 50]), referenceSoftmax(x, l), 1e-6, 1e-4, "large scores"); // as above
});

Deno.test("softmax causal square", async () => {
  const l = { batch: 2, heads: 3, tq: 7, tk: 7 };
  await checkSoftmax("causal 2x3x7x7", [2, 3, 7, 7], l, { causal: true, scale: 0.5 }, 15);
});

Deno.test("softmax causal key-value cache block", async () => {
  // Tq queries at the end of Tk keys: query i attends to keys up to i + Tk - Tq.
  await checkSoftmax("causal 1x2x3x10", [1, 2, 3, 10], { batch: 1, heads: 2, tq: 3, tk: 10 }, {
    causal: true,
  }, 16);
  // One decoding step attends to every key.
  await checkSoftmax("causal 2x1x1x77", [2, 1, 1, 77], { batch: 2, heads: 1, tq: 1, tk: 77 }, {
    causal: true,
  }, 17);
  // Rows wider than the wide workgroup, so the causal limit cuts inside a stride.
  await checkSoftmax(
    "causal 1x1x4x1500",
    [1, 1, 4, 1500],
    { batch: 1, heads: 1, tq: 4, tk: 1500 },
    { causal: true },
    18,
  );
});

Deno.test("softmax causal fully masked row", async () => {
  // With more queries than keys, query i attends to keys j <= i - 2, so queries 0 and 1 have none.
  const l = { batch: 1, heads: 1, tq: 5, tk: 3 };
  const x = randomF32(15, 19);
  const y = await gpuSoftmax(x, [5, 3], { causal: true });
  assertRowZeros(y, 0, 3, "causal 5x3");
  assertRowZeros(y, 1, 3, "causal 5x3");
  assertClose(y, referenceSoftmax(x, l, { causal: true }), 1e-6, 1e-4, "causal 5x3 forward"); // as above
  await checkSoftmax("causal 5x3", [5, 3], l, { causal: true }, 19);
});

Deno.test("softmax key padding mask", async () => {
  // Batch entry 0 pads its last 3 keys, entry 1 pads keys 0 and 4, entry 2 has none.
  const l = { batch: 3, heads: 2, tq: 4, tk: 9 };
  const mask = new Float64Array(27).fill(1);
  mask.fill(0, 6, 9);
  mask[9] = 0;
  mask[13] = 0;
  await checkSoftmax("mask 3x2x4x9", [3, 2, 4, 9], l, { mask, scale: 0.25 }, 20);
  await checkSoftmax("mask+causal 3x2x4x9", [3, 2, 4, 9], l, { mask, causal: true }, 21);
  // Heads given explicitly for a 3-D (batch * heads, Tq, Tk) input.
  await checkSoftmax("mask 3-D heads=2", [6, 4, 9], l, { mask, heads: 2 }, 22);
});

Deno.test("softmax key padding fully masked row", async () => {
  // Entry 1 is all padding, and with the causal mask query 0 of entry 0 has only padded key 0.
  const l = { batch: 2, heads: 2, tq: 3, tk: 3 };
  const mask = Float64Array.from([0, 1, 1, 0, 0, 0]);
  const x = randomF32(36, 23);
  const y = await gpuSoftmax(x, [2, 2, 3, 3], { mask, causal: true });
  for (const row of [0, 3, 6, 7, 8, 9, 10, 11]) assertRowZeros(y, row, 3, "fully masked");
  assertClose(
    y,
    referenceSoftmax(x, l, { mask, causal: true }),
    1e-6,
    1e-4,
    "fully masked forward",
  ); // as above
  await checkSoftmax("fully masked", [2, 2, 3, 3], l, { mask, causal: true }, 23);
});

Deno.test("softmax key padding mask wide rows", async () => {
  const tk = 2000;
  const mask = new Float64Array(2 * tk).fill(1);
  for (let j = 0; j < tk; j += 7) mask[j] = 0;
  mask.fill(0, tk + 1500, 2 * tk);
  await checkSoftmax(
    "mask 2x1x2x2000",
    [2, 1, 2, tk],
    { batch: 2, heads: 1, tq: 2, tk },
    { mask },
    24,
  );
});

Deno.test("softmax rejects mismatched shapes", () => {
  tidy(() => {
    const x = fromArray(new Float32Array(24), [2, 3, 1, 4]);
    let message = "";
    try {
      softmax(x, { keyPaddingMask: fromArray(new Float32Array(12), [3, 4]) });
    } catch (e) {
      message = (e as Error).message;
    }
    assert(
      message.includes("keyPaddingMask"),
      `expected a keyPaddingMask shape error, got "${message}"`,
    );

    message = "";
    try {
      softmax(x.view([6, 1, 4]), { heads: 4 });
    } catch (e) {
      message = (e as Error).message;
    }
    assert(message.includes("heads=4"), `expected a heads error, got "${message}"`);

    message = "";
    try {
      softmaxBackward(x, fromArray(new Float32Array(24), [6, 4]));
    } catch (e) {
      message = (e as Error).message;
    }
    assert(message.includes("differ"), `expected a shape mismatch error, got "${message}"`);
  });
});
