import { rt } from "../engine/runtime.ts";
import { fromArray, tidy } from "../engine/tensor.ts";
import { embedding, embeddingBackward } from "../kernels/embedding.ts";
import { matmul, planMatmulBlocks } from "../kernels/matmul.ts";
import { assert, assertClose, dot, finiteDifferences, gpuReady, randomArray } from "./testing.ts";
import { asF32, randomIds, readAndDispose, refGather, refScatter } from "./embedding_reference.ts";

// A 64 KiB binding limit (16384 f32 values) makes matrices of a few thousand elements span
// several bindings, as GPT-2's vocabulary matrices do under a 128 MiB limit. The variable is read
// once, when the device is created, and restored so that other test files keep the real limit.
const FORCED_BINDING_BYTES = 64 * 1024;
const previousLimit = Deno.env.get("CLIP_CAPTIONER_MAX_BINDING");
Deno.env.set("CLIP_CAPTIONER_MAX_BINDING", String(FORCED_BINDING_BYTES));
await gpuReady();
if (previousLimit === undefined) Deno.env.delete("CLIP_CAPTIONER_MAX_BINDING");
else Deno.env.set("CLIP_CAPTIONER_MAX_BINDING", previousLimit);

const FORCED_ELEMENTS = FORCED_BINDING_BYTES / 4;

// ---- float64 references ----

// C = alpha * op(A) op(B) + bias (+ c0), with A stored K x M when transA and B stored N x K
// when transB, all row-major.
function refMatmul(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  M: number,
  N: number,
  K: number,
  options: { transA?: boolean; transB?: boolean; bias?: ArrayLike<number>; alpha?: number; c0?: ArrayLike<number> } = {},
): Float64Array {
  const { transA = false, transB = false, bias, alpha = 1, c0 } = options;
  const c = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) {
        const av = transA ? a[k * M + i] : a[i * K + k];
        const bv = transB ? b[j * K + k] : b[k * N + j];
        s += av * bv;
      }
      c[i * N + j] = alpha * s + (bias ? bias[j] : 0) + (c0 ? c0[i * N + j] : 0);
    }
  }
  return c;
}


// Runs `fn` and returns its result with the number of dispatches it recorded.
function countDispatches<T>(fn: () => T): { result: T; dispatches: number } {
  const before = rt().dispatchCount;
  const result = fn();
  return { result, dispatches: rt().dispatchCount - before };
}

// ---- references checked against finite differences ----

Deno.test("matmul reference gradients", () => {
  // logits = h wte^T, with wte stored vocab x width as GPT-2 stores it.
  const M = 3, K = 4, N = 5;
  const h = randomArray(M * K, 1);
  const wte = randomArray(N * K, 2);
  const weights = randomArray(M * N, 3);
  const loss = (hx: Float64Array, wx: Float64Array) => dot(refMatmul(hx, wx, M, N, K, { transB: true }), weights);
  // dh = dlogits wte and dwte = dlogits^T h, with dlogits = weights (M x N).
  const dh = refMatmul(weights, wte, M, K, N);
  const dwte = refMatmul(weights, h, N, K, M, { transA: true });
  // The loss is bilinear, so central differences are exact up to rounding near 1e-10.
  assertClose(dh, finiteDifferences((x) => loss(x, wte), h), 1e-8, 0, "dh vs finite differences");
  assertClose(dwte, finiteDifferences((x) => loss(h, x), wte), 1e-8, 0, "dwte vs finite differences");
});

Deno.test("embedding reference gradient", () => {
  const vocab = 9, dim = 3;
  const ids = Int32Array.from([8, 0, 8, 4, 4, 4]);
  const table = randomArray(vocab * dim, 4);
  const weights = randomArray(ids.length * dim, 5);
  const numeric = finiteDifferences((t) => dot(refGather(ids, t, vocab, dim), weights), table);
  // The lookup is linear: central differences are exact up to rounding near 1e-10.
  assertClose(refScatter(ids, weights, dim, 0, vocab), numeric, 1e-8, 0, "reference vs finite differences");
});

// ---- matmul split into blocks ----

// The three products of a language-model head whose vocabulary matrix exceeds one binding:
// logits = h wte^T, dh = dlogits wte and dwte = dlogits^T h, with an odd vocabulary of 1001.
const ROWS = 37; // tokens
const WIDTH = 25; // hidden size, odd so that windows start between aligned offsets
const VOCAB = 1001;

interface SplitCase {
  name: string;
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  splits: ("M" | "N" | "K")[]; // dimensions the plan must split
}

