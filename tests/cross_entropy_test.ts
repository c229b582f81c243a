import { rt } from "../engine/runtime.ts";
import { fromArray, Tensor, tidy } from "../engine/tensor.ts";
import { crossEntropy, crossEntropyBackward, IGNORE_INDEX, validateLabels } from "../kernels/cross_entropy.ts";
import { assert, assertClose, finiteDifferences, gpuReady, randomArray } from "./testing.ts";

// A 1 MiB binding limit makes 37 rows of 50257 logits span several bindings, which real limits
// only do past 128 MiB. The variable is read once, when the device is created, and restored so
// that other test files keep the real limit.
const FORCED_BINDING_BYTES = 1 << 20;
const previousLimit = Deno.env.get("CLIP_CAPTIONER_MAX_BINDING");
Deno.env.set("CLIP_CAPTIONER_MAX_BINDING", String(FORCED_BINDING_BYTES));
await gpuReady();
if (previousLimit === undefined) Deno.env.delete("CLIP_CAPTIONER_MAX_BINDING");
else Deno.env.set("CLIP_CAPTIONER_MAX_BINDING", previousLimit);

const VOCAB = 50257; // GPT-2's vocabulary

// ---- float64 references ----

function isIgnored(label: number, ignoreIndex: number): boolean {
  return label === ignoreIndex;
}

// Mean of logsumexp(row) - row[label] over non-ignored rows; 0 when all are ignored.
function refLoss(logits: ArrayLike<number>, labels: ArrayLike<number>, cols: number, ignoreIndex = IGNORE_INDEX): number {
  let total = 0;
  let count = 0;
  for (let r = 0; r < labels.length; r++) {
    if (isIgnored(labels[r], ignoreIndex)) continue;
    let m = -Infinity;
    for (let c = 0; c < cols; c++) m = Math.max(m, logits[r * cols + c]);
    let s = 0;
    for (let c = 0; c < cols; c++) s += Math.exp(logits[r * cols + c] - m);
    total += m + Math.log(s) - logits[r * cols + labels[r]];
    count++;
  }
  return count > 0 ? total / count : 0;
}

function refBackward(
  logits: ArrayLike<number>,
  labels: ArrayLike<number>,
  cols: number,
  gradLoss: number,
  ignoreIndex = IGNORE_INDEX,
): Float64Array {
  const grad = new Float64Array(labels.length * cols);
  const count = Array.from(labels).filter((l) => !isIgnored(l, ignoreIndex)).length;
  if (count === 0) return grad;
  for (let r = 0; r < labels.length; r++) {
    if (isIgnored(labels[r], ignoreIndex)) continue;
    let m = -Infinity;
    for (let c = 0; c < cols; c++) m = Math.max(m, logits[r * cols + c]);
    let s = 0;
    for (let c = 0; c < cols; c++) s += Math.exp(logits[r * cols + c] - m);
    for (let c = 0; c < cols; c++) {
      const p = Math.exp(logits[r * cols + c] - m) / s;
      grad[r * cols + c] = (p - (c === labels[r] ? 1 : 0)) * gradLoss / count;
    }
  }
  return grad;
}

// Labels in [0, cols) from a seed, with the rows in `ignored` set to the ignore index.
function makeLabels(rows: number, cols: number, seed: number, ignored: number[] = [], ignoreIndex = IGNORE_INDEX): Int32Array {
  const labels = Int32Array.from(randomArray(rows, seed, 0, cols), Math.floor);
  for (const r of ignored) labels[r] = ignoreIndex;
  return labels;
}

// f32 round trip, so that references see exactly the values the GPU holds.
function asF32(x: Float64Array): Float64Array {
  return Float64Array.from(Float32Array.from(x));
}

async function readAndDispose(t: Tensor): Promise<Float32Array> {
  const data = await t.toFloat32();
  t.dispose();
  return data;
}

interface GpuResult {
  loss: Float32Array;
  count: Float32Array;
  grad: Float32Array;
}

async function runGpu(logits: Float64Array, labels: Int32Array, cols: number, gradLoss: number, ignoreIndex = IGNORE_INDEX): Promise<GpuResult> {
  const rows = labels.length;
  const outputs = tidy(() => {
    const x = fromArray(logits, [rows, cols]);
    const y = fromArray(labels, [rows], "i32");
    const { loss, count } = crossEntropy(x, y, { ignoreIndex });
    const grad = crossEntropyBackward(x, y, fromArray([gradLoss], [1]), { ignoreIndex, count });
    return { loss, count, grad };
  });
  return {
    loss: await readAndDispose(outputs.loss),
    count: await readAndDispose(outputs.count),
    grad: await readAndDispose(outputs.grad),
  };
}

