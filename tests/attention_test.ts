import { fromArray, type Tensor, tidy } from "../engine/tensor.ts";
import {
  attention,
  ATTENTION_MAX_HEAD_DIM,
  ATTENTION_MAX_KEYS,
  attentionBackward,
  attentionBackwardPacked,
  type AttentionOptions,
  splitPackedQkv,
} from "../kernels/attention.ts";
import { assert, assertClose, dot, finiteDifferences, gpuReady, randomArray } from "./testing.ts";

await gpuReady();

interface Case {
  batch: number;
  heads: number;
  kvHeads?: number; // key/value heads, default `heads`
  tq: number;
  tk: number;
  headDim: number;
  causal: boolean;
  mask: Float64Array | null; // (B, Tk), 1 = real key, 0 = padded
  scale?: number;
}

interface Inputs {
  q: Float64Array; // (B, Tq, H * Dh)
  k: Float64Array; // (B, Tk, KV * Dh)
  v: Float64Array; // (B, Tk, KV * Dh)
  dOut: Float64Array; // (B, Tq, H * Dh)
}

interface Results {
  out: Float64Array | Float32Array;
  probs: Float64Array | Float32Array;
  dq: Float64Array | Float32Array;
  dk: Float64Array | Float32Array;
  dv: Float64Array | Float32Array;
}

// Rounds to f32 so the float64 reference gets exactly the values uploaded to the GPU.
function f32Values(values: Float64Array): Float64Array {
  return Float64Array.from(Float32Array.from(values));
}

function kvHeadsOf(c: Case): number {
  return c.kvHeads ?? c.heads;
}

function makeInputs(c: Case, seed: number): Inputs {
  const width = c.heads * c.headDim;
  const kvWidth = kvHeadsOf(c) * c.headDim;
  return {
    q: f32Values(randomArray(c.batch * c.tq * width, seed)),
    k: f32Values(randomArray(c.batch * c.tk * kvWidth, seed + 1)),
    v: f32Values(randomArray(c.batch * c.tk * kvWidth, seed + 2)),
    dOut: f32Values(randomArray(c.batch * c.tq * width, seed + 3)),
  };
}

// Hugging Face's repeat_kv: copies key/value head g to query heads g * n .. g * n + n - 1, with
// n = H / KV, turning (B, T, KV * Dh) into (B, T, H * Dh).
function repeatKv(c: Case, x: Float64Array, t: number): Float64Array {
  const kvHeads = kvHeadsOf(c);
  const repeats = c.heads / kvHeads;
  const out = new Float64Array(c.batch * t * c.heads * c.headDim);
  for (let r = 0; r < c.batch * t; r++) {
    for (let h = 0; h < c.heads; h++) {
      const g = Math.floor(h / repeats);
      for (let d = 0; d < c.headDim; d++) {
        out[(r * c.heads + h) * c.headDim + d] = x[(r * kvHeads + g) * c.headDim + d];
      }
    }
  }
  return out;
}

// Adjoint of repeatKv: sums the gradients of the query heads that share a key/value head.
function sumRepeatedKv(c: Case, dx: Float64Array, t: number): Float64Array {
  const kvHeads = kvHeadsOf(c);
  const repeats = c.heads / kvHeads;
  const out = new Float64Array(c.batch * t * kvHeads * c.headDim);
  for (let r = 0; r < c.batch * t; r++) {
    for (let h = 0; h < c.heads; h++) {
      const g = Math.floor(h / repeats);
      for (let d = 0; d < c.headDim; d++) {
        out[(r * kvHeads + g) * c.headDim + d] += dx[(r * c.heads + h) * c.headDim + d];
      }
    }
  }
  return out;
}

function caseScale(c: Case): number {
  return c.scale ?? 1 / Math.sqrt(c.headDim);
}

function visible(c: Case, b: number, i: number, j: number): boolean {
  if (c.causal && j > i + c.tk - c.tq) return false;
  return !c.mask || c.mask[b * c.tk + j] !== 0;
}