const splitCases: SplitCase[] = [
  { name: "logits transB", M: ROWS, N: VOCAB, K: WIDTH, transA: false, transB: true, splits: ["M", "N"] },
  { name: "dh accumulates over K", M: ROWS, N: WIDTH, K: VOCAB, transA: false, transB: false, splits: ["M", "K"] },
  { name: "dW transA", M: VOCAB, N: WIDTH, K: ROWS, transA: true, transB: false, splits: ["M", "K"] },
  // Every operand is larger than the limit. Untransposed, N is not split, because each window
  // of B and C spans whole rows of N anyway.
  { name: "square transA transB", M: 150, N: 140, K: 130, transA: true, transB: true, splits: ["M", "N", "K"] },
  { name: "square no transpose", M: 150, N: 140, K: 130, transA: false, transB: false, splits: ["M", "K"] },
];

for (const c of splitCases) {
  for (const withBias of [false, true]) {
    const label = `${c.name}${withBias ? " bias" : ""}`;
    Deno.test(`matmul split ${label}`, async () => {
      const { M, N, K, transA, transB } = c;
      const a = asF32(randomArray(M * K, M + K));
      const b = asF32(randomArray(K * N, N + K));
      const bias = withBias ? asF32(randomArray(N, N)) : undefined;
      assert(Math.max(M * K, K * N, M * N) > FORCED_ELEMENTS, `${label}: no operand exceeds the forced limit`);

      const plan = planMatmulBlocks(M, N, K, transA, transB);
      const blockSizes = { M: plan.blockM, N: plan.blockN, K: plan.blockK };
      for (const dimension of c.splits) {
        assert(blockSizes[dimension] < c[dimension], `${label}: ${dimension} is not split, plan ${JSON.stringify(plan)}`);
      }

      const { result: out, dispatches } = countDispatches(() =>
        tidy(() => {
          const ta = fromArray(a, transA ? [K, M] : [M, K]);
          const tb = fromArray(b, transB ? [N, K] : [K, N]);
          const tbias = bias ? fromArray(bias, [N]) : null;
          return matmul(ta, tb, { transA, transB, bias: tbias });
        })
      );
      const blocks = Math.ceil(M / plan.blockM) * Math.ceil(N / plan.blockN) * Math.ceil(K / plan.blockK);
      assert(dispatches === blocks, `${label}: ${dispatches} dispatches, expected one per block (${blocks})`);

      const expected = refMatmul(a, b, M, N, K, { transA, transB, bias });
      // f32 accumulation over at most 1001 products of magnitude <= 1: the sums stay below about
      // 30 and their rounding error below 1e-4.
      assertClose(await readAndDispose(out), expected, 2e-4, 1e-5, label);
    });
  }
}

Deno.test("matmul split accumulate alpha bias", async () => {
  // out += alpha * A B + bias with K split: the bias is added once and the previous contents kept.
  const M = ROWS, N = WIDTH, K = VOCAB, alpha = 0.5;
  const a = asF32(randomArray(M * K, 21));
  const b = asF32(randomArray(K * N, 22));
  const bias = asF32(randomArray(N, 23));
  const c0 = asF32(randomArray(M * N, 24));
  assert(planMatmulBlocks(M, N, K, false, false).blockK < K, "K is not split");
  const out = fromArray(c0, [M, N]);
  tidy(() => {
    matmul(fromArray(a, [M, K]), fromArray(b, [K, N]), { alpha, bias: fromArray(bias, [N]), out });
  });
  const expected = refMatmul(a, b, M, N, K, { alpha, bias, c0 });
  assertClose(await readAndDispose(out), expected, 2e-4, 1e-5, "accumulate"); // 1001-term f32 sums, as above
});

for (const sharedB of [false, true]) {
  Deno.test(`matmul split batched${sharedB ? " shared B" : ""}`, async () => {
    // Each batch entry of A and B fits, but an entry of C (90 x 200) does not, so every entry is
    // computed on its own and split by rows.
    const batch = 3, M = 90, N = 200, K = 70;
    const a = asF32(randomArray(batch * M * K, 31));
    const b = asF32(randomArray((sharedB ? 1 : batch) * K * N, 32));
    const bias = asF32(randomArray(N, 33));
    const { result: out, dispatches } = countDispatches(() =>
      tidy(() => {
        const tb = fromArray(b, sharedB ? [K, N] : [batch, K, N]);
        return matmul(fromArray(a, [batch, M, K]), tb, { bias: fromArray(bias, [N]) });
      })
    );
    assert(out.shape.join() === [batch, M, N].join(), `shape [${out.shape}]`);
    const plan = planMatmulBlocks(M, N, K, false, false);
    assert(plan.blockM < M, `M is not split, plan ${JSON.stringify(plan)}`);
    const blocks = batch * Math.ceil(M / plan.blockM);
    assert(dispatches === blocks, `${dispatches} dispatches, expected one per batch entry and block (${blocks})`);
    const expected = new Float64Array(batch * M * N);
    for (let z = 0; z < batch; z++) {
      const bz = sharedB ? b : b.subarray(z * K * N, (z + 1) * K * N);
      expected.set(refMatmul(a.subarray(z * M * K, (z + 1) * M * K), bz, M, N, K, { bias }), z * M * N);
    }
    // 70-term f32 sums of products of magnitude <= 1.
    assertClose(await readAndDispose(out), expected, 1e-5, 1e-5, "batched");
  });
}

