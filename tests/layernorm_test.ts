import { fromArray, type Tensor, tidy } from "../engine/tensor.ts";
import { layerNorm, layerNormBackward } from "../kernels/layernorm.ts";
import { assert, assertClose, dot, finiteDifferences, gpuReady, randomArray } from "./testing.ts";

await gpuReady();

interface Reference {
  y: Float64Array;
  mean: Float64Array;
  rstd: Float64Array;
}

// float64 reference: biased variance around the row mean, as in PyTorch's nn.LayerNorm.
function referenceLayerNorm(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  bias: ArrayLike<number>,
  rows: number,
  cols: number,
  eps: number,
): Reference {
  const y = new Float64Array(rows * cols);
  const mean = new Float64Array(rows);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let j = 0; j < cols; j++) s += x[r * cols + j];
    const m = s / cols;
    let v = 0;
    for (let j = 0; j < cols; j++) v += (x[r * cols + j] - m) ** 2;
    const inv = 1 / Math.sqrt(v / cols + eps);
    for (let j = 0; j < cols; j++) {
      y[r * cols + j] = (x[r * cols + j] - m) * inv * weight[j] + bias[j];
    }
    mean[r] = m;
    rstd[r] = inv;
  }
  return { y, mean, rstd };
}

interface ReferenceGrads {
  dx: Float64Array;
  dWeight: Float64Array;
  dBias: Float64Array;
}

// float64 reference backward, written from the chain rule through mean and variance.
function referenceLayerNormBackward(
  x: ArrayLike<number>,
  dy: ArrayLike<number>,
  weight: ArrayLike<number>,
  rows: number,
  cols: number,
  eps: number,
): ReferenceGrads {
  const { mean, rstd } = referenceLayerNorm(x, weight, new Float64Array(cols), rows, cols, eps);
  const dx = new Float64Array(rows * cols);
  const dWeight = new Float64Array(cols);
  const dBias = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    const xhat = (j: number) => (x[r * cols + j] - mean[r]) * rstd[r];
    // dL/dxhat = dy * weight, and the row's mean and variance couple every element of the row.
    let sumG = 0;
    let sumGXhat = 0;
    for (let j = 0; j < cols; j++) {
      const g = dy[r * cols + j] * weight[j];
      sumG += g;
      sumGXhat += g * xhat(j);
      dWeight[j] += dy[r * cols + j] * xhat(j);
      dBias[j] += dy[r * cols + j];
    }
    for (let j = 0; j < cols; j++) {
      const g = dy[r * cols + j] * weight[j];
      dx[r * cols + j] = rstd[r] * (g - sumG / cols - xhat(j) * sumGXhat / cols);
    }
  }
  return { dx, dWeight, dBias };
}

// Random f32 values, returned in float64 so that the reference gets exactly the GPU's inputs.
function randomF32(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  return Float64Array.from(Float32Array.from(randomArray(n, seed, lo, hi)));
}

interface GpuResult {
  y: Float32Array;
  mean: Float32Array;
  rstd: Float32Array;
  dx: Float32Array;
  dWeight: Float32Array | null;
  dBias: Float32Array | null;
}

async function readAndDispose(t: Tensor | null): Promise<Float32Array | null> {
  if (!t) return null;
  const data = await t.toFloat32();
  t.dispose();
  return data;
}

async function gpuLayerNorm(
  x: Float64Array,
  weight: Float64Array,
  bias: Float64Array,
  dy: Float64Array,
  shape: number[],
  eps: number,
  needWeightGrad = true,
): Promise<GpuResult> {
  const cols = shape[shape.length - 1];
  const outputs = tidy(() => {
    const tx = fromArray(x, shape);
    const tw = fromArray(weight, [cols]);
    const forward = layerNorm(tx, tw, fromArray(bias, [cols]), { eps });
    const grads = layerNormBackward(tx, fromArray(dy, shape), forward.mean, forward.rstd, tw, {
      needWeightGrad,
    });
    return { ...forward, ...grads };
  });
  return {
    y: (await readAndDispose(outputs.y))!,
    mean: (await readAndDispose(outputs.mean))!,
    rstd: (await readAndDispose(outputs.rstd))!,
    dx: (await readAndDispose(outputs.dx))!,
    dWeight: await readAndDispose(outputs.dWeight),
    dBias: await readAndDispose(outputs.dBias),
  };
}