// float64 attention with plain loops. Rows without a visible key give P = 0 and out = 0.
// k and v have KV heads and are expanded to H heads with repeatKv first.
function referenceForward(c: Case, q: Float64Array, kvK: Float64Array, kvV: Float64Array) {
  const { batch, heads, tq, tk, headDim } = c;
  const k = repeatKv(c, kvK, tk);
  const v = repeatKv(c, kvV, tk);
  const width = heads * headDim;
  const scale = caseScale(c);
  const out = new Float64Array(batch * tq * width);
  const probs = new Float64Array(batch * heads * tq * tk);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < tq; i++) {
        const scores = new Float64Array(tk);
        let max = -Infinity;
        for (let j = 0; j < tk; j++) {
          if (!visible(c, b, i, j)) continue;
          let s = 0;
          for (let d = 0; d < headDim; d++) {
            s += q[(b * tq + i) * width + h * headDim + d] *
              k[(b * tk + j) * width + h * headDim + d];
          }
          scores[j] = scale * s;
          max = Math.max(max, scores[j]);
        }
        let total = 0;
        const row = ((b * heads + h) * tq + i) * tk;
        for (let j = 0; j < tk; j++) {
          probs[row + j] = visible(c, b, i, j) ? Math.exp(scores[j] - max) : 0;
          total += probs[row + j];
        }
        for (let j = 0; j < tk; j++) probs[row + j] = total > 0 ? probs[row + j] / total : 0;
        for (let d = 0; d < headDim; d++) {
          let s = 0;
          for (let j = 0; j < tk; j++) {
            s += probs[row + j] * v[(b * tk + j) * width + h * headDim + d];
          }
          out[(b * tq + i) * width + h * headDim + d] = s;
        }
      }
    }
  }
  return { out, probs };
}

// Gradients per query head against the repeated k and v, then summed back to KV heads.
function referenceBackward(c: Case, inputs: Inputs): Results {
  const { batch, heads, tq, tk, headDim } = c;
  const width = heads * headDim;
  const scale = caseScale(c);
  const { out, probs } = referenceForward(c, inputs.q, inputs.k, inputs.v);
  const x = { ...inputs, k: repeatKv(c, inputs.k, tk), v: repeatKv(c, inputs.v, tk) };
  const dq = new Float64Array(x.q.length);
  const dk = new Float64Array(x.k.length);
  const dv = new Float64Array(x.v.length);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < tq; i++) {
        const row = ((b * heads + h) * tq + i) * tk;
        const qi = (b * tq + i) * width + h * headDim;
        const dp = new Float64Array(tk);
        let rowDot = 0;
        for (let j = 0; j < tk; j++) {
          const kj = (b * tk + j) * width + h * headDim;
          for (let d = 0; d < headDim; d++) dp[j] += x.dOut[qi + d] * x.v[kj + d];
          rowDot += probs[row + j] * dp[j];
        }
        for (let j = 0; j < tk; j++) {
          const kj = (b * tk + j) * width + h * headDim;
          const p = probs[row + j];
          const ds = p * (dp[j] - rowDot);
          for (let d = 0; d < headDim; d++) {
            dq[qi + d] += scale * ds * x.k[kj + d];
            dk[kj + d] += scale * ds * x.q[qi + d];
            dv[kj + d] += p * x.dOut[qi + d];
          }
        }
      }
    }
  }
  return { out, probs, dq, dk: sumRepeatedKv(c, dk, tk), dv: sumRepeatedKv(c, dv, tk) };
}

// Interleaves separate q, k, v rows into one (B, T, (H + 2 * KV) * Dh) array, which needs
// Tq = Tk.
function packQkv(c: Case, x: Inputs): Float64Array {
  const width = c.heads * c.headDim;
  const kvWidth = kvHeadsOf(c) * c.headDim;
  const packedWidth = width + 2 * kvWidth;
  const rows = c.batch * c.tq;
  const qkv = new Float64Array(rows * packedWidth);
  for (let r = 0; r < rows; r++) {
    qkv.set(x.q.subarray(r * width, (r + 1) * width), r * packedWidth);
    qkv.set(x.k.subarray(r * kvWidth, (r + 1) * kvWidth), r * packedWidth + width);
    qkv.set(x.v.subarray(r * kvWidth, (r + 1) * kvWidth), r * packedWidth + width + kvWidth);
  }
  return qkv;
}