Deno.test("matmul fast path one dispatch", async () => {
  // Operands below the limit keep the single dispatch.
  const M = 20, N = 30, K = 40;
  const a = asF32(randomArray(M * K, 41));
  const b = asF32(randomArray(K * N, 42));
  const { result: out, dispatches } = countDispatches(() => tidy(() => matmul(fromArray(a, [M, K]), fromArray(b, [K, N]))));
  assert(dispatches === 1, `${dispatches} dispatches, expected 1`);
  assertClose(await readAndDispose(out), refMatmul(a, b, M, N, K), 1e-5, 1e-5, "fast path"); // 40-term sums
});

Deno.test("matmul row wider than binding", () => {
  // One stored row of A (20000 values) cannot be windowed, so the call is rejected.
  const K = 20000;
  let message = "";
  tidy(() => {
    try {
      matmul(fromArray(new Float32Array(K), [1, K]), fromArray(new Float32Array(K), [K, 1]));
    } catch (error) {
      message = (error as Error).message;
    }
  });
  assert(message.includes("a row of A contains 20000 f32 values"), `unexpected error: "${message}"`);
});

// ---- embedding over a table larger than one binding ----

// Rows per table window under the forced limit, where the first window ends.
function firstWindowRows(dim: number): number {
  const alignment = rt().device.limits.minStorageBufferOffsetAlignment;
  return Math.floor((FORCED_BINDING_BYTES - alignment) / (dim * 4));
}

Deno.test("embedding split gather", async () => {
  const dim = WIDTH, n = 300;
  assert(VOCAB * dim > FORCED_ELEMENTS, "the table fits one binding");
  const edge = firstWindowRows(dim);
  const ids = randomIds(n, VOCAB, 51);
  ids.set([0, edge - 1, edge, edge, VOCAB - 1, 0, edge - 1, VOCAB - 1]); // window edges, repeated
  const table = asF32(randomArray(VOCAB * dim, 52));
  const { result: out, dispatches } = countDispatches(() =>
    tidy(() => embedding(fromArray(ids, [3, 100], "i32"), fromArray(table, [VOCAB, dim])))
  );
  assert(dispatches > 1, `${dispatches} dispatch: the table was not split`);
  assert(out.shape.join() === [3, 100, dim].join(), `shape [${out.shape}]`);
  assertClose(await readAndDispose(out), refGather(ids, table, VOCAB, dim), 0, 0, "split gather"); // copies: exact
});

Deno.test("embedding split gather many tokens", async () => {
  // 800 tokens x 25 values also exceed the limit, so the output is split into token windows.
  const dim = WIDTH, n = 800;
  assert(n * dim > FORCED_ELEMENTS, "the output fits one binding");
  const ids = randomIds(n, VOCAB, 53);
  ids.set([-1, VOCAB, 7, 7], n - 4); // two ids outside the table in the last token window
  const table = asF32(randomArray(VOCAB * dim, 54));
  const { result: out, dispatches } = countDispatches(() =>
    tidy(() => embedding(fromArray(ids, [n], "i32"), fromArray(table, [VOCAB, dim])))
  );
  assert(dispatches >= 4, `${dispatches} dispatches: expected 2 token windows x 2 table windows or more`);
  const actual = await readAndDispose(out);
  assertClose(actual, refGather(ids, table, VOCAB, dim), 0, 0, "token windows"); // copies: exact
  // assertClose accepts any value where NaN is expected, so the NaN rows are checked here.
  for (const token of [n - 4, n - 3]) {
    for (let d = 0; d < dim; d++) {
      assert(Number.isNaN(actual[token * dim + d]), `row of id ${ids[token]} holds ${actual[token * dim + d]}, expected NaN`);
    }
  }
});

Deno.test("embedding split chunk tensors", async () => {
  // The chunk API still works when a chunk tensor itself exceeds the limit.
  const dim = WIDTH, n = 200, first = 300;
  const ids = randomIds(n, VOCAB, 55);
  ids.set([first - 1, first, VOCAB - 1]);
  const table = asF32(randomArray(VOCAB * dim, 56));
  assert((VOCAB - first) * dim > FORCED_ELEMENTS, "the second chunk fits one binding");
  const out = tidy(() => {
    const idsT = fromArray(ids, [n], "i32");
    const head = embedding(idsT, fromArray(table.subarray(0, first * dim), [first, dim]));
    return embedding(idsT, fromArray(table.subarray(first * dim), [VOCAB - first, dim]), { rowOffset: first, out: head });
  });
  assertClose(await readAndDispose(out), refGather(ids, table, VOCAB, dim), 0, 0, "two chunks"); // copies: exact
});