// ---- reference checked against finite differences ----

Deno.test("crossEntropy reference gradient", () => {
  const rows = 5, cols = 3, gradLoss = 0.7;
  const logits = randomArray(rows * cols, 1, -3, 3);
  const labels = makeLabels(rows, cols, 2, [1]);
  const numeric = finiteDifferences((x) => gradLoss * refLoss(x, labels, cols), logits);
  // Central differences with eps 1e-6 on a smooth function: truncation and rounding near 1e-10.
  assertClose(refBackward(logits, labels, cols, gradLoss), numeric, 1e-8, 1e-6, "reference vs finite differences");
});

Deno.test("crossEntropy reference gradient wide", () => {
  const rows = 2, cols = 300, gradLoss = 1.3;
  const logits = randomArray(rows * cols, 3, -5, 5);
  const labels = makeLabels(rows, cols, 4);
  const numeric = finiteDifferences((x) => gradLoss * refLoss(x, labels, cols), logits);
  assertClose(refBackward(logits, labels, cols, gradLoss), numeric, 1e-8, 1e-6, "reference vs finite differences"); // as above
});

// ---- GPU against the reference ----

const cases: { rows: number; cols: number; ignored: number[]; name: string }[] = [
  { rows: 1, cols: 3, ignored: [], name: "one row V=3" },
  { rows: 1, cols: VOCAB, ignored: [], name: "one row vocabulary" },
  { rows: 37, cols: 3, ignored: [0, 5, 36], name: "37 rows V=3 ignored" },
  { rows: 37, cols: VOCAB, ignored: [2, 3, 17, 36], name: "37 rows vocabulary ignored" },
  { rows: 9, cols: 257, ignored: [8], name: "9 rows V=257" },
];

for (const { rows, cols, ignored, name } of cases) {
  Deno.test(`crossEntropy ${name}`, async () => {
    const logits = asF32(randomArray(rows * cols, rows * 31 + cols, -4, 4));
    const labels = makeLabels(rows, cols, rows + cols, ignored);
    const gradLoss = 0.8;
    const gpu = await runGpu(logits, labels, cols, gradLoss);

    // Losses near log(V) <= 11 computed in f32: the log-sum-exp rounds at about 1e-6.
    assertClose(gpu.loss, [refLoss(logits, labels, cols)], 1e-5, 1e-6, `loss ${name}`);
    assertClose(gpu.count, [rows - ignored.length], 0, 0, `count ${name}`); // an exact integer
    // Gradients are probabilities scaled by 0.8 / count: f32 exp and division, relative 1e-6.
    assertClose(gpu.grad, refBackward(logits, labels, cols, gradLoss), 1e-8, 1e-5, `grad ${name}`);
    for (const r of ignored) {
      for (let c = 0; c < cols; c++) assert(gpu.grad[r * cols + c] === 0, `ignored row ${r} has gradient ${gpu.grad[r * cols + c]}`);
    }
  });
}

Deno.test("crossEntropy chunked bindings", () => {
  // Guards the forced limit that makes the vocabulary cases above run in several chunks.
  assert(rt().gpu.maxBindingBytes === FORCED_BINDING_BYTES, `binding limit is ${rt().gpu.maxBindingBytes}, so chunking is not exercised`);
  assert(37 * VOCAB * 4 > FORCED_BINDING_BYTES, "37 vocabulary rows fit in one binding");
});

Deno.test("crossEntropy all rows ignored", async () => {
  const rows = 4, cols = 7;
  const logits = asF32(randomArray(rows * cols, 5));
  const labels = makeLabels(rows, cols, 6, [0, 1, 2, 3]);
  const gpu = await runGpu(logits, labels, cols, 1);
  assertClose(gpu.loss, [0], 0, 0, "loss all ignored"); // defined as exactly 0, not NaN
  assertClose(gpu.count, [0], 0, 0, "count all ignored");
  assertClose(gpu.grad, new Float64Array(rows * cols), 0, 0, "grad all ignored"); // exactly 0
});