function columnSlice(
  packed: Float32Array,
  rows: number,
  rowWidth: number,
  offset: number,
  width: number,
): Float32Array {
  const out = new Float32Array(rows * width);
  for (let r = 0; r < rows; r++) {
    out.set(packed.subarray(r * rowWidth + offset, r * rowWidth + offset + width), r * width);
  }
  return out;
}

interface GpuLayout {
  packedInput?: boolean; // q, k, v as slices of one tensor
  packedGrad?: boolean; // dq, dk, dv in one tensor
}

async function runGpu(c: Case, x: Inputs, layout: GpuLayout = {}): Promise<Results> {
  const { batch, heads, tq, tk, headDim } = c;
  const kvHeads = kvHeadsOf(c);
  const width = heads * headDim;
  const kvWidth = kvHeads * headDim;
  const packedWidth = width + 2 * kvWidth;
  // Cases without kvHeads leave the option out, as multi-head callers do.
  const packedHeads = c.kvHeads === undefined ? undefined : { heads, kvHeads };
  const tensors = tidy(() => {
    let operands: Pick<AttentionOptions, "q" | "k" | "v">;
    if (layout.packedInput) {
      operands = splitPackedQkv(fromArray(packQkv(c, x), [batch, tq, packedWidth]), packedHeads);
    } else {
      operands = {
        q: fromArray(x.q, [batch, tq, width]),
        k: fromArray(x.k, [batch, tk, kvWidth]),
        v: fromArray(x.v, [batch, tk, kvWidth]),
      };
    }
    const options: AttentionOptions = {
      ...operands,
      heads,
      kvHeads: c.kvHeads,
      causal: c.causal,
      keyPaddingMask: c.mask ? fromArray(c.mask, [batch, tk]) : null,
      scale: c.scale,
    };
    const { out, probs } = attention(options);
    const dOut = fromArray(x.dOut, [batch, tq, width]);
    if (layout.packedGrad) {
      return { out, probs, grads: [attentionBackwardPacked({ ...options, probs, dOut })] };
    }
    const { dq, dk, dv } = attentionBackward({ ...options, probs, dOut });
    return { out, probs, grads: [dq, dk, dv] };
  });

  const read = async (t: Tensor) => {
    const values = await t.toFloat32();
    t.dispose();
    return values;
  };
  const out = await read(tensors.out);
  const probs = await read(tensors.probs);
  if (layout.packedGrad) {
    const dqkv = await read(tensors.grads[0]);
    const rows = batch * tq;
    return {
      out,
      probs,
      dq: columnSlice(dqkv, rows, packedWidth, 0, width),
      dk: columnSlice(dqkv, rows, packedWidth, width, kvWidth),
      dv: columnSlice(dqkv, rows, packedWidth, width + kvWidth, kvWidth),
    };
  }
  const [dq, dk, dv] = tensors.grads;
  return { out, probs, dq: await read(dq), dk: await read(dk), dv: await read(dv) };
}

// f32 sums of up to 1024 products of values in [-1, 1]. The worst observed error uses 15% of
// this bound (dv summed over 520 queries) and under 4% in every other case, while indexing or
// masking mistakes give errors of order 0.1.
const ATOL = 1e-5;
const RTOL = 1e-4;

function compareAll(
  label: string,
  actual: Results,
  expected: Results,
  atol = ATOL,
  rtol = RTOL,
): void {
  for (const key of ["out", "probs", "dq", "dk", "dv"] as const) {
    assertClose(actual[key], expected[key], atol, rtol, `${label} ${key}`);
  }
}

// Asserts two results are bit-identical, for paths that run the same arithmetic.
function assertIdentical(label: string, a: Results, b: Results): void {
  for (const key of ["out", "probs", "dq", "dk", "dv"] as const) {
    assertClose(a[key], b[key], 0, 0, `${label} ${key}`);
  }
}

async function checkCase(
  label: string,
  c: Case,
  seed: number,
): Promise<{ gpu: Results; ref: Results; x: Inputs }> {
  const x = makeInputs(c, seed);
  const ref = referenceBackward(c, x);
  const gpu = await runGpu(c, x);
  compareAll(label, gpu, ref);
  return { gpu, ref, x };
}

