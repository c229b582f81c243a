import { rt } from "../engine/runtime.ts";
import { fromArray, Tensor, tidy } from "../engine/tensor.ts";
import { embedding, embeddingBackward } from "../kernels/embedding.ts";
import { assert, assertClose, dot, finiteDifferences, gpuReady, randomArray } from "./testing.ts";
import { asF32, randomIds, readAndDispose, refGather, refScatter } from "./embedding_reference.ts";

await gpuReady();

const VOCAB = 50257; // GPT-2's vocabulary

// ---- float64 references ----


function assertBitwiseEqual(actual: Float32Array, expected: Float32Array, label: string): void {
  assert(actual.length === expected.length, `${label}: length ${actual.length}, expected ${expected.length}`);
  const a = new Uint32Array(actual.buffer, actual.byteOffset, actual.length);
  const e = new Uint32Array(expected.buffer, expected.byteOffset, expected.length);
  for (let i = 0; i < a.length; i++) {
    assert(a[i] === e[i], `${label}: element ${i} is ${actual[i]}, expected ${expected[i]}`);
  }
}

// ---- reference checked against finite differences ----

Deno.test("embedding reference gradient", () => {
  const vocab = 11, dim = 5;
  const ids = Int32Array.from([3, 0, 3, 10, 7, 3, 0, 9, 10]); // ids 3, 0 and 10 repeat
  const table = randomArray(vocab * dim, 1);
  const weights = randomArray(ids.length * dim, 2);
  const numeric = finiteDifferences((t) => dot(refGather(ids, t, vocab, dim), weights), table);
  // The lookup is linear, so central differences are exact up to rounding near 1e-10.
  assertClose(refScatter(ids, weights, dim, 0, vocab), numeric, 1e-8, 0, "reference vs finite differences");
});

// ---- GPU against the reference ----

const cases: { shape: number[]; vocab: number; dim: number; name: string }[] = [
  { shape: [1], vocab: 5, dim: 3, name: "one token" },
  { shape: [40], vocab: 7, dim: 70, name: "repeated ids D=70" }, // 40 ids over 7 rows
  { shape: [3, 13], vocab: 20, dim: 300, name: "batch D=300" }, // D above one workgroup
  { shape: [2, 37], vocab: VOCAB, dim: 8, name: "vocabulary D=8" },
  { shape: [9], vocab: 4, dim: 1, name: "D=1" },
];

for (const { shape, vocab, dim, name } of cases) {
  const n = shape.reduce((a, b) => a * b, 1);

  Deno.test(`embedding forward ${name}`, async () => {
    const ids = randomIds(n, vocab, n + vocab);
    ids[0] = vocab - 1; // the last row, where an off-by-one read would leave the table
    const table = asF32(randomArray(vocab * dim, vocab + dim));
    const out = tidy(() => embedding(fromArray(ids, shape, "i32"), fromArray(table, [vocab, dim])));
    assert(out.shape.join() === [...shape, dim].join(), `shape [${out.shape}], expected [${[...shape, dim]}]`);
    // A copy of f32 values: exact.
    assertClose(await readAndDispose(out), refGather(ids, table, vocab, dim), 0, 0, `forward ${name}`);
  });

  Deno.test(`embedding backward ${name}`, async () => {
    const ids = randomIds(n, vocab, 2 * n + vocab);
    ids[n - 1] = vocab - 1;
    const dOut = asF32(randomArray(n * dim, 7 * n + dim));
    const grad = tidy(() => embeddingBackward(fromArray(ids, shape, "i32"), fromArray(dOut, [...shape, dim]), vocab));
    assert(grad.shape.join() === [vocab, dim].join(), `shape [${grad.shape}], expected [${vocab}, ${dim}]`);
    const actual = await readAndDispose(grad);
    // At most 40 f32 terms of size <= 1 per element.
    assertClose(actual, refScatter(ids, dOut, dim, 0, vocab), 1e-5, 1e-6, `backward ${name}`);
    const used = new Set(ids);
    for (let v = 0; v < vocab; v++) {
      if (used.has(v)) continue;
      for (let d = 0; d < dim; d++) assert(actual[v * dim + d] === 0, `unused row ${v} holds ${actual[v * dim + d]}`);
    }
  });
}