interface Case {
  rows: number;
  cols: number;
  shape?: number[];
  eps?: number;
  offset?: number; // added to x, to test a mean that is large against the spread
  finiteDifferences?: boolean;
}

async function checkLayerNorm(c: Case, seed: number): Promise<void> {
  const { rows, cols, eps = 1e-5, offset = 0 } = c;
  const shape = c.shape ?? [rows, cols];
  const label = `${rows}x${cols}`;
  const x = randomF32(rows * cols, seed, offset - 2, offset + 2);
  const weight = randomF32(cols, seed + 1, 0.5, 1.5);
  const bias = randomF32(cols, seed + 2);
  const dy = randomF32(rows * cols, seed + 3);

  const expected = referenceLayerNorm(x, weight, bias, rows, cols, eps);
  const grads = referenceLayerNormBackward(x, dy, weight, rows, cols, eps);
  const gpu = await gpuLayerNorm(x, weight, bias, dy, shape, eps);

  // The f32 mean is off by a few ulps of |mean|, which shifts every x - mean by that much. With
  // rstd <= 0.9 (x spans 4) and |weight| <= 1.5, four ulps move y by under 6 ulps of the offset.
  const meanError = offset === 0 ? 0 : 4 * 2 ** (Math.floor(Math.log2(Math.abs(offset))) - 23);
  // Normalized values are O(1) with |weight| <= 1.5: f32 sums over up to 50257 elements keep the
  // mean and variance within about 1e-6 relative, so y is within 1e-5 absolute.
  assertClose(gpu.y, expected.y, 1e-5 + 1.5 * meanError, 1e-5, `${label} y`);
  assertClose(gpu.mean, expected.mean, 1e-6 + meanError, 1e-5, `${label} mean`); // f32 sum
  assertClose(gpu.rstd, expected.rstd, 1e-6, 1e-5, `${label} rstd`); // f32 sum of squares
  // dx = rstd * (terms of size |dy * weight| <= 1.5): same reasoning as y.
  assertClose(gpu.dx, grads.dx, 1e-5 + 1.5 * meanError, 1e-5, `${label} dx`);
  // dWeight and dBias sum over up to 130 rows of terms <= 3 in magnitude: f32 error below 1e-5.
  // The mean's rounding adds up to rstd * meanError * |dy| <= meanError per row to dWeight.
  assertClose(gpu.dWeight!, grads.dWeight, 1e-5 + rows * meanError, 1e-5, `${label} dWeight`);
  assertClose(gpu.dBias!, grads.dBias, 1e-5, 1e-5, `${label} dBias`);

  if (c.finiteDifferences) {
    // Central differences with eps 1e-6 on float64 are accurate to about 1e-8 for these sizes.
    const numericDx = finiteDifferences(
      (v) => dot(referenceLayerNorm(v, weight, bias, rows, cols, eps).y, dy),
      x,
    );
    assertClose(grads.dx, numericDx, 1e-7, 1e-6, `${label} reference dx vs finite differences`);
    const numericDWeight = finiteDifferences(
      (v) => dot(referenceLayerNorm(x, v, bias, rows, cols, eps).y, dy),
      weight,
    );
    assertClose(
      grads.dWeight,
      numericDWeight,
      1e-7,
      1e-6,
      `${label} reference dWeight vs finite differences`,
    );
    const numericDBias = finiteDifferences(
      (v) => dot(referenceLayerNorm(x, weight, v, rows, cols, eps).y, dy),
      bias,
    );
    assertClose(
      grads.dBias,
      numericDBias,
      1e-7,
      1e-6,
      `${label} reference dBias vs finite differences`,
    );
  }
}

Deno.test("layerNorm width 1", async () => {
  // One element per row: the variance is 0, so y = bias and dx = 0.
  await checkLayerNorm({ rows: 5, cols: 1, finiteDifferences: true }, 10);
  await checkLayerNorm({ rows: 1, cols: 1, finiteDifferences: true }, 11);
});

Deno.test("layerNorm one row", async () => {
  await checkLayerNorm({ rows: 1, cols: 37, finiteDifferences: true }, 12);
  await checkLayerNorm({ rows: 1, cols: 768 }, 13);
  await checkLayerNorm({ rows: 1, cols: 37, shape: [37], finiteDifferences: true }, 14);
});