function assertAllZero(values: ArrayLike<number>, label: string): void {
  for (let i = 0; i < values.length; i++) {
    assert(values[i] === 0, `${label}: element ${i} is ${values[i]}, expected exactly 0`);
  }
}

// Mask with the last `padded[b]` keys of batch entry b marked as padding.
function paddingMask(batch: number, tk: number, padded: number[]): Float64Array {
  const mask = new Float64Array(batch * tk).fill(1);
  for (let b = 0; b < batch; b++) {
    for (let j = tk - padded[b]; j < tk; j++) mask[b * tk + j] = 0;
  }
  return mask;
}

// Rows [from, from + count) of a (B, T, W) array for every batch entry.
function timeRows(
  values: ArrayLike<number>,
  batch: number,
  t: number,
  w: number,
  from: number,
  count: number,
): Float64Array {
  const out = new Float64Array(batch * count * w);
  for (let b = 0; b < batch; b++) {
    for (let r = 0; r < count; r++) {
      for (let e = 0; e < w; e++) out[(b * count + r) * w + e] = values[(b * t + from + r) * w + e];
    }
  }
  return out;
}

// --- The reference gradient itself, against finite differences of the reference forward.

const fdCases: [string, Case][] = [
  ["grouped H6 KV2", {
    batch: 2,
    heads: 6,
    kvHeads: 2,
    tq: 5,
    tk: 5,
    headDim: 4,
    causal: true,
    mask: paddingMask(2, 5, [0, 2]),
  }],
  ["grouped H4 KV1 Tq2 Tk6", {
    batch: 1,
    heads: 4,
    kvHeads: 1,
    tq: 2,
    tk: 6,
    headDim: 3,
    causal: true,
    mask: null,
  }],
  ["causal padded", {
    batch: 2,
    heads: 3,
    tq: 7,
    tk: 7,
    headDim: 12,
    causal: true,
    mask: paddingMask(2, 7, [0, 3]),
  }],
  ["block Tq4 Tk10", {
    batch: 1,
    heads: 2,
    tq: 4,
    tk: 10,
    headDim: 5,
    causal: true,
    mask: null,
    scale: 0.7,
  }],
  ["fully masked entry", {
    batch: 2,
    heads: 2,
    tq: 3,
    tk: 4,
    headDim: 3,
    causal: false,
    mask: paddingMask(2, 4, [4, 1]),
  }],
];

for (const [name, c] of fdCases) {
  Deno.test(`attention reference gradient ${name}`, () => {
    const x = makeInputs(c, 11);
    const weights = randomArray(c.batch * c.tq * c.heads * c.headDim, 99);
    const ref = referenceBackward({ ...c }, { ...x, dOut: weights });
    const loss = (q: Float64Array, k: Float64Array, v: Float64Array) =>
      dot(referenceForward(c, q, k, v).out, weights);
    const fdQ = finiteDifferences((q) => loss(q, x.k, x.v), x.q);
    const fdK = finiteDifferences((k) => loss(x.q, k, x.v), x.k);
    const fdV = finiteDifferences((v) => loss(x.q, x.k, v), x.v);
    // Central differences with eps = 1e-6 in float64: truncation and rounding stay below 1e-8.
    assertClose(ref.dq, fdQ, 1e-7, 1e-6, `${name} dq`);
    assertClose(ref.dk, fdK, 1e-7, 1e-6, `${name} dk`);
    assertClose(ref.dv, fdV, 1e-7, 1e-6, `${name} dv`);
  });
}

// --- GPU against the reference.

Deno.test("attention B1 T1", async () => {
  for (const causal of [false, true]) {
    const c: Case = { batch: 1, heads: 1, tq: 1, tk: 1, headDim: 1, causal, mask: null };
    const { gpu } = await checkCase(`B1 T1 causal=${causal}`, c, 1);
    // One key: its probability is exactly 1 and the output is v itself.
    assert(gpu.probs[0] === 1, `probability of the only key is ${gpu.probs[0]}`);
  }
});

