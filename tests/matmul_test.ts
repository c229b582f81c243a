import { rt } from "../engine/runtime.ts";
import { fromArray, Tensor, tidy } from "../engine/tensor.ts";
import { matmul, planMatmulBlocks } from "../kernels/matmul.ts";
import { assert, assertClose, gpuReady, randomArray } from "./testing.ts";

await gpuReady();

// float64 reference for one batch entry of C = alpha * op(A) op(B) + bias.
function referenceMatmul(
  a: Float64Array,
  b: Float64Array,
  bias: Float64Array | null,
  batch: number,
  M: number,
  N: number,
  K: number,
  transA: boolean,
  transB: boolean,
  sharedB: boolean,
  alpha = 1,
): Float64Array {
  const c = new Float64Array(batch * M * N);
  for (let z = 0; z < batch; z++) {
    const ao = z * M * K;
    const bo = sharedB ? 0 : z * K * N;
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = transA ? a[ao + k * M + i] : a[ao + i * K + k];
          const bv = transB ? b[bo + j * K + k] : b[bo + k * N + j];
          s += av * bv;
        }
        c[z * M * N + i * N + j] = alpha * s + (bias ? bias[j] : 0);
      }
    }
  }
  return c;
}

const cases = [
  // batch, M, N, K: none of the sizes is a multiple of the 32 x 32 x 16 tiles except where noted
  { batch: 1, M: 1, N: 1, K: 1 },
  { batch: 1, M: 1, N: 37, K: 19 }, // one row
  { batch: 3, M: 45, N: 33, K: 70 },
  { batch: 2, M: 64, N: 64, K: 32 }, // exact tile multiples
  { batch: 1, M: 5, N: 300, K: 129 },
];

for (const { batch, M, N, K } of cases) {
  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      for (const sharedB of [false, true]) {
        const label = `b${batch} ${M}x${K}@${K}x${N} tA=${transA} tB=${transB} sharedB=${sharedB}`;
        Deno.test(`matmul ${label}`, async () => {
          const a = randomArray(batch * M * K, 1);
          const b = randomArray((sharedB ? 1 : batch) * K * N, 2);
          const bias = randomArray(N, 3);
          const expected = referenceMatmul(a, b, bias, batch, M, N, K, transA, transB, sharedB);
          const out = tidy(() => {
            const ta = fromArray(a, [batch, transA ? K : M, transA ? M : K]);
            const bShape = transB ? [N, K] : [K, N];
            const tb = fromArray(b, sharedB ? bShape : [batch, ...bShape]);
            return matmul(ta, tb, { transA, transB, bias: fromArray(bias, [N]) });
          });
          const actual = await out.toFloat32();
          out.dispose();
          // f32 accumulation over K <= 129 terms of magnitude <= 1: error well under 1e-4.
          assertClose(actual, expected, 1e-4, 1e-4, label);
        });
      }
    }
  }
}

Deno.test("matmul accumulate and alpha", async () => {
  const M = 7, N = 9, K = 11;
  const a = randomArray(M * K, 4);
  const b = randomArray(K * N, 5);
  const c0 = randomArray(M * N, 6);
  const product = referenceMatmul(a, b, null, 1, M, N, K, false, false, true, 0.5);
  const expected = product.map((v, i) => v + c0[i]);
  const out = fromArray(c0, [M, N]);
  tidy(() => {
    matmul(fromArray(a, [M, K]), fromArray(b, [K, N]), { alpha: 0.5, out });
  });
  const actual = await out.toFloat32();
  out.dispose();
  assertClose(actual, expected, 1e-5, 1e-5, "accumulate"); // f32 rounding over 11 terms
});

// ---- GPT-2 language-model head at the adapter's binding limit ----

// GPT-2's token embedding (vocabulary x width) is 154 MB, above the 128 MiB binding limit of
// common adapters, so these products run block by block. Only some rows or columns are checked
// against the reference, because a full float64 product takes seconds in TypeScript.
const GPT2_VOCAB = 50257;
const GPT2_WIDTH = 768;
const HEAD_ROWS = 64;

// Uniform values in [-1, 1) as f32, without the float64 copy that randomArray would make of a
// 38.6-million-element table.
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

let wteData: Float32Array | null = null;
function gpt2Wte(): Float32Array {
  wteData ??= randomF32(GPT2_VOCAB * GPT2_WIDTH, 7);
  return wteData;
}