Deno.test("embedding backward deterministic", async () => {
  const vocab = 3, dim = 33, n = 500; // many repeats of each id
  const ids = randomIds(n, vocab, 3);
  const dOut = randomArray(n * dim, 4, -100, 100);
  const run = () => tidy(() => embeddingBackward(fromArray(ids, [n], "i32"), fromArray(dOut, [n, dim]), vocab));
  const first = await readAndDispose(run());
  const second = await readAndDispose(run());
  assertBitwiseEqual(second, first, "two runs");
  // About 170 f32 terms of size <= 100 per element.
  assertClose(first, refScatter(ids, asF32(dOut), dim, 0, vocab), 2e-3, 1e-5, "repeated ids");
});

// ---- chunked tables ----

// GPT-2's table split along V as a model would split it to fit bindings; the last chunk is short.
const CHUNK_ROWS = [20000, 20000, VOCAB - 40000];

Deno.test("embedding chunked gather", async () => {
  const dim = 8, shape = [2, 37];
  const ids = randomIds(74, VOCAB, 5);
  ids[0] = 0; ids[1] = 19999; ids[2] = 20000; ids[3] = VOCAB - 1; // chunk edges
  const table = asF32(randomArray(VOCAB * dim, 6));
  const [whole, chunked] = tidy(() => {
    const idsT = fromArray(ids, shape, "i32");
    const whole = embedding(idsT, fromArray(table, [VOCAB, dim]));
    let offset = 0;
    let out: Tensor | undefined;
    for (const rows of CHUNK_ROWS) {
      const chunk = fromArray(table.subarray(offset * dim, (offset + rows) * dim), [rows, dim]);
      out = embedding(idsT, chunk, { rowOffset: offset, out });
      offset += rows;
    }
    return [whole, out!];
  });
  assertBitwiseEqual(await readAndDispose(chunked), await readAndDispose(whole), "chunked vs whole");
});

Deno.test("embedding chunked backward", async () => {
  const dim = 8, n = 60;
  const ids = randomIds(n, VOCAB, 7);
  ids[0] = 19999; ids[1] = 20000; ids[2] = 20000; ids[3] = VOCAB - 1;
  const dOut = asF32(randomArray(n * dim, 8));
  const whole = await readAndDispose(tidy(() => embeddingBackward(fromArray(ids, [n], "i32"), fromArray(dOut, [n, dim]), VOCAB)));
  let offset = 0;
  for (const rows of CHUNK_ROWS) {
    const grad = tidy(() => embeddingBackward(fromArray(ids, [n], "i32"), fromArray(dOut, [n, dim]), VOCAB, { rowOffset: offset, rows }));
    assert(grad.shape.join() === [rows, dim].join(), `chunk shape [${grad.shape}]`);
    assertBitwiseEqual(await readAndDispose(grad), whole.subarray(offset * dim, (offset + rows) * dim), `chunk at ${offset}`);
    offset += rows;
  }
});

Deno.test("embedding missing ids are NaN", async () => {
  const vocab = 6, dim = 4;
  const ids = Int32Array.from([2, -1, 6, 5, 100]);
  const table = asF32(randomArray(vocab * dim, 9));
  const out = await readAndDispose(tidy(() => embedding(fromArray(ids, [5], "i32"), fromArray(table, [vocab, dim]))));
  assertClose(out, refGather(ids, table, vocab, dim), 0, 0, "out-of-range ids"); // copies only: exact
  // assertClose accepts any value where NaN is expected, so the NaN rows are checked here.
  for (const n of [1, 2, 4]) {
    for (let d = 0; d < dim; d++) assert(Number.isNaN(out[n * dim + d]), `row of id ${ids[n]} holds ${out[n * dim + d]}, expected NaN`);
  }
});

