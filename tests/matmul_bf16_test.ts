import { fromArray, type Tensor, tidy } from "../engine/tensor.ts";
import {
  type Bf16Weight,
  embeddingBf16,
  matmulBf16Weight,
  matmulBf16WeightBackwardInput,
  packBf16,
  planBf16Blocks,
  unpackBf16,
  uploadBf16,
  uploadBf16Bytes,
} from "../kernels/matmul_bf16.ts";
import { maxWindowElements } from "../kernels/common.ts";
import { assert, assertClose, dot, finiteDifferences, gpuReady, randomArray } from "./testing.ts";

// A 256 KiB binding limit makes vocabulary-sized weights (50257 rows) and rows of 5001 values
// split into several bindings, which real limits only do past 128 MiB. The variable is read once,
// when the device is created, and restored so that other test files keep the real limit.
const FORCED_BINDING_BYTES = 256 * 1024;
const previousLimit = Deno.env.get("CLIP_CAPTIONER_MAX_BINDING");
Deno.env.set("CLIP_CAPTIONER_MAX_BINDING", String(FORCED_BINDING_BYTES));
await gpuReady();
if (previousLimit === undefined) Deno.env.delete("CLIP_CAPTIONER_MAX_BINDING");
else Deno.env.set("CLIP_CAPTIONER_MAX_BINDING", previousLimit);

const VOCAB = 50257; // GPT-2's vocabulary, as wide as the rows these kernels see in tests

// ---- float64 references ----

// bf16 rounding without bit tricks: of the two bf16 neighbours of x, the nearer one, ties to the
// one with an even mantissa. Returns the 16-bit pattern.
function referenceBf16Bits(x: number): number {
  const f32 = new Float32Array([x]);
  const bits = new Uint32Array(f32.buffer)[0];
  if (Number.isNaN(f32[0])) return 0x7fc0 | ((bits >>> 16) & 0x8000);
  const down = bits >>> 16; // same sign, magnitude truncated
  const up = down + 1; // next bf16 away from zero; 0x7f80 / 0xff80 is infinity
  if ((bits & 0xffff) === 0) return down;
  const lowValue = Math.abs(bf16Value(down));
  // Past the largest finite bf16, the next step away from zero is 2^128, as if the exponent
  // continued, so that values round to infinity from halfway on.
  const highValue = (up & 0x7fff) === 0x7f80 ? 2 ** 128 : Math.abs(bf16Value(up));
  const magnitude = Math.abs(f32[0]);
  const below = magnitude - lowValue;
  const above = highValue - magnitude;
  if (below < above) return down;
  if (above < below) return up;
  return (down & 1) === 0 ? down : up;
}

function bf16Value(bits16: number): number {
  const f32 = new Float32Array(new Uint32Array([(bits16 << 16) >>> 0]).buffer);
  return f32[0];
}

// Rounds values to bf16, as the packed weights store them.
function roundedBf16(values: Float64Array): Float64Array {
  return values.map((v) => bf16Value(referenceBf16Bits(v)));
}

// C = A @ op(W) (+ bias), with W stored rows x cols and op(W) = W^T when transW.
function referenceProduct(
  a: Float64Array,
  w: Float64Array,
  bias: Float64Array | null,
  M: number,
  rows: number,
  cols: number,
  transW: boolean,
): Float64Array {
  const N = transW ? rows : cols;
  const K = transW ? cols : rows;
  const c = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = bias ? bias[j] : 0;
      for (let k = 0; k < K; k++) {
        s += a[i * K + k] * (transW ? w[j * cols + k] : w[k * cols + j]);
      }
      c[i * N + j] = s;
    }
  }
  return c;
}

// Gradient of sum(dy * (x @ op(W) + bias)) with respect to x: dy @ op(W)^T.
function referenceBackwardInput(
  dy: Float64Array,
  w: Float64Array,
  M: number,
  rows: number,
  cols: number,
  transW: boolean,
): Float64Array {
  const N = transW ? rows : cols;
  const K = transW ? cols : rows;
  const dx = new Float64Array(M * K);
  for (let i = 0; i < M; i++) {
    for (let k = 0; k < K; k++) {
      let s = 0;
      for (let j = 0; j < N; j++) s += dy[i * N + j] * (transW ? w[j * cols + k] : w[k * cols + j]);
      dx[i * K + k] = s;
    }
  }
  return dx;
}

