import { fromArray, type Tensor, tidy } from "../engine/tensor.ts";
import { rmsNorm, rmsNormBackward } from "../kernels/rmsnorm.ts";
import { assert, assertClose, dot, finiteDifferences, gpuReady, randomArray } from "./testing.ts";

await gpuReady();

interface Reference {
  y: Float64Array;
  rstd: Float64Array;
}

// float64 reference of Hugging Face's Qwen2RMSNorm: y = weight * x / sqrt(mean(x^2) + eps).
function referenceRmsNorm(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  rows: number,
  cols: number,
  eps: number,
): Reference {
  const y = new Float64Array(rows * cols);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let sq = 0;
    for (let j = 0; j < cols; j++) sq += x[r * cols + j] ** 2;
    const inv = 1 / Math.sqrt(sq / cols + eps);
    for (let j = 0; j < cols; j++) y[r * cols + j] = weight[j] * x[r * cols + j] * inv;
    rstd[r] = inv;
  }
  return { y, rstd };
}

interface ReferenceGrads {
  dx: Float64Array;
  dWeight: Float64Array;
}

// float64 reference backward from the chain rule: with r = (mean(x^2) + eps)^(-1/2),
// dr/dx_k = -r^3 x_k / cols, so dx_k = r * w_k * dy_k - (r^3 x_k / cols) * sum_j w_j dy_j x_j.
function referenceRmsNormBackward(
  x: ArrayLike<number>,
  dy: ArrayLike<number>,
  weight: ArrayLike<number>,
  rows: number,
  cols: number,
  eps: number,
): ReferenceGrads {
  const { rstd } = referenceRmsNorm(x, weight, rows, cols, eps);
  const dx = new Float64Array(rows * cols);
  const dWeight = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    const inv = rstd[r];
    let sumGX = 0;
    for (let j = 0; j < cols; j++) {
      sumGX += weight[j] * dy[r * cols + j] * x[r * cols + j];
      dWeight[j] += dy[r * cols + j] * x[r * cols + j] * inv;
    }
    for (let j = 0; j < cols; j++) {
      const i = r * cols + j;
      dx[i] = inv * weight[j] * dy[i] - (inv ** 3 * x[i] / cols) * sumGX;
    }
  }
  return { dx, dWeight };
}

// Random f32 values, returned in float64 so that the reference gets exactly the GPU's inputs.
function randomF32(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  return Float64Array.from(Float32Array.from(randomArray(n, seed, lo, hi)));
}

interface GpuResult {
  y: Float32Array;
  rstd: Float32Array;
  dx: Float32Array;
  dWeight: Float32Array | null;
}

async function readAndDispose(t: Tensor | null): Promise<Float32Array | null> {
  if (!t) return null;
  const data = await t.toFloat32();
  t.dispose();
  return data;
}

async function gpuRmsNorm(
  x: Float64Array,
  weight: Float64Array,
  dy: Float64Array,
  shape: number[],
  eps: number,
  needWeightGrad = true,
): Promise<GpuResult> {
  const cols = shape[shape.length - 1];
  const outputs = tidy(() => {
    const tx = fromArray(x, shape);
    const tw = fromArray(weight, [cols]);
    const forward = rmsNorm(tx, tw, { eps });
    const grads = rmsNormBackward(tx, fromArray(dy, shape), forward.rstd, tw, { needWeightGrad });
    return { ...forward, ...grads };
  });
  return {
    y: (await readAndDispose(outputs.y))!,
    rstd: (await readAndDispose(outputs.rstd))!,
    dx: (await readAndDispose(outputs.dx))!,
    dWeight: await readAndDispose(outputs.dWeight),
  };
}

interface Case {
  rows: number;
  cols: number;
  shape?: number[];
  eps?: number;
  scale?: number; // x is uniform in [-scale, scale]
  zeroRows?: number[]; // rows set to all zeros
  finiteDifferences?: boolean;
}

