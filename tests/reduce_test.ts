import { rt } from "../engine/runtime.ts";
import { fromArray, Tensor, tidy } from "../engine/tensor.ts";
import { argmaxRows, logSoftmaxRows, rowChunks, sum, sumRows, sumSquares, topkRows } from "../kernels/reduce.ts";
import { assert, assertClose, gpuReady, randomArray } from "./testing.ts";

// A 1 MiB binding limit makes the row kernels split a few 50257-wide rows over several
// bindings, which real limits only do past 128 MiB. The variable is read once, when the device
// is created, and restored so that other test files keep the real limit.
const FORCED_BINDING_BYTES = 1 << 20;
const previousLimit = Deno.env.get("CLIP_CAPTIONER_MAX_BINDING");
Deno.env.set("CLIP_CAPTIONER_MAX_BINDING", String(FORCED_BINDING_BYTES));
await gpuReady();
if (previousLimit === undefined) Deno.env.delete("CLIP_CAPTIONER_MAX_BINDING");
else Deno.env.set("CLIP_CAPTIONER_MAX_BINDING", previousLimit);

const VOCAB = 50257; // GPT-2's vocabulary, the widest rows these kernels see

// ---- float64 references ----

function refSumRows(x: Float64Array, rows: number, cols: number): Float64Array {
  const out = new Float64Array(cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c] += x[r * cols + c];
  return out;
}

function refArgmax(x: ArrayLike<number>, rows: number, cols: number): Int32Array {
  const out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let c = 1; c < cols; c++) if (x[r * cols + c] > x[r * cols + best]) best = c;
    out[r] = best;
  }
  return out;
}

function refLogSoftmax(x: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let c = 0; c < cols; c++) m = Math.max(m, x[r * cols + c]);
    let s = 0;
    for (let c = 0; c < cols; c++) s += Math.exp(x[r * cols + c] - m);
    const logNorm = m + Math.log(s);
    for (let c = 0; c < cols; c++) out[r * cols + c] = x[r * cols + c] - logNorm;
  }
  return out;
}

// Sorts by value descending, then index ascending, and keeps the first k of each row.
function refTopk(x: ArrayLike<number>, rows: number, cols: number, k: number) {
  const values = new Float64Array(rows * k);
  const indices = new Int32Array(rows * k);
  for (let r = 0; r < rows; r++) {
    const order = Array.from({ length: cols }, (_, c) => c);
    order.sort((a, b) => x[r * cols + b] - x[r * cols + a] || a - b);
    for (let j = 0; j < k; j++) {
      values[r * k + j] = x[r * cols + order[j]];
      indices[r * k + j] = order[j];
    }
  }
  return { values, indices };
}

// Values on a coarse grid, so that rows contain many exact ties.
function tiedArray(n: number, seed: number, levels: number): Float64Array {
  return randomArray(n, seed, 0, levels).map(Math.floor);
}

// f32 round trip, so that references see exactly the values the GPU holds.
function asF32(x: Float64Array): Float64Array {
  return Float64Array.from(Float32Array.from(x));
}

function sumAbs(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += Math.abs(x[i]);
  return s;
}

async function readAndDispose(t: Tensor): Promise<Float32Array | Int32Array | Uint32Array> {
  const data = await t.toArray();
  t.dispose();
  return data;
}

function assertEqualInts(actual: ArrayLike<number>, expected: ArrayLike<number>, label: string): void {
  assert(actual.length === expected.length, `${label}: length ${actual.length}, expected ${expected.length}`);
  for (let i = 0; i < actual.length; i++) {
    assert(actual[i] === expected[i], `${label}: element ${i} is ${actual[i]}, expected ${expected[i]}`);
  }
}

// ---- setup ----

Deno.test("rowChunks forced binding limit", () => {
  assert(rt().gpu.maxBindingBytes === FORCED_BINDING_BYTES, `binding limit is ${rt().gpu.maxBindingBytes}, so chunking is not exercised`);
  const chunks = rowChunks(13, VOCAB);
  assert(chunks.length > 1, `13 rows of ${VOCAB} should need several chunks, got ${chunks.length}`);
  let next = 0;
  for (const c of chunks) {
    assert(c.row0 === next, `chunk starts at row ${c.row0}, expected ${next}`);
    assert(c.byteSize <= FORCED_BINDING_BYTES, `chunk of ${c.byteSize} bytes exceeds the limit`);
    assert(c.byteOffset % rt().device.limits.minStorageBufferOffsetAlignment === 0, `unaligned offset ${c.byteOffset}`);
    assert(c.byteOffset + c.elementOffset * 4 === c.row0 * VOCAB * 4, `chunk at row ${c.row0} points at the wrong element`);
    next += c.rows;
  }
  assert(next === 13, `chunks cover ${next} rows, expected 13`);
});