Deno.test("attention causal padded Dh12", async () => {
  // Batch entry 1 has its last 3 keys padded. Key 0 is real, so every row attends to a key.
  const mask = paddingMask(2, 7, [0, 3]);
  const c: Case = { batch: 2, heads: 3, tq: 7, tk: 7, headDim: 12, causal: true, mask };
  const { gpu } = await checkCase("causal padded", c, 2);
  for (let h = 0; h < 3; h++) {
    for (let i = 0; i < 7; i++) {
      for (let j = 4; j < 7; j++) {
        const p = gpu.probs[((1 * 3 + h) * 7 + i) * 7 + j];
        assert(p === 0, `padded key ${j} has probability ${p}`);
      }
    }
  }
});

Deno.test("attention padded not causal", async () => {
  const c: Case = {
    batch: 3,
    heads: 2,
    tq: 6,
    tk: 6,
    headDim: 12,
    causal: false,
    mask: paddingMask(3, 6, [1, 0, 5]),
  };
  await checkCase("padded", c, 3);
});

Deno.test("attention fully masked entry", async () => {
  for (const causal of [false, true]) {
    const batch = 2, heads = 2, t = 5, headDim = 12;
    const c: Case = {
      batch,
      heads,
      tq: t,
      tk: t,
      headDim,
      causal,
      mask: paddingMask(batch, t, [t, 2]),
    };
    const { gpu } = await checkCase(`fully masked causal=${causal}`, c, 4);
    // Batch entry 0 has no real key: every row of it is fully masked and defined as zeros.
    const rowWidth = t * heads * headDim;
    assertAllZero(gpu.out.subarray(0, rowWidth), "masked out");
    assertAllZero(gpu.probs.subarray(0, heads * t * t), "masked probs");
    assertAllZero(gpu.dq.subarray(0, rowWidth), "masked dq");
    assertAllZero(gpu.dk.subarray(0, rowWidth), "masked dk");
    assertAllZero(gpu.dv.subarray(0, rowWidth), "masked dv");
  }
});

Deno.test("attention decode step Tq1 Tk9", async () => {
  const batch = 2, heads = 2, t = 9, headDim = 64;
  const full: Case = { batch, heads, tq: t, tk: t, headDim, causal: true, mask: null };
  const x = makeInputs(full, 5);
  const fullGpu = await runGpu(full, x);
  compareAll("full causal", fullGpu, referenceBackward(full, x));

  const width = heads * headDim;
  const step: Case = { ...full, tq: 1 };
  const stepInputs = {
    ...x,
    q: timeRows(x.q, batch, t, width, t - 1, 1),
    dOut: timeRows(x.dOut, batch, t, width, t - 1, 1),
  };
  const stepGpu = await runGpu(step, stepInputs);
  compareAll("decode step", stepGpu, referenceBackward(step, stepInputs));
  // The last query row of full causal attention runs the same arithmetic in the same order.
  assertClose(
    stepGpu.out,
    timeRows(fullGpu.out, batch, t, width, t - 1, 1),
    0,
    0,
    "step vs last row out",
  );
  assertClose(
    stepGpu.probs,
    timeRows(fullGpu.probs, batch * heads, t, t, t - 1, 1),
    0,
    0,
    "step vs last row probs",
  );
});

Deno.test("attention block Tq4 Tk10", async () => {
  const batch = 2, heads = 3, t = 10, block = 4, headDim = 12;
  const mask = paddingMask(batch, t, [0, 2]);
  const full: Case = { batch, heads, tq: t, tk: t, headDim, causal: true, mask };
  const x = makeInputs(full, 6);
  const fullGpu = await runGpu(full, x);

  const width = heads * headDim;
  const blockCase: Case = { ...full, tq: block };
  const blockInputs = {
    ...x,
    q: timeRows(x.q, batch, t, width, t - block, block),
    dOut: timeRows(x.dOut, batch, t, width, t - block, block),
  };
  const blockGpu = await runGpu(blockCase, blockInputs);
  compareAll("block", blockGpu, referenceBackward(blockCase, blockInputs));
  assertClose(
    blockGpu.out,
    timeRows(fullGpu.out, batch, t, width, t - block, block),
    0,
    0,
    "block vs last rows out",
  );
  assertClose(
    blockGpu.probs,
    timeRows(fullGpu.probs, batch * heads, t, t, t - block, block),
    0,
    0,
    "block vs last rows probs",
  );
});