async function checkRmsNorm(c: Case, seed: number): Promise<void> {
  const { rows, cols, eps = 1e-6, scale = 1, zeroRows = [] } = c;
  const shape = c.shape ?? [rows, cols];
  const scaleLabel = scale === 1 ? "" : ` scale ${scale}`;
  const label = `${rows}x${cols}${scaleLabel}${zeroRows.length > 0 ? " zero rows" : ""}`;
  const x = randomF32(rows * cols, seed, -scale, scale);
  for (const r of zeroRows) x.fill(0, r * cols, (r + 1) * cols);
  const weight = randomF32(cols, seed + 1, 0.5, 1.5);
  const dy = randomF32(rows * cols, seed + 2);

  const expected = referenceRmsNorm(x, weight, rows, cols, eps);
  const grads = referenceRmsNormBackward(x, dy, weight, rows, cols, eps);
  const gpu = await gpuRmsNorm(x, weight, dy, shape, eps);

  // |x * rstd| <= sqrt(cols) but is O(1) here, and |weight| <= 1.5. The f32 sum of squares over
  // up to 50257 elements is within about 1e-6 relative, so y is within 1e-5.
  assertClose(gpu.y, expected.y, 1e-5, 1e-5, `${label} y`);
  // f32 sum of squares and inverseSqrt: a few 1e-7 relative. A zero row has rstd = 1/sqrt(eps).
  assertClose(gpu.rstd, expected.rstd, 0, 1e-5, `${label} rstd`);
  // dx = rstd * (terms of size |dy * weight| <= 1.5); rstd reaches 1/sqrt(eps) = 1000 on zero
  // rows, where dx = rstd * dy * weight, so the relative term covers those rows. rstd and so dx
  // shrink as 1/scale for large inputs, and the absolute term shrinks with them.
  assertClose(gpu.dx, grads.dx, 1e-5 / Math.max(1, scale), 1e-5, `${label} dx`);
  // dWeight sums up to 130 rows of terms |dy * xhat| <= 3: f32 error below 2e-5.
  assertClose(gpu.dWeight!, grads.dWeight, 2e-5, 1e-5, `${label} dWeight`);

  if (c.finiteDifferences) {
    // Central differences with step 1e-6 on float64: error about 1e-9 relative to the
    // curvature, far below these tolerances for O(1) inputs.
    const numericDx = finiteDifferences(
      (v) => dot(referenceRmsNorm(v, weight, rows, cols, eps).y, dy),
      x,
    );
    assertClose(grads.dx, numericDx, 1e-7, 1e-6, `${label} reference dx vs finite differences`);
    const numericDWeight = finiteDifferences(
      (v) => dot(referenceRmsNorm(x, v, rows, cols, eps).y, dy),
      weight,
    );
    assertClose(
      grads.dWeight,
      numericDWeight,
      1e-7,
      1e-6,
      `${label} reference dWeight vs finite differences`,
    );
  }
}

Deno.test("rmsNorm width 1", async () => {
  // One element per row: y = weight * x / sqrt(x^2 + eps), about weight * sign(x).
  await checkRmsNorm({ rows: 1, cols: 1, finiteDifferences: true }, 10);
  await checkRmsNorm({ rows: 5, cols: 1, finiteDifferences: true }, 11);
  await checkRmsNorm({ rows: 130, cols: 1 }, 12);
});

Deno.test("rmsNorm one row", async () => {
  await checkRmsNorm({ rows: 1, cols: 37, finiteDifferences: true }, 13);
  await checkRmsNorm({ rows: 1, cols: 896 }, 14);
  await checkRmsNorm({ rows: 1, cols: 37, shape: [37], finiteDifferences: true }, 15);
});

Deno.test("rmsNorm small shapes", async () => {
  await checkRmsNorm({ rows: 5, cols: 37, finiteDifferences: true }, 16);
  await checkRmsNorm({ rows: 6, cols: 33, shape: [2, 3, 33], finiteDifferences: true }, 17);
  await checkRmsNorm({ rows: 3, cols: 129, eps: 1e-5, finiteDifferences: true }, 18);
});

Deno.test("rmsNorm model widths", async () => {
  // 896 is Qwen2.5-0.5B's hidden size; 1023 and 1025 straddle the switch to the wide workgroup.
  // 130 rows span three chunks of 64 rows in the weight-gradient kernels.
  for (const cols of [37, 896, 1023, 1025]) {
    for (const rows of [1, 5, 130]) await checkRmsNorm({ rows, cols }, rows * 10000 + cols);
  }
  await checkRmsNorm({ rows: 64, cols: 896 }, 19); // exactly one chunk
  await checkRmsNorm({ rows: 65, cols: 896 }, 20); // one chunk and one row
});