Deno.test("embedding chunk leaves other rows", async () => {
  // With `out`, rows whose ids fall outside the chunk keep their previous contents.
  const dim = 3;
  const ids = Int32Array.from([0, 4, 5, 9]);
  const chunk = asF32(randomArray(3 * dim, 10)); // rows 4..6 of some table
  const before = randomArray(4 * dim, 11);
  const out = await readAndDispose(tidy(() => {
    const out = fromArray(before, [4, dim]);
    return embedding(fromArray(ids, [4], "i32"), fromArray(chunk, [3, dim]), { rowOffset: 4, out });
  }));
  const expected = Float64Array.from(Float32Array.from(before));
  expected.set(chunk.subarray(0, dim), dim); // id 4 is chunk row 0
  expected.set(chunk.subarray(dim, 2 * dim), 2 * dim); // id 5 is chunk row 1
  assertClose(out, expected, 0, 0, "partial chunk write"); // copies only: exact
});

Deno.test("embedding backward ignores ids outside", async () => {
  const vocab = 5, dim = 2;
  const ids = Int32Array.from([-1, 1, 5, 1]);
  const dOut = asF32(randomArray(4 * dim, 12));
  const grad = await readAndDispose(tidy(() => embeddingBackward(fromArray(ids, [4], "i32"), fromArray(dOut, [4, dim]), vocab)));
  assertClose(grad, refScatter(ids, dOut, dim, 0, vocab), 1e-7, 0, "ids -1 and 5 skipped"); // two-term sums
});

// ---- GPT-2's table at the adapter's binding limit ----

// GPT-2's token embedding (50257 x 768, 154 MB) exceeds the 128 MiB binding limit of common
// adapters, so one table tensor is bound as several windows of rows.
const GPT2_WIDTH = 768;

// Uniform values in [-1, 1) as f32, without the float64 copy that randomArray would make.
function randomF32(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = (s >>> 0) / 2147483648 - 1;
  }
  return out;
}

// Rows per binding window of a table of this width, where the first window ends.
function windowRows(dim: number): number {
  const alignment = rt().device.limits.minStorageBufferOffsetAlignment;
  return Math.floor((rt().gpu.maxBindingBytes - alignment) / (dim * 4));
}

Deno.test("embedding GPT-2 table gather", async () => {
  const dim = GPT2_WIDTH, n = 96;
  assert(VOCAB * dim * 4 > rt().gpu.maxBindingBytes, `the table fits one binding of ${rt().gpu.maxBindingBytes} bytes`);
  const edge = windowRows(dim);
  const ids = randomIds(n, VOCAB, 13);
  ids.set([0, edge - 1, edge, VOCAB - 1, edge, -1]); // window edges, a repeat and an id outside
  const table = randomF32(VOCAB * dim, 14);
  const out = await readAndDispose(tidy(() => embedding(fromArray(ids, [n], "i32"), fromArray(table, [VOCAB, dim]))));
  assertClose(out, refGather(ids, table, VOCAB, dim), 0, 0, "GPT-2 table"); // copies: exact
  for (let d = 0; d < dim; d++) assert(Number.isNaN(out[5 * dim + d]), `row of id -1 holds ${out[5 * dim + d]}, expected NaN`);
});

Deno.test("embedding GPT-2 table backward", async () => {
  const dim = GPT2_WIDTH, n = 96;
  const edge = windowRows(dim);
  const ids = randomIds(n, VOCAB, 15);
  ids.set([edge - 1, edge, edge, VOCAB - 1]); // window edges and a repeat
  const dOut = randomF32(n * dim, 16);
  const grad = tidy(() => embeddingBackward(fromArray(ids, [n], "i32"), fromArray(dOut, [n, dim]), VOCAB));
  const actual = await readAndDispose(grad);
  // Sums of at most a few f32 terms of size <= 1.
  assertClose(actual, refScatter(ids, dOut, dim, 0, VOCAB), 1e-6, 1e-6, "GPT-2 gradient");
});