Deno.test("attention Tq above Tk causal", async () => {
  // Rows 0 and 1 come before the first key under the causal rule and see nothing.
  const c: Case = { batch: 1, heads: 2, tq: 5, tk: 3, headDim: 7, causal: true, mask: null };
  const { gpu } = await checkCase("Tq5 Tk3", c, 7);
  assertAllZero(gpu.out.subarray(0, 2 * 2 * 7), "rows without keys");
});

Deno.test("attention packed vs separate", async () => {
  const c: Case = {
    batch: 2,
    heads: 3,
    tq: 7,
    tk: 7,
    headDim: 12,
    causal: true,
    mask: paddingMask(2, 7, [0, 3]),
  };
  const x = makeInputs(c, 8);
  const separate = await runGpu(c, x);
  compareAll("separate", separate, referenceBackward(c, x));
  // Same arithmetic on the same values, only addressed differently: results must match exactly.
  assertIdentical("packed input", await runGpu(c, x, { packedInput: true }), separate);
  assertIdentical("packed grad", await runGpu(c, x, { packedGrad: true }), separate);
  assertIdentical(
    "packed both",
    await runGpu(c, x, { packedInput: true, packedGrad: true }),
    separate,
  );
});

Deno.test("attention mapper H16 Dh48 T45", async () => {
  const c: Case = {
    batch: 2,
    heads: 16,
    tq: 45,
    tk: 45,
    headDim: 48,
    causal: false,
    mask: paddingMask(2, 45, [0, 13]),
  };
  await checkCase("H16 Dh48 T45", c, 9);
  await checkCase("H16 Dh48 T45 causal", { ...c, causal: true, mask: null }, 10);
});

Deno.test("attention mapper H16 Dh48 T1", async () => {
  await checkCase("H16 Dh48 T1", {
    batch: 2,
    heads: 16,
    tq: 1,
    tk: 1,
    headDim: 48,
    causal: false,
    mask: null,
  }, 12);
});

Deno.test("attention Tk130 scale override", async () => {
  // 130 keys take three strides of the 64-thread workgroup. The scale replaces 1 / sqrt(Dh).
  const mask = paddingMask(2, 130, [0, 61]);
  const c: Case = {
    batch: 2,
    heads: 2,
    tq: 3,
    tk: 130,
    headDim: 12,
    causal: false,
    mask,
    scale: 0.3,
  };
  await checkCase("Tk130", c, 13);
  await checkCase("Tk130 causal", { ...c, causal: true }, 14);
});

Deno.test("attention max keys", async () => {
  const c: Case = {
    batch: 1,
    heads: 1,
    tq: 2,
    tk: ATTENTION_MAX_KEYS,
    headDim: 8,
    causal: true,
    mask: null,
  };
  await checkCase(`Tk${ATTENTION_MAX_KEYS}`, c, 15);
});

Deno.test("attention rejects too many keys", () => {
  const tk = ATTENTION_MAX_KEYS + 1;
  const error = captureError(() =>
    tidy(() => {
      const q = fromArray(new Float32Array(8), [1, 1, 8]);
      const kv = fromArray(new Float32Array(tk * 8), [1, tk, 8]);
      attention({ q, k: kv, v: kv, heads: 1 });
    })
  );
  assert(error.includes("ATTENTION_MAX_KEYS"), `unexpected error: ${error}`);
});

Deno.test("attention rejects large head size", () => {
  const width = ATTENTION_MAX_HEAD_DIM + 1;
  const error = captureError(() =>
    tidy(() => {
      const x = fromArray(new Float32Array(2 * width), [1, 2, width]);
      attention({ q: x, k: x, v: x, heads: 1 });
    })
  );
  assert(error.includes("ATTENTION_MAX_HEAD_DIM"), `unexpected error: ${error}`);
});

Deno.test("attention grid above 65535 rows", async () => {
  // 2 * 64 * 520 = 66560 query rows exceed one dispatch dimension, so the grid becomes 2-D.
  const c: Case = { batch: 2, heads: 64, tq: 520, tk: 2, headDim: 1, causal: false, mask: null };
  await checkCase("66560 rows", c, 17);
});