Deno.test("rmsNorm vocabulary-wide row", async () => {
  await checkRmsNorm({ rows: 2, cols: 50257 }, 21);
});

Deno.test("rmsNorm zero row", async () => {
  // An all-zero row has mean(x^2) = 0: rstd = 1/sqrt(eps), y = 0 and dx = rstd * weight * dy,
  // all finite. The other rows must be unaffected.
  await checkRmsNorm({ rows: 5, cols: 37, zeroRows: [0, 3], finiteDifferences: true }, 22);
  await checkRmsNorm({ rows: 3, cols: 1025, zeroRows: [1] }, 23);
  const eps = 1e-6;
  const x = new Float64Array(37);
  const weight = randomF32(37, 24, 0.5, 1.5);
  const dy = randomF32(37, 25);
  const gpu = await gpuRmsNorm(x, weight, dy, [1, 37], eps);
  assert(gpu.y.every((v) => v === 0), "an all-zero row must give y = 0 exactly");
  // inverseSqrt in f32 is within a few ulps of 1000.
  assertClose(gpu.rstd, [1 / Math.sqrt(eps)], 0, 1e-6, "zero row rstd");
});

Deno.test("rmsNorm eps-dominated row", async () => {
  // Values near 1e-3 give mean(x^2) of the same order as eps = 1e-6, so eps changes the result.
  await checkRmsNorm({ rows: 5, cols: 37, scale: 2e-3, finiteDifferences: true }, 26);
});

Deno.test("rmsNorm large values", async () => {
  // mean(x^2) near 3e7 stays far from f32 overflow; y and dx are scale-free in x.
  await checkRmsNorm({ rows: 5, cols: 896, scale: 1e4 }, 27);
});

Deno.test("rmsNorm frozen weight", async () => {
  const rows = 5, cols = 37;
  const x = randomF32(rows * cols, 28);
  const weight = randomF32(cols, 29, 0.5, 1.5);
  const dy = randomF32(rows * cols, 30);
  const gpu = await gpuRmsNorm(x, weight, dy, [rows, cols], 1e-6, false);
  assert(gpu.dWeight === null, "needWeightGrad: false must return dWeight = null");
  const grads = referenceRmsNormBackward(x, dy, weight, rows, cols, 1e-6);
  assertClose(gpu.dx, grads.dx, 1e-5, 1e-5, "frozen dx"); // as in checkRmsNorm
});

Deno.test("rmsNorm weight gradient deterministic", async () => {
  const rows = 300, cols = 896;
  const x = randomF32(rows * cols, 31);
  const weight = randomF32(cols, 32, 0.5, 1.5);
  const dy = randomF32(rows * cols, 33);
  const first = await gpuRmsNorm(x, weight, dy, [rows, cols], 1e-6);
  const second = await gpuRmsNorm(x, weight, dy, [rows, cols], 1e-6);
  for (let j = 0; j < cols; j++) {
    assert(first.dWeight![j] === second.dWeight![j], `dWeight[${j}] differs between runs`);
  }
  const grads = referenceRmsNormBackward(x, dy, weight, rows, cols, 1e-6);
  // 300 rows of terms |dy * xhat| <= 3: f32 sums stay within 5e-5.
  assertClose(first.dWeight!, grads.dWeight, 5e-5, 1e-5, "300 rows dWeight");
});

Deno.test("rmsNorm rejects mismatched shapes", () => {
  tidy(() => {
    const x = fromArray(new Float32Array(12), [3, 4]);
    const w = fromArray(new Float32Array(4), [4]);
    let message = "";
    try {
      rmsNorm(x, fromArray(new Float32Array(3), [3]));
    } catch (e) {
      message = (e as Error).message;
    }
    assert(
      message.includes("weight of shape [3]"),
      `expected a weight shape error, got "${message}"`,
    );

    message = "";
    try {
      const { rstd } = rmsNorm(x, w);
      rmsNormBackward(x, fromArray(new Float32Array(8), [2, 4]), rstd, w);
    } catch (e) {
      message = (e as Error).message;
    }
    assert(message.includes("dy of shape [2,4]"), `expected a dy shape error, got "${message}"`);

    message = "";
    try {
      rmsNorm(x, w, { eps: -1 });
    } catch (e) {
      message = (e as Error).message;
    }
    assert(message.includes("eps"), `expected an eps error, got "${message}"`);
  });
});