Deno.test("layerNorm small shapes", async () => {
  await checkLayerNorm({ rows: 5, cols: 37, finiteDifferences: true }, 15);
  await checkLayerNorm({ rows: 5, cols: 33, shape: [5, 1, 33], finiteDifferences: true }, 16);
  await checkLayerNorm({ rows: 3, cols: 129, eps: 1e-3, finiteDifferences: true }, 17);
});

Deno.test("layerNorm model widths", async () => {
  // 130 rows span three chunks of 64 rows in the weight-gradient kernels, and 1023, 1025
  // straddle the switch to the wide workgroup.
  for (const cols of [37, 768, 1023, 1025]) {
    for (const rows of [5, 130]) await checkLayerNorm({ rows, cols }, rows * 10000 + cols);
  }
  await checkLayerNorm({ rows: 64, cols: 768 }, 18); // exactly one chunk
  await checkLayerNorm({ rows: 65, cols: 768 }, 19); // one chunk and one row
});

Deno.test("layerNorm vocabulary-wide row", async () => {
  await checkLayerNorm({ rows: 2, cols: 50257 }, 20);
});

Deno.test("layerNorm large mean", async () => {
  // A one-pass E[x^2] - mean^2 in f32 loses about 1e6 * 2^-24 = 0.06 of a variance of 1.3 at an
  // offset of 1000, far outside the tolerance, which allows only for the mean's own rounding.
  await checkLayerNorm({ rows: 5, cols: 300, offset: 1000 }, 21);
});

Deno.test("layerNorm frozen weights", async () => {
  const rows = 5, cols = 37;
  const x = randomF32(rows * cols, 22);
  const weight = randomF32(cols, 23, 0.5, 1.5);
  const bias = randomF32(cols, 24);
  const dy = randomF32(rows * cols, 25);
  const gpu = await gpuLayerNorm(x, weight, bias, dy, [rows, cols], 1e-5, false);
  assert(gpu.dWeight === null, "needWeightGrad: false must return dWeight = null");
  assert(gpu.dBias === null, "needWeightGrad: false must return dBias = null");
  const grads = referenceLayerNormBackward(x, dy, weight, rows, cols, 1e-5);
  assertClose(gpu.dx, grads.dx, 1e-5, 1e-5, "frozen dx"); // as in checkLayerNorm
});

Deno.test("layerNorm weight gradients deterministic", async () => {
  const rows = 300, cols = 768;
  const x = randomF32(rows * cols, 26);
  const weight = randomF32(cols, 27, 0.5, 1.5);
  const bias = randomF32(cols, 28);
  const dy = randomF32(rows * cols, 29);
  const first = await gpuLayerNorm(x, weight, bias, dy, [rows, cols], 1e-5);
  const second = await gpuLayerNorm(x, weight, bias, dy, [rows, cols], 1e-5);
  for (let j = 0; j < cols; j++) {
    assert(first.dWeight![j] === second.dWeight![j], `dWeight[${j}] differs between runs`);
    assert(first.dBias![j] === second.dBias![j], `dBias[${j}] differs between runs`);
  }
  const grads = referenceLayerNormBackward(x, dy, weight, rows, cols, 1e-5);
  // 300 rows of terms <= 3 in magnitude: f32 sums stay within 3e-5.
  assertClose(first.dWeight!, grads.dWeight, 3e-5, 1e-5, "300 rows dWeight");
  assertClose(first.dBias!, grads.dBias, 3e-5, 1e-5, "300 rows dBias");
});

Deno.test("layerNorm rejects mismatched shapes", () => {
  tidy(() => {
    const x = fromArray(new Float32Array(12), [3, 4]);
    const w = fromArray(new Float32Array(4), [4]);
    let message = "";
    try {
      layerNorm(x, fromArray(new Float32Array(3), [3]), w);
    } catch (e) {
      message = (e as Error).message;
    }
    assert(message.includes("weight"), `expected a weight shape error, got "${message}"`);

    message = "";
    try {
      const { mean } = layerNorm(x, w, w);
      layerNormBackward(
        x,
        x,
        mean,
        mean.view([3, 1]).view([3]),
        fromArray(new Float32Array(5), [5]),
      );
    } catch (e) {
      message = (e as Error).message;
    }
    assert(
      message.includes("weight of shape [5]"),
      `expected a weight shape error, got "${message}"`,
    );
  });
});