// ---- GPU helpers ----

async function readAndDispose(t: Tensor): Promise<Float32Array> {
  const values = await t.toFloat32();
  t.dispose();
  return values;
}

async function readWords(w: Bf16Weight): Promise<Uint32Array> {
  const words = await w.tensor.toArray();
  w.tensor.dispose();
  return words as Uint32Array;
}

interface ProductCase {
  lead: number[]; // leading dimensions of x, whose product is M
  rows: number; // W is stored rows x cols
  cols: number;
  transB: boolean;
  bias: boolean;
}

// Runs the forward and the input backward on the GPU and compares both with the references.
async function checkProduct(
  label: string,
  c: ProductCase,
  seed: number,
  atol: number,
  rtol: number,
): Promise<void> {
  const M = c.lead.reduce((x, y) => x * y, 1);
  const N = c.transB ? c.rows : c.cols;
  const K = c.transB ? c.cols : c.rows;
  const weights = Float32Array.from(randomArray(c.rows * c.cols, seed));
  const rounded = roundedBf16(Float64Array.from(weights));
  const x = Float64Array.from(Float32Array.from(randomArray(M * K, seed + 1)));
  const bias = c.bias ? Float64Array.from(Float32Array.from(randomArray(N, seed + 2))) : null;
  const dy = Float64Array.from(Float32Array.from(randomArray(M * N, seed + 3)));

  const w = uploadBf16(weights, c.rows, c.cols);
  const { y, dx } = tidy(() => {
    const options = { transB: c.transB, bias: bias ? fromArray(bias, [N]) : null };
    const y = matmulBf16Weight(fromArray(x, [...c.lead, K]), w, options);
    const dx = matmulBf16WeightBackwardInput(fromArray(dy, [...c.lead, N]), w, {
      transB: c.transB,
    });
    return { y, dx };
  });
  assert(y.shape.join() === [...c.lead, N].join(), `${label}: output shape [${y.shape}]`);
  assert(dx.shape.join() === [...c.lead, K].join(), `${label}: dx shape [${dx.shape}]`);
  const actualY = await readAndDispose(y);
  const actualDx = await readAndDispose(dx);
  w.tensor.dispose();

  assertClose(
    actualY,
    referenceProduct(x, rounded, bias, M, c.rows, c.cols, c.transB),
    atol,
    rtol,
    `${label} forward`,
  );
  assertClose(
    actualDx,
    referenceBackwardInput(dy, rounded, M, c.rows, c.cols, c.transB),
    atol,
    rtol,
    `${label} dx`,
  );
}

// ---- packing ----

Deno.test("bf16 pack rounding crafted", () => {
  const cases: [number, number][] = [
    [0x3f800000, 0x3f80], // 1.0 is exact
    [0x3f808000, 0x3f80], // tie, kept mantissa even: stays
    [0x3f818000, 0x3f82], // tie, kept mantissa odd: rounds up to even
    [0x3f808001, 0x3f81], // just above the tie
    [0x3f807fff, 0x3f80], // just below the tie
    [0xbf818000, 0xbf82], // negative tie rounds away from zero to even
    [0x80000000, 0x8000], // -0
    [0x00000001, 0x0000], // smallest subnormal rounds to +0
    [0x00018000, 0x0002], // subnormal tie to even
    [0x7f7fffff, 0x7f80], // largest f32 rounds to infinity
    [0x7f7f7fff, 0x7f7f], // stays the largest finite bf16
    [0xff800000, 0xff80], // -infinity
    [0x7fa00001, 0x7fe0], // signalling NaN becomes quiet, payload kept
    [0xffc00000, 0xffc0], // negative quiet NaN
  ];
  const f32 = new Float32Array(new Uint32Array(cases.map(([input]) => input)).buffer);
  const packed = packBf16(f32);
  for (let i = 0; i < cases.length; i++) {
    const half = (i & 1) === 0 ? packed[i >> 1] & 0xffff : packed[i >> 1] >>> 16;
    const [input, expected] = cases[i];
    assert(
      half === expected,
      `0x${input.toString(16)} packed to 0x${half.toString(16)}, expected 0x${
        expected.toString(16)
      }`,
    );
    if (!Number.isNaN(f32[i])) {
      const reference = referenceBf16Bits(f32[i]);
      assert(
        reference === expected,
        `reference rounds 0x${input.toString(16)} to 0x${reference.toString(16)}`,
      );
    }
  }
});