Deno.test("attention backward deterministic", async () => {
  const c: Case = {
    batch: 2,
    heads: 3,
    tq: 70,
    tk: 70,
    headDim: 12,
    causal: true,
    mask: paddingMask(2, 70, [5, 0]),
  };
  const x = makeInputs(c, 16);
  const first = await runGpu(c, x);
  compareAll("T70", first, referenceBackward(c, x));
  assertIdentical("second run", await runGpu(c, x), first);
});

// --- Grouped-query attention: k and v have fewer heads than q.

Deno.test("attention grouped H6 KV2 Dh8", async () => {
  const c: Case = {
    batch: 2,
    heads: 6,
    kvHeads: 2,
    tq: 7,
    tk: 7,
    headDim: 8,
    causal: true,
    mask: paddingMask(2, 7, [0, 3]),
  };
  await checkCase("H6 KV2 causal padded", c, 21);
  await checkCase("H6 KV2 padded", { ...c, causal: false, mask: paddingMask(2, 7, [2, 0]) }, 22);
});

Deno.test("attention grouped H6 KV1 Dh8", async () => {
  const c: Case = {
    batch: 2,
    heads: 6,
    kvHeads: 1,
    tq: 7,
    tk: 7,
    headDim: 8,
    causal: true,
    mask: paddingMask(2, 7, [1, 4]),
  };
  await checkCase("H6 KV1 causal padded", c, 23);
  await checkCase("H6 KV1 Tq3 Tk7", { ...c, tq: 3 }, 24);
});

Deno.test("attention grouped qwen H14 KV2 Dh64", async () => {
  // Qwen2.5-0.5B: 14 query heads of size 64 share 2 key/value heads.
  const c: Case = {
    batch: 2,
    heads: 14,
    kvHeads: 2,
    tq: 13,
    tk: 13,
    headDim: 64,
    causal: true,
    mask: paddingMask(2, 13, [0, 5]),
  };
  const { gpu, x } = await checkCase("H14 KV2 causal padded", c, 25);
  // Each dk and dv element sums 7 heads in a fixed order, so a second run repeats every bit.
  assertIdentical("H14 KV2 second run", await runGpu(c, x), gpu);
});

Deno.test("attention grouped T70 two strides", async () => {
  // 70 queries take two strides of the 64-thread workgroup when a key gathers its column.
  const c: Case = {
    batch: 1,
    heads: 4,
    kvHeads: 2,
    tq: 70,
    tk: 70,
    headDim: 12,
    causal: true,
    mask: paddingMask(1, 70, [6]),
  };
  await checkCase("H4 KV2 T70", c, 26);
});

Deno.test("attention grouped fully masked entry", async () => {
  const batch = 2, heads = 6, kvHeads = 2, t = 5, headDim = 8;
  const c: Case = {
    batch,
    heads,
    kvHeads,
    tq: t,
    tk: t,
    headDim,
    causal: true,
    mask: paddingMask(batch, t, [t, 1]),
  };
  const { gpu } = await checkCase("grouped fully masked", c, 27);
  // Batch entry 0 has no real key, and its rows are defined as zeros.
  assertAllZero(gpu.out.subarray(0, t * heads * headDim), "masked out");
  assertAllZero(gpu.probs.subarray(0, heads * t * t), "masked probs");
  assertAllZero(gpu.dq.subarray(0, t * heads * headDim), "masked dq");
  assertAllZero(gpu.dk.subarray(0, t * kvHeads * headDim), "masked dk");
  assertAllZero(gpu.dv.subarray(0, t * kvHeads * headDim), "masked dv");
});

Deno.test("attention grouped decode step Tq1", async () => {
  const batch = 2, heads = 14, kvHeads = 2, t = 9, headDim = 64;
  const mask = paddingMask(batch, t, [0, 3]);
  const full: Case = { batch, heads, kvHeads, tq: t, tk: t, headDim, causal: true, mask };
  const x = makeInputs(full, 28);
  const fullGpu = await runGpu(full, x);
  compareAll("grouped full", fullGpu, referenceBackward(full, x));

  const width = heads * headDim;
  const step: Case = { ...full, tq: 1 };
  const stepInputs = {
    ...x,
    q: timeRows(x.q, batch, t, width, t - 1, 1),
    dOut: timeRows(x.dOut, batch, t, width, t - 1, 1),
  };
  const stepGpu = await runGpu(step, stepInputs);
  compareAll("grouped step", stepGpu, referenceBackward(step, stepInputs));
  // The last row of full causal attention runs the same arithmetic in the same order.
  assertClose(
    stepGpu.out,
    timeRows(fullGpu.out, batch, t, width, t - 1, 1),
    0,
    0,
    "grouped step vs last row out",
  );
  assertClose(
    stepGpu.probs,
    timeRows(fullGpu.probs, batch * heads, t, t, t - 1, 1),
    0,
    0,
    "grouped step vs last row probs",
  );
});