Deno.test("crossEntropy large logits", async () => {
  // exp(1000) overflows f32, so only a log-sum-exp that subtracts the maximum stays finite.
  const rows = 3, cols = 50;
  const logits = asF32(randomArray(rows * cols, 7, 980, 1000));
  const labels = makeLabels(rows, cols, 8);
  const gpu = await runGpu(logits, labels, cols, 1);
  // Inputs near 1000 have an f32 spacing of 6e-5, which lse - logit inherits.
  assertClose(gpu.loss, [refLoss(logits, labels, cols)], 2e-4, 0, "loss large logits");
  // x - max inherits an absolute error near 6e-5, so exp(x - max) is off by about 1e-4 relative.
  assertClose(gpu.grad, refBackward(logits, labels, cols, 1), 1e-7, 2e-4, "grad large logits");
});

Deno.test("crossEntropy custom ignore index", async () => {
  const rows = 6, cols = 11, ignoreIndex = -1;
  const logits = asF32(randomArray(rows * cols, 9));
  const labels = makeLabels(rows, cols, 10, [2], ignoreIndex);
  const gpu = await runGpu(logits, labels, cols, 2, ignoreIndex);
  assertClose(gpu.loss, [refLoss(logits, labels, cols, ignoreIndex)], 1e-6, 1e-6, "loss ignore -1"); // f32 rounding
  assertClose(gpu.count, [5], 0, 0, "count ignore -1");
  assertClose(gpu.grad, refBackward(logits, labels, cols, 2, ignoreIndex), 1e-8, 1e-5, "grad ignore -1"); // f32 rounding
});

Deno.test("crossEntropy backward recounts labels", async () => {
  // Without the forward's count, the backward pass counts the non-ignored labels itself.
  const rows = 5, cols = 9;
  const logits = asF32(randomArray(rows * cols, 11));
  const labels = makeLabels(rows, cols, 12, [1, 3]);
  const grad = tidy(() => {
    const x = fromArray(logits, [rows, cols]);
    return crossEntropyBackward(x, fromArray(labels, [rows], "i32"), fromArray([1.5], [1]));
  });
  // f32 softmax scaled by 1.5 / 3.
  assertClose(await readAndDispose(grad), refBackward(logits, labels, cols, 1.5), 1e-8, 1e-5, "grad without count");
});

Deno.test("crossEntropy out of range label", async () => {
  const rows = 4, cols = 5;
  const logits = asF32(randomArray(rows * cols, 13));
  const labels = Int32Array.from([1, cols, 2, IGNORE_INDEX]); // row 1 has an invalid label
  const gpu = await runGpu(logits, labels, cols, 1);
  assert(Number.isNaN(gpu.loss[0]), `loss is ${gpu.loss[0]}, expected NaN`);
  assertClose(gpu.count, [3], 0, 0, "count with invalid label"); // invalid labels are counted
  for (let c = 0; c < cols; c++) {
    assert(Number.isNaN(gpu.grad[cols + c]), `gradient of the invalid row is ${gpu.grad[cols + c]}, expected NaN`);
    assert(Number.isFinite(gpu.grad[c]), `valid row 0 has gradient ${gpu.grad[c]}`);
    assert(gpu.grad[3 * cols + c] === 0, `ignored row has gradient ${gpu.grad[3 * cols + c]}`);
  }
});

Deno.test("crossEntropy negative label", async () => {
  const labels = Int32Array.from([-3, 0]);
  const gpu = await runGpu(asF32(randomArray(2 * 4, 14)), labels, 4, 1);
  assert(Number.isNaN(gpu.loss[0]), `loss is ${gpu.loss[0]}, expected NaN`);
});

Deno.test("validateLabels rejects out of range", () => {
  validateLabels([0, 4, IGNORE_INDEX], 5);
  let message = "";
  try {
    validateLabels([0, 5], 5);
  } catch (error) {
    message = (error as Error).message;
  }
  assert(message.includes("label 5 at position 1"), `expected an error naming label 5, got "${message}"`);
});

Deno.test("crossEntropy label count mismatch", () => {
  let message = "";
  tidy(() => {
    try {
      crossEntropy(fromArray(new Float32Array(6), [2, 3]), fromArray([0, 1, 2], [3], "i32"));
    } catch (error) {
      message = (error as Error).message;
    }
  });
  assert(message.includes("3 labels"), `expected an error about 3 labels, got "${message}"`);
});