Deno.test("bf16 pack rounding random bits", () => {
  // Random bit patterns cover every exponent; each second value gets low bits 0x8000, a tie.
  const count = 20001;
  const bits = new Uint32Array(count);
  const random = randomArray(count, 41, 0, 2 ** 32);
  for (let i = 0; i < count; i++) {
    bits[i] = (i & 1) === 0 ? random[i] >>> 0 : ((random[i] >>> 0) & 0xffff0000) | 0x8000;
  }
  const f32 = new Float32Array(bits.buffer);
  const packed = packBf16(f32);
  assert(packed.length === 10001, `${count} values packed into ${packed.length} words`);
  for (let i = 0; i < count; i++) {
    const half = (i & 1) === 0 ? packed[i >> 1] & 0xffff : packed[i >> 1] >>> 16;
    const expected = referenceBf16Bits(f32[i]);
    // Any NaN must stay a NaN of the same sign; its payload is not part of the contract.
    const same = Number.isNaN(f32[i])
      ? Number.isNaN(bf16Value(half)) && (half & 0x8000) === (expected & 0x8000)
      : half === expected;
    assert(
      same,
      `element ${i} (0x${bits[i].toString(16)}) packed to 0x${half.toString(16)}, expected 0x${
        expected.toString(16)
      }`,
    );
  }
  // The last word contains one value, so its high half is zero.
  assert(packed[10000] >>> 16 === 0, `padding half is 0x${(packed[10000] >>> 16).toString(16)}`);
});

Deno.test("bf16 unpack inverts packing", () => {
  const values = Float32Array.from(randomArray(7, 42, -300, 300));
  const unpacked = unpackBf16(packBf16(values), 7);
  const expected = roundedBf16(Float64Array.from(values));
  assertClose(unpacked, expected, 0, 0, "unpack"); // unpacking is exact
});

Deno.test("bf16 raw bytes match packing", async () => {
  // 1.0, -2.0, 0.5, 3.0, 1.5 as bf16 0x3f80, 0xc000, 0x3f00, 0x4040, 0x3fc0, little-endian.
  const values = new Float32Array([1, -2, 0.5, 3, 1.5]);
  const bytes = new Uint8Array([0x80, 0x3f, 0x00, 0xc0, 0x00, 0x3f, 0x40, 0x40, 0xc0, 0x3f]);
  // Element 2i in the low half of word i; the odd count leaves the last high half zero.
  const expectedWords = [0xc0003f80, 0x40403f00, 0x00003fc0];
  // A safetensors payload may start at any byte, so the bytes also come from an odd offset.
  const shifted = new Uint8Array(bytes.length + 1);
  shifted.set(bytes, 1);

  const fromValues = await readWords(uploadBf16(values, 1, 5));
  const fromBytes = await readWords(uploadBf16Bytes(bytes, 5, 1));
  const fromShifted = await readWords(uploadBf16Bytes(shifted.subarray(1), 1, 5));
  const evenBytes = await readWords(uploadBf16Bytes(bytes.subarray(0, 8), 2, 2));
  assertClose(Array.from(packBf16(values)), expectedWords, 0, 0, "packBf16 words");
  assertClose(Array.from(fromValues), expectedWords, 0, 0, "uploadBf16 words");
  assertClose(Array.from(fromBytes), expectedWords, 0, 0, "uploadBf16Bytes words");
  assertClose(Array.from(fromShifted), expectedWords, 0, 0, "unaligned bytes words");
  assertClose(Array.from(evenBytes), expectedWords.slice(0, 2), 0, 0, "even count words");
});

Deno.test("bf16 weight rejects bad shapes", () => {
  assert(
    captureError(() => uploadBf16(new Float32Array(6), 2, 4)).includes(
      "6 values do not fill 2 x 4",
    ),
    "value count",
  );
  assert(
    captureError(() => uploadBf16Bytes(new Uint8Array(7), 1, 4)).includes("7 bytes"),
    "byte count",
  );
  assert(
    captureError(() => uploadBf16(new Float32Array(0), 0, 4)).includes("positive integers"),
    "empty shape",
  );
});

// ---- products ----

// f32 sums of at most 300 products of values in [-1, 1] against float64 on the same bf16 values:
// rounding stays below 1e-5, while a wrong element or half gives errors of order 0.1.
const ATOL = 2e-5;
const RTOL = 1e-5;