// ---- sumRows ----

for (const [rows, cols] of [[1, 1], [130, 37], [1, VOCAB], [3, VOCAB], [1000, 1], [9, 32]]) {
  Deno.test(`sumRows ${rows}x${cols}`, async () => {
    const x = asF32(randomArray(rows * cols, rows + cols));
    const expected = refSumRows(x, rows, cols);
    const actual = await readAndDispose(tidy(() => sumRows(fromArray(x, [rows, cols]))));
    // f32 sums of at most 1000 terms of magnitude <= 1: error below 1000 * 6e-8 * 1000 / 8.
    assertClose(actual, expected, 1e-4, 1e-5, `sumRows ${rows}x${cols}`);
  });
}

Deno.test("sumRows leading dimensions", async () => {
  const x = asF32(randomArray(2 * 5 * 7, 11));
  const expected = refSumRows(x, 10, 7);
  const actual = await readAndDispose(tidy(() => sumRows(fromArray(x, [2, 5, 7]))));
  assertClose(actual, expected, 1e-6, 1e-6, "sumRows [2,5,7]"); // 10 terms of size <= 1
});

// ---- sum and sumSquares ----

for (const n of [1, 255, 1000, 3 * VOCAB]) {
  Deno.test(`sum ${n} elements`, async () => {
    const x = asF32(randomArray(n, n));
    const expected = x.reduce((a, b) => a + b, 0);
    const actual = await readAndDispose(tidy(() => sum(fromArray(x, [n]))));
    // f32 accumulation error grows with the sum of magnitudes, not with the (cancelling) sum.
    assertClose(actual, [expected], 1e-6 * sumAbs(x) + 1e-7, 0, `sum ${n}`);
  });
}

Deno.test("sumSquares tensor list", async () => {
  const sizes = [1, 37, 1000, VOCAB];
  const arrays = sizes.map((n, i) => asF32(randomArray(n, 100 + i)));
  let expected = 0;
  for (const a of arrays) for (const v of a) expected += v * v;
  const actual = await readAndDispose(tidy(() => sumSquares(arrays.map((a, i) => fromArray(a, [sizes[i]])))));
  // Positive terms only: relative error of an f32 sum over ~200 terms per thread plus the tree.
  assertClose(actual, [expected], 0, 2e-6, "sumSquares");
});

Deno.test("sumSquares empty list", async () => {
  const actual = await readAndDispose(tidy(() => sumSquares([])));
  assertClose(actual, [0], 0, 0, "sumSquares []"); // defined as exactly 0
});

Deno.test("sum deterministic", async () => {
  const x = randomArray(3 * VOCAB, 5, -1000, 1000);
  const first = await readAndDispose(tidy(() => sumSquares([fromArray(x, [x.length])])));
  const second = await readAndDispose(tidy(() => sumSquares([fromArray(x, [x.length])])));
  assert(first[0] === second[0], `two runs differ: ${first[0]} and ${second[0]}`);
});

// ---- argmaxRows ----

const rowCases: [number, number, string][] = [
  [1, 1, "one element"],
  [130, 37, "130 rows"],
  [1, VOCAB, "one vocabulary row"],
  [13, VOCAB, "chunked vocabulary rows"],
];

for (const [rows, cols, name] of rowCases) {
  Deno.test(`argmaxRows ${name}`, async () => {
    const x = asF32(randomArray(rows * cols, rows * 7 + cols, -5, 5));
    const actual = await readAndDispose(tidy(() => argmaxRows(fromArray(x, [rows, cols]))));
    assertEqualInts(actual, refArgmax(x, rows, cols), `argmax ${rows}x${cols}`);
  });
}