Deno.test("embedding split backward", async () => {
  const dim = WIDTH, n = 300;
  const edge = firstWindowRows(dim);
  const ids = randomIds(n, VOCAB, 57);
  ids.set([edge - 1, edge, edge, edge, VOCAB - 1, 0, edge - 1]); // window edges, repeated
  const dOut = asF32(randomArray(n * dim, 58));
  const { result: grad, dispatches } = countDispatches(() =>
    tidy(() => embeddingBackward(fromArray(ids, [n], "i32"), fromArray(dOut, [n, dim]), VOCAB))
  );
  assert(dispatches >= 4, `${dispatches} dispatches: expected a zero and a scatter pass per gradient window`);
  assert(grad.shape.join() === [VOCAB, dim].join(), `shape [${grad.shape}]`);
  const actual = await readAndDispose(grad);
  // At most a few f32 terms of size <= 1 per element.
  assertClose(actual, refScatter(ids, dOut, dim, 0, VOCAB), 1e-6, 1e-6, "split backward");
  const used = new Set(ids);
  for (let v = 0; v < VOCAB; v++) {
    if (used.has(v)) continue;
    for (let d = 0; d < dim; d++) assert(actual[v * dim + d] === 0, `unused row ${v} holds ${actual[v * dim + d]}`);
  }
});

Deno.test("embedding split backward many tokens", async () => {
  // Both dOut (800 x 25) and the gradient exceed the limit; ids repeat across token windows.
  const dim = WIDTH, n = 800, vocab = VOCAB;
  const ids = randomIds(n, 50, 59); // ids below 50 repeat about 16 times each
  ids.set([vocab - 1, vocab - 1], n - 2);
  const dOut = asF32(randomArray(n * dim, 60));
  const run = () => tidy(() => embeddingBackward(fromArray(ids, [n], "i32"), fromArray(dOut, [n, dim]), vocab));
  const first = await readAndDispose(run());
  const second = await readAndDispose(run());
  for (let i = 0; i < first.length; i++) {
    assert(Object.is(first[i], second[i]), `element ${i} differs between runs: ${first[i]} and ${second[i]}`);
  }
  // About 16 f32 terms of size <= 1 per element.
  assertClose(first, refScatter(ids, dOut, dim, 0, vocab), 1e-5, 1e-6, "token windows");
});

Deno.test("embedding split backward row range", async () => {
  // A gradient chunk [100, 1001) that is itself larger than the limit.
  const dim = WIDTH, n = 120, rowOffset = 100, rows = VOCAB - 100;
  const ids = randomIds(n, VOCAB, 61);
  ids.set([rowOffset - 1, rowOffset, VOCAB - 1, VOCAB - 1]);
  const dOut = asF32(randomArray(n * dim, 62));
  const grad = tidy(() => embeddingBackward(fromArray(ids, [n], "i32"), fromArray(dOut, [n, dim]), VOCAB, { rowOffset, rows }));
  assert(grad.shape.join() === [rows, dim].join(), `shape [${grad.shape}]`);
  // Sums of a few f32 terms of size <= 1.
  assertClose(await readAndDispose(grad), refScatter(ids, dOut, dim, rowOffset, rows), 1e-6, 1e-6, "row range");
});

Deno.test("embedding fast path dispatches", async () => {
  // A table, output and gradient below the limit keep one gather and one zero + scatter pair.
  const vocab = 50, dim = WIDTH, n = 40;
  const ids = randomIds(n, vocab, 63);
  const table = asF32(randomArray(vocab * dim, 64));
  const dOut = asF32(randomArray(n * dim, 65));
  const idsT = fromArray(ids, [n], "i32");
  const gather = countDispatches(() => tidy(() => embedding(idsT, fromArray(table, [vocab, dim]))));
  const backward = countDispatches(() => tidy(() => embeddingBackward(idsT, fromArray(dOut, [n, dim]), vocab)));
  idsT.dispose();
  assert(gather.dispatches === 1, `gather: ${gather.dispatches} dispatches, expected 1`);
  assert(backward.dispatches === 2, `backward: ${backward.dispatches} dispatches, expected 2`);
  assertClose(await readAndDispose(gather.result), refGather(ids, table, vocab, dim), 0, 0, "fast gather"); // copies: exact
  // Sums of a few f32 terms of size <= 1.
  assertClose(await readAndDispose(backward.result), refScatter(ids, dOut, dim, 0, vocab), 1e-6, 1e-6, "fast backward");
});
