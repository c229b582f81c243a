import { fromArray, tidy } from "../engine/tensor.ts";
import { matmul } from "../kernels/matmul.ts";
import { assertClose, gpuReady, randomArray } from "./testing.ts";

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