const productShapes: { lead: number[]; n: number; k: number }[] = [
  { lead: [1], n: 1, k: 1 },
  { lead: [1], n: 37, k: 19 }, // one row, odd sizes
  { lead: [45], n: 33, k: 70 },
  { lead: [64], n: 64, k: 32 }, // exact tile multiples
  { lead: [5], n: 300, k: 129 },
  { lead: [2, 3], n: 9, k: 11 }, // batch dimensions, odd row length
];

for (const { lead, n, k } of productShapes) {
  for (const transB of [true, false]) {
    for (const bias of [true, false]) {
      const label = `[${lead}]x${k} @ ${transB ? `(${n}x${k})^T` : `${k}x${n}`} bias=${bias}`;
      Deno.test(`bf16 matmul ${label}`, async () => {
        const rows = transB ? n : k;
        const cols = transB ? k : n;
        await checkProduct(label, { lead, rows, cols, transB, bias }, 100 + n + k, ATOL, RTOL);
      });
    }
  }
}

Deno.test("bf16 matmul reference gradient", () => {
  // The reference input gradient against finite differences of the reference forward.
  for (const transW of [true, false]) {
    const M = 3, rows = 5, cols = 7;
    const N = transW ? rows : cols;
    const K = transW ? cols : rows;
    const w = randomArray(rows * cols, 50);
    const bias = randomArray(N, 51);
    const x = randomArray(M * K, 52);
    const r = randomArray(M * N, 53);
    const fd = finiteDifferences(
      (probe) => dot(referenceProduct(probe, w, bias, M, rows, cols, transW), r),
      x,
    );
    const analytic = referenceBackwardInput(r, w, M, rows, cols, transW);
    // Central differences of a function linear in x: only float64 rounding, below 1e-8.
    assertClose(analytic, fd, 1e-7, 1e-6, `reference dx transW=${transW}`);
  }
});

Deno.test("bf16 matmul vocabulary rows split", async () => {
  // W (50257 x 16) at 2 bytes a value needs 1.6 MB, so it splits along N into 7 blocks, and
  // each output row of 50257 f32 values fills a binding alone. The backward multiplies by the
  // untransposed W, whose 50257-long inner dimension splits into blocks that add up.
  const blocks = planBf16Blocks(3, VOCAB, 16, true);
  assert(blocks.blockN < VOCAB, `blockN ${blocks.blockN} does not split N`);
  assert(blocks.blockM === 1, `blockM ${blocks.blockM}, expected 1 row per output binding`);
  const backwardBlocks = planBf16Blocks(3, 16, VOCAB, false);
  assert(
    backwardBlocks.blockK < VOCAB,
    `backward blocks ${JSON.stringify(backwardBlocks)} do not split K`,
  );
  // The dx sums run over 50257 products with partial sums near 50: f32 rounding as a random
  // walk is about sqrt(50257) * 6e-8 * 50 = 7e-4, while one wrong element shifts a sum by ~0.3.
  await checkProduct(
    "vocab",
    { lead: [3], rows: VOCAB, cols: 16, transB: true, bias: true },
    60,
    3e-3,
    1e-5,
  );
});

Deno.test("bf16 matmul odd window starts", async () => {
  // Rows of 5001 values: 26 weight rows or 13 input rows fit one binding, less than one tile, so
  // blocks of 25 rows start at element 25 * 5001, in the high half of a word.
  const blocks = planBf16Blocks(20, 100, 5001, true);
  assert(blocks.blockN === 25, `blockN ${blocks.blockN}, expected 25`);
  assert(blocks.blockM === 10, `blockM ${blocks.blockM}, expected 10`);
  // Sums over 5001 products with partial sums near 30: f32 rounding as a random walk is about
  // sqrt(5001) * 6e-8 * 30 = 1.3e-4, while one wrong element shifts a sum by ~0.3.
  await checkProduct(
    "K5001 transB",
    { lead: [20], rows: 100, cols: 5001, transB: true, bias: true },
    70,
    1e-3,
    1e-5,
  );
  await checkProduct(
    "N5001",
    { lead: [20], rows: 100, cols: 5001, transB: false, bias: true },
    71,
    1e-3,
    1e-5,
  );
});