Deno.test("attention grouped vs repeated kv", async () => {
  // Multi-head attention on explicitly repeated k and v must give the grouped results: the
  // forward and dq run the same arithmetic, and dk, dv are the per-head gradients summed.
  const grouped: Case = {
    batch: 2,
    heads: 6,
    kvHeads: 2,
    tq: 6,
    tk: 6,
    headDim: 8,
    causal: true,
    mask: paddingMask(2, 6, [0, 2]),
  };
  const x = makeInputs(grouped, 29);
  const groupedGpu = await runGpu(grouped, x);
  const repeated: Case = { ...grouped, kvHeads: undefined };
  const repeatedInputs = { ...x, k: repeatKv(grouped, x.k, 6), v: repeatKv(grouped, x.v, 6) };
  const repeatedGpu = await runGpu(repeated, repeatedInputs);
  for (const key of ["out", "probs", "dq"] as const) {
    assertClose(groupedGpu[key], repeatedGpu[key], 0, 0, `grouped vs repeated ${key}`);
  }
  const dk = sumRepeatedKv(grouped, Float64Array.from(repeatedGpu.dk), 6);
  const dv = sumRepeatedKv(grouped, Float64Array.from(repeatedGpu.dv), 6);
  // Three f32 head sums added in another order: differences stay at f32 rounding of values < 10.
  assertClose(groupedGpu.dk, dk, 1e-6, 1e-5, "grouped vs repeated dk");
  assertClose(groupedGpu.dv, dv, 1e-6, 1e-5, "grouped vs repeated dv");
});

Deno.test("attention grouped packed vs separate", async () => {
  const c: Case = {
    batch: 2,
    heads: 6,
    kvHeads: 2,
    tq: 7,
    tk: 7,
    headDim: 8,
    causal: true,
    mask: paddingMask(2, 7, [0, 3]),
  };
  const x = makeInputs(c, 30);
  const separate = await runGpu(c, x);
  compareAll("grouped separate", separate, referenceBackward(c, x));
  assertIdentical(
    "grouped packed both",
    await runGpu(c, x, { packedInput: true, packedGrad: true }),
    separate,
  );
});

Deno.test("attention kvHeads equal to heads", async () => {
  // An explicit kvHeads = heads is the default path: bit-identical results.
  const c: Case = {
    batch: 2,
    heads: 3,
    tq: 6,
    tk: 6,
    headDim: 12,
    causal: true,
    mask: paddingMask(2, 6, [0, 2]),
  };
  const x = makeInputs(c, 31);
  const implicit = await runGpu(c, x);
  assertIdentical("kvHeads = heads", await runGpu({ ...c, kvHeads: 3 }, x), implicit);
});

Deno.test("attention rejects invalid kvHeads", () => {
  const q = new Float32Array(6 * 8);
  const kv = new Float32Array(4 * 8);
  const notDivisor = captureError(() =>
    tidy(() => {
      const k = fromArray(kv, [1, 1, 4 * 8]);
      attention({ q: fromArray(q, [1, 1, 6 * 8]), k, v: k, heads: 6, kvHeads: 4 });
    })
  );
  assert(notDivisor.includes("kvHeads"), `unexpected error: ${notDivisor}`);
  const wrongWidth = captureError(() =>
    tidy(() => {
      const k = fromArray(kv, [1, 1, 4 * 8]);
      attention({ q: fromArray(q, [1, 1, 6 * 8]), k, v: k, heads: 6, kvHeads: 2 });
    })
  );
  assert(wrongWidth.includes("k and v widths 32, 32"), `unexpected error: ${wrongWidth}`);
});

function captureError(fn: () => void): string {
  try {
    fn();
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
  throw new Error("expected an error, but none was thrown");
}