// Indices around every block boundary, the first and last, and `random` more.
function checkedIndices(total: number, block: number, random: number, seed: number): number[] {
  const picked = new Set([0, 1, total - 1]);
  for (let edge = block; edge < total; edge += block) [edge - 1, edge, edge + 1].forEach((i) => picked.add(i));
  randomArray(random, seed, 0, total).forEach((x) => picked.add(Math.floor(x)));
  return [...picked].filter((i) => i < total).sort((x, y) => x - y);
}

async function readRows(t: Tensor, rows: number[], width: number): Promise<Float32Array> {
  const out = new Float32Array(rows.length * width);
  for (let r = 0; r < rows.length; r++) {
    out.set(new Float32Array(await rt().read(t.buffer, rows[r] * width * 4, width * 4)), r * width);
  }
  return out;
}

Deno.test("matmul GPT-2 logits split", async () => {
  const M = HEAD_ROWS, N = GPT2_VOCAB, K = GPT2_WIDTH;
  const h = randomF32(M * K, 11);
  const wte = gpt2Wte();
  const plan = planMatmulBlocks(M, N, K, false, true);
  assert(N * K * 4 > rt().gpu.maxBindingBytes, `wte fits one binding of ${rt().gpu.maxBindingBytes} bytes`);
  assert(plan.blockN < N, `N is not split, plan ${JSON.stringify(plan)}`);
  const logits = tidy(() => matmul(fromArray(h, [M, K]), fromArray(wte, [N, K]), { transB: true }));
  const actual = await logits.toFloat32();
  logits.dispose();

  const cols = checkedIndices(N, plan.blockN, 200, 12);
  const got = new Float64Array(M * cols.length);
  const expected = new Float64Array(M * cols.length);
  for (let i = 0; i < M; i++) {
    cols.forEach((j, c) => {
      let s = 0;
      for (let k = 0; k < K; k++) s += h[i * K + k] * wte[j * K + k];
      expected[i * cols.length + c] = s;
      got[i * cols.length + c] = actual[i * N + j];
    });
  }
  // 768-term f32 sums of magnitude about 10.
  assertClose(got, expected, 1e-4, 1e-5, "logits");
});

Deno.test("matmul GPT-2 dh split over K", async () => {
  const M = HEAD_ROWS, N = GPT2_WIDTH, K = GPT2_VOCAB;
  const dlogits = randomF32(M * K, 13);
  const wte = gpt2Wte();
  const plan = planMatmulBlocks(M, N, K, false, false);
  assert(plan.blockK < K, `K is not split, plan ${JSON.stringify(plan)}`);
  const dh = tidy(() => matmul(fromArray(dlogits, [M, K]), fromArray(wte, [K, N])));
  const actual = await dh.toFloat32();
  dh.dispose();

  const rows = [0, 1, 33, M - 1];
  const got = new Float64Array(rows.length * N);
  const expected = new Float64Array(rows.length * N);
  rows.forEach((i, r) => {
    const sums = new Float64Array(N);
    for (let k = 0; k < K; k++) {
      const av = dlogits[i * K + k];
      for (let j = 0; j < N; j++) sums[j] += av * wte[k * N + j];
    }
    expected.set(sums, r * N);
    got.set(actual.subarray(i * N, (i + 1) * N), r * N);
  });
  // 50257-term f32 sums that wander to about 70: rounding of order eps * sqrt(K) * 70 = 1e-3.
  assertClose(got, expected, 4e-3, 1e-4, "dh");
});

Deno.test("matmul GPT-2 dW split by rows", async () => {
  const M = GPT2_VOCAB, N = GPT2_WIDTH, K = HEAD_ROWS;
  const dlogits = randomF32(K * M, 15); // stored tokens x vocabulary, hence transA
  const h = randomF32(K * N, 16);
  const plan = planMatmulBlocks(M, N, K, true, false);
  assert(plan.blockM < M, `M is not split, plan ${JSON.stringify(plan)}`);
  const dw = tidy(() => matmul(fromArray(dlogits, [K, M]), fromArray(h, [K, N]), { transA: true }));
  const rows = checkedIndices(M, plan.blockM, 20, 17);
  const got = await readRows(dw, rows, N);
  dw.dispose();

  const expected = new Float64Array(rows.length * N);
  rows.forEach((i, r) => {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += dlogits[k * M + i] * h[k * N + j];
      expected[r * N + j] = s;
    }
  });
  // 64-term f32 sums of magnitude about 3.
  assertClose(got, expected, 1e-5, 1e-5, "dW");
});