Deno.test("bf16 matmul rejects bad operands", () => {
  const error = (fn: () => void) => captureError(() => tidy(fn));
  const w = uploadBf16(new Float32Array(12), 3, 4);
  try {
    const x = () => fromArray(new Float32Array(8), [2, 4]);
    assert(
      error(() => matmulBf16Weight(fromArray(new Float32Array(6), [2, 3]), w)).includes("(..., 4)"),
      "width",
    );
    assert(
      error(() => matmulBf16Weight(x(), w, { bias: fromArray(new Float32Array(4), [4]) })).includes(
        "3 values",
      ),
      "bias",
    );
    // Without transB the 3 x 4 weight is stored K x N, so the input needs width 3.
    assert(
      error(() => matmulBf16Weight(x(), w, { transB: false })).includes(
        "(..., 3) for a weight stored 3 x 4",
      ),
      "transB=false width",
    );
    const wrongTensor = { ...w, rows: 4 };
    assert(
      error(() => matmulBf16Weight(x(), wrongTensor)).includes("needs a u32 tensor of 8 words"),
      "tensor size",
    );
    // A row wider than the forced binding limit cannot be split.
    const wide = 70000;
    const message = error(() =>
      matmulBf16Weight(
        fromArray(new Float32Array(wide), [1, wide]),
        uploadBf16(new Float32Array(wide), 1, wide),
      )
    );
    assert(message.includes("storage binding"), `wide row: ${message}`);
  } finally {
    w.tensor.dispose();
  }
});

// ---- gather ----

async function checkGather(
  label: string,
  vocab: number,
  dim: number,
  idValues: number[],
  idShape: number[],
): Promise<Float32Array> {
  const table = Float32Array.from(randomArray(vocab * dim, 80 + dim, -4, 4));
  const rounded = roundedBf16(Float64Array.from(table));
  const w = uploadBf16(table, vocab, dim);
  const out = tidy(() => embeddingBf16(fromArray(new Int32Array(idValues), idShape, "i32"), w));
  assert(out.shape.join() === [...idShape, dim].join(), `${label}: shape [${out.shape}]`);
  const actual = await readAndDispose(out);
  w.tensor.dispose();

  const expected = new Float64Array(idValues.length * dim);
  idValues.forEach((id, n) => {
    for (let d = 0; d < dim; d++) {
      expected[n * dim + d] = id >= 0 && id < vocab ? rounded[id * dim + d] : NaN;
    }
  });
  assertClose(actual, expected, 0, 0, label); // a gather copies bf16 values exactly
  return actual;
}

Deno.test("bf16 embedding odd dim", async () => {
  await checkGather("V9 D5", 9, 5, [0, 8, 3, 3, 7, 1], [2, 3]);
  await checkGather("V1 D1", 1, 1, [0], [1]);
});

Deno.test("bf16 embedding vocabulary chunks", async () => {
  // 50257 rows of 15 values (1.5 MB) span several bindings. A chunk contains as many rows as
  // fit in a window that may start and end mid-word. With the device's offset alignment that
  // count is odd here, so the second chunk starts in the high half of a word.
  const dim = 15;
  const chunkRows = Math.floor((2 * (maxWindowElements() - 1)) / dim);
  assert(chunkRows < VOCAB / 2, `${chunkRows} rows per chunk do not split the table`);
  assert(((chunkRows * dim) & 1) === 1, `chunk of ${chunkRows} rows starts at an even element`);
  const ids = [
    0,
    VOCAB - 1,
    chunkRows - 1,
    chunkRows,
    chunkRows + 1,
    2 * chunkRows,
    12345,
    12345,
    1,
  ];
  await checkGather("V50257 D15", VOCAB, dim, ids, [ids.length]);
});

Deno.test("bf16 embedding ids outside table", async () => {
  // Ids below 0 or at V and above have no row and come back as NaN rows, in every chunk layout.
  await checkGather("outside small", 9, 5, [-1, 2, 9, 4], [4]);
  await checkGather("outside chunked", VOCAB, 15, [VOCAB, 5, -3, VOCAB - 1], [2, 2]);
});

Deno.test("bf16 embedding rejects float ids", () => {
  const w = uploadBf16(new Float32Array(6), 2, 3);
  try {
    const message = captureError(() =>
      tidy(() => embeddingBf16(fromArray(new Float32Array(2), [2]), w))
    );
    assert(message.includes("ids must be i32"), `unexpected error: ${message}`);
  } finally {
    w.tensor.dispose();
  }
});

function captureError(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
  throw new Error("expected an error, but none was thrown");
}