Deno.test("argmaxRows ties lowest index", async () => {
  const rows = 130, cols = 37;
  const x = tiedArray(rows * cols, 3, 4); // values 0..3, so every row has tied maxima
  const actual = await readAndDispose(tidy(() => argmaxRows(fromArray(x, [rows, cols]))));
  assertEqualInts(actual, refArgmax(x, rows, cols), "argmax ties");
});

Deno.test("argmaxRows wide row tie", async () => {
  // The maximum appears at two columns handled by different threads and at the row's end.
  const x = new Float64Array(2 * VOCAB);
  x[300] = 1; x[40000] = 1; x[VOCAB - 1] = 1;
  x[VOCAB + VOCAB - 1] = 2; x[VOCAB + 5] = 2;
  const actual = await readAndDispose(tidy(() => argmaxRows(fromArray(x, [2, VOCAB]))));
  assertEqualInts(actual, [300, 5], "argmax wide tie");
});

Deno.test("argmaxRows batch shape", async () => {
  const x = asF32(randomArray(2 * 3 * 11, 8));
  const out = tidy(() => argmaxRows(fromArray(x, [2, 3, 11])));
  assert(out.shape.join() === "2,3", `shape [${out.shape}], expected [2, 3]`);
  assert(out.dtype === "i32", `dtype ${out.dtype}`);
  assertEqualInts(await readAndDispose(out), refArgmax(x, 6, 11), "argmax [2,3,11]");
});

// ---- logSoftmaxRows ----

for (const [rows, cols, name] of rowCases) {
  Deno.test(`logSoftmaxRows ${name}`, async () => {
    const x = asF32(randomArray(rows * cols, rows * 3 + cols, -10, 10));
    const actual = await readAndDispose(tidy(() => logSoftmaxRows(fromArray(x, [rows, cols]))));
    // Values reach -20 - log(C) ~ -31; f32 rounding of the log-normaliser and the subtraction.
    assertClose(actual, refLogSoftmax(x, rows, cols), 2e-5, 1e-6, `logSoftmax ${rows}x${cols}`);
  });
}

Deno.test("logSoftmaxRows large logits", async () => {
  // exp(1000) overflows f32; subtracting the row maximum first keeps it finite.
  const rows = 3, cols = 70;
  const x = asF32(randomArray(rows * cols, 21, 990, 1000));
  const actual = await readAndDispose(tidy(() => logSoftmaxRows(fromArray(x, [rows, cols]))));
  // Inputs near 1000 carry an f32 spacing of 6e-5, which the difference x - logNorm inherits.
  assertClose(actual, refLogSoftmax(x, rows, cols), 2e-4, 0, "logSoftmax large");
});

// ---- topkRows ----

const topkCases: [number, number, number, string][] = [
  [1, 1, 1, "one element"],
  [130, 37, 5, "130 rows"],
  [2, 37, 37, "k equals columns"],
  [2, VOCAB, 64, "vocabulary k 64"],
  [11, VOCAB, 3, "chunked vocabulary rows"],
];

for (const [rows, cols, k, name] of topkCases) {
  Deno.test(`topkRows ${name}`, async () => {
    const x = asF32(randomArray(rows * cols, rows + 13 * cols + k));
    const { values, indices } = tidy(() => topkRows(fromArray(x, [rows, cols]), k));
    const expected = refTopk(x, rows, cols, k);
    // Values are copied, not computed, so they must match exactly.
    assertClose(await readAndDispose(values), expected.values, 0, 0, `topk values ${name}`);
    assertEqualInts(await readAndDispose(indices), expected.indices, `topk indices ${name}`);
  });
}

Deno.test("topkRows ties", async () => {
  const rows = 130, cols = 37, k = 12;
  const x = tiedArray(rows * cols, 9, 3); // values 0..2: each row has long runs of ties
  const { values, indices } = tidy(() => topkRows(fromArray(x, [rows, cols]), k));
  const expected = refTopk(x, rows, cols, k);
  assertClose(await readAndDispose(values), expected.values, 0, 0, "topk tie values");
  assertEqualInts(await readAndDispose(indices), expected.indices, "topk tie indices");
});

Deno.test("topkRows invalid k", () => {
  let message = "";
  tidy(() => {
    try {
      topkRows(fromArray(new Float32Array(6), [2, 3]), 4);
    } catch (error) {
      message = (error as Error).message;
    }
  });
  assert(message.includes("k = 4"), `expected an error naming k = 4, got "${message}"`);
});
