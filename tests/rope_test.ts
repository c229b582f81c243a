import { fromArray, tidy } from "../engine/tensor.ts";
import { releaseRopeTables, rope, ropeBackward, type RopeOptions } from "../kernels/rope.ts";
import { assert, assertClose, dot, finiteDifferences, gpuReady, randomArray } from "./testing.ts";

await gpuReady();

type AngleFn = (position: number, i: number) => number;

// Angles of rope's exactAngles mode: position * theta^(-2i / headDim) in float64.
function exactAngles(theta: number, headDim: number): AngleFn {
  return (position, i) => position * theta ** (-(2 * i) / headDim);
}

// Angles as transformers computes them in float32: the exponent 2i / headDim, the power, its
// reciprocal and the product with the position are each rounded to f32.
function transformersAngles(theta: number, headDim: number): AngleFn {
  const invFreq: number[] = [];
  for (let i = 0; i < headDim / 2; i++) {
    const power = Math.fround(Math.fround(theta) ** Math.fround((2 * i) / headDim));
    invFreq.push(Math.fround(1 / power));
  }
  return (position, i) => Math.fround(position * invFreq[i]);
}

interface Layout {
  batch: number;
  seqLen: number;
  heads: number;
  headDim: number;
}

// float64 reference of rotate_half RoPE on (batch, seqLen, heads * headDim): the pair
// (x[i], x[i + half]) of each head turns by sign * angle(positionOffset + t, i).
function referenceRope(
  x: ArrayLike<number>,
  layout: Layout,
  positionOffset: number,
  angle: AngleFn,
  sign = 1,
): Float64Array {
  const { batch, seqLen, heads, headDim } = layout;
  const half = headDim / 2;
  const out = new Float64Array(x.length);
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t < seqLen; t++) {
      for (let h = 0; h < heads; h++) {
        const base = ((b * seqLen + t) * heads + h) * headDim;
        for (let i = 0; i < half; i++) {
          const a = sign * angle(positionOffset + t, i);
          const x1 = x[base + i];
          const x2 = x[base + i + half];
          out[base + i] = x1 * Math.cos(a) - x2 * Math.sin(a);
          out[base + i + half] = x2 * Math.cos(a) + x1 * Math.sin(a);
        }
      }
    }
  }
  return out;
}

// float64 reference backward: the Jacobian of a rotation is the rotation itself, so the input
// gradient is its transpose, the rotation by the negated angle, applied to dy.
function referenceRopeBackward(
  dy: ArrayLike<number>,
  layout: Layout,
  positionOffset: number,
  angle: AngleFn,
): Float64Array {
  return referenceRope(dy, layout, positionOffset, angle, -1);
}

// Largest |angle32 - exact angle| over the positions and frequencies used.
function maxAngleError(layout: Layout, positionOffset: number, theta: number): number {
  const exact = exactAngles(theta, layout.headDim);
  const f32 = transformersAngles(theta, layout.headDim);
  let worst = 0;
  for (let t = 0; t < layout.seqLen; t++) {
    for (let i = 0; i < layout.headDim / 2; i++) {
      worst = Math.max(worst, Math.abs(f32(positionOffset + t, i) - exact(positionOffset + t, i)));
    }
  }
  return worst;
}

// Random f32 values, returned in float64 so that the reference gets exactly the GPU's inputs.
function randomF32(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  return Float64Array.from(Float32Array.from(randomArray(n, seed, lo, hi)));
}

function shapeOf(layout: Layout): number[] {
  return [layout.batch, layout.seqLen, layout.heads * layout.headDim];
}

function sizeOf(layout: Layout): number {
  return layout.batch * layout.seqLen * layout.heads * layout.headDim;
}

function optionsFor(
  layout: Layout,
  positionOffset: number,
  theta: number,
  exact = false,
): RopeOptions {
  return {
    heads: layout.heads,
    headDim: layout.headDim,
    positionOffset,
    theta,
    exactAngles: exact,
  };
}

// Runs rope and ropeBackward on the GPU and reads both results back.
async function gpuRope(
  x: Float64Array,
  dy: Float64Array,
  shape: number[],
  options: RopeOptions,
): Promise<{ y: Float32Array; dx: Float32Array }> {
  const { y, dx } = tidy(() => ({
    y: rope(fromArray(x, shape), options),
    dx: ropeBackward(fromArray(dy, shape), options),
  }));
  const result = { y: await y.toFloat32(), dx: await dx.toFloat32() };
  y.dispose();
  dx.dispose();
  return result;
}

interface Case {
  layout: Layout;
  positionOffset?: number;
  theta?: number;
  shape?: number[]; // another view of the same (batch, seqLen, heads * headDim) data
  finiteDifferences?: boolean;
}

async function checkRope(c: Case, seed: number): Promise<void> {
  const { layout, positionOffset = 0, theta = 10000 } = c;
  const { batch, seqLen, heads, headDim } = layout;
  const label = `${batch}x${seqLen}x${heads}x${headDim} offset ${positionOffset} theta ${theta}`;
  const shape = c.shape ?? shapeOf(layout);
  const x = randomF32(sizeOf(layout), seed);
  const dy = randomF32(sizeOf(layout), seed + 1);

  const f32Angle = transformersAngles(theta, headDim);
  const exactAngle = exactAngles(theta, headDim);
  const gpu = await gpuRope(x, dy, shape, optionsFor(layout, positionOffset, theta));
  const expected = referenceRope(x, layout, positionOffset, f32Angle);
  const expectedDx = referenceRopeBackward(dy, layout, positionOffset, f32Angle);
  // Same angles as the reference: cos and sin rounded to f32 (3e-8 of 1) and two f32 products
  // and a sum of values <= 1 leave a few 1e-7.
  assertClose(gpu.y, expected, 5e-7, 0, `${label} y`);
  assertClose(gpu.dx, expectedDx, 5e-7, 0, `${label} dx`);

  // Against float64 angles, the f32 angles differ by at most maxAngleError, which turns a pair of
  // norm <= sqrt(2) by that much.
  const angleBound = Math.SQRT2 * maxAngleError(layout, positionOffset, theta);
  const exactY = referenceRope(x, layout, positionOffset, exactAngle);
  assertClose(gpu.y, exactY, 5e-7 + angleBound, 0, `${label} y vs float64 angles`);

  const exact = await gpuRope(x, dy, shape, optionsFor(layout, positionOffset, theta, true));
  const exactDx = referenceRopeBackward(dy, layout, positionOffset, exactAngle);
  // exactAngles: only the f32 rounding of cos, sin and the arithmetic remain, as above.
  assertClose(exact.y, exactY, 5e-7, 0, `${label} exactAngles y`);
  assertClose(exact.dx, exactDx, 5e-7, 0, `${label} exactAngles dx`);

  if (c.finiteDifferences) {
    // Central differences on float64 of a function linear in x: only rounding, about 1e-10.
    const numeric = finiteDifferences(
      (v) => dot(referenceRope(v, layout, positionOffset, exactAngle), dy),
      x,
    );
    assertClose(exactDx, numeric, 1e-8, 1e-7, `${label} reference dx vs finite differences`);
  }
}

Deno.test("rope smallest head", async () => {
  await checkRope({
    layout: { batch: 1, seqLen: 1, heads: 1, headDim: 2 },
    finiteDifferences: true,
  }, 10);
  await checkRope({
    layout: { batch: 1, seqLen: 3, heads: 1, headDim: 2 },
    finiteDifferences: true,
  }, 11);
});

Deno.test("rope small shapes", async () => {
  // headDim 6 has an odd half; 3 batch rows and 5 heads make pair counts of no power of two.
  await checkRope({
    layout: { batch: 3, seqLen: 5, heads: 5, headDim: 6 },
    finiteDifferences: true,
  }, 12);
  await checkRope({
    layout: { batch: 1, seqLen: 7, heads: 2, headDim: 8 },
    shape: [7, 16], // (seq_len, heads * headDim) without a batch dimension
    finiteDifferences: true,
  }, 13);
  await checkRope({
    layout: { batch: 6, seqLen: 4, heads: 3, headDim: 10 },
    shape: [2, 3, 4, 30], // two batch dimensions share the positions
    positionOffset: 2,
    finiteDifferences: true,
  }, 14);
});

Deno.test("rope grouped-query heads", async () => {
  // Qwen2 tiny fixture: 6 query heads and 2 key heads of 8, theta 10000. Llama fixture: 4 and 2,
  // theta 500000. Qwen2.5-0.5B: 14 query heads and 2 key heads of 64, theta 1e6.
  const seqLen = 37;
  await checkRope({ layout: { batch: 2, seqLen, heads: 6, headDim: 8 } }, 15);
  await checkRope({ layout: { batch: 2, seqLen, heads: 2, headDim: 8 } }, 16);
  await checkRope({ layout: { batch: 2, seqLen, heads: 4, headDim: 8 }, theta: 500000 }, 17);
  await checkRope({ layout: { batch: 2, seqLen, heads: 2, headDim: 8 }, theta: 500000 }, 18);
  await checkRope({ layout: { batch: 3, seqLen: 9, heads: 14, headDim: 64 }, theta: 1e6 }, 19);
  await checkRope({ layout: { batch: 3, seqLen: 9, heads: 2, headDim: 64 }, theta: 1e6 }, 20);
  await checkRope({ layout: { batch: 1, seqLen: 5, heads: 2, headDim: 128 }, theta: 1e6 }, 21);
});

Deno.test("rope decoding offsets", async () => {
  const layout = { batch: 2, seqLen: 1, heads: 3, headDim: 16 };
  for (const positionOffset of [1, 17, 255, 256, 1000]) {
    await checkRope({ layout, positionOffset, theta: 1e6 }, 22 + positionOffset);
  }
});

Deno.test("rope long positions theta 1e6", async () => {
  // At positions 32760..32767 with headDim 64, transformers' f32 angles are off by up to 1.1e-3
  // rad, and the float64-angle comparison in checkRope allows for that. exactAngles stays within
  // 5e-7.
  const layout = { batch: 1, seqLen: 8, heads: 2, headDim: 64 };
  await checkRope({ layout, positionOffset: 32760, theta: 1e6 }, 30);
  const angleError = maxAngleError(layout, 32760, 1e6);
  assert(angleError > 1e-4, `f32 angles at 32k should differ from float64 ones, got ${angleError}`);
  // Half an ulp of angles below 32768, plus the angle shift from inv_freq's rounding.
  const bound = 2 ** -9 + 32767 * 2 ** -24;
  assert(angleError < bound, `f32 angle error ${angleError} exceeds ${bound} rad`);
});

Deno.test("rope decode step matches prompt", async () => {
  // Rotating tokens 5..8 with positionOffset 5 must give exactly the rows that rotating the whole
  // 9-token sequence gives, because both read the same table entries.
  const layout = { batch: 2, seqLen: 9, heads: 3, headDim: 8 };
  const cols = layout.heads * layout.headDim;
  const x = randomF32(sizeOf(layout), 40);
  const tail = new Float64Array(2 * 4 * cols);
  for (let b = 0; b < 2; b++) {
    tail.set(x.subarray((b * 9 + 5) * cols, (b * 9 + 9) * cols), b * 4 * cols);
  }

  const options = { heads: 3, headDim: 8, theta: 1e6 };
  const full = await gpuRope(x, x, [2, 9, cols], options);
  const step = await gpuRope(tail, tail, [2, 4, cols], { ...options, positionOffset: 5 });
  for (let b = 0; b < 2; b++) {
    for (let k = 0; k < 4 * cols; k++) {
      const fromFull = full.y[(b * 9 + 5) * cols + k];
      assert(
        step.y[b * 4 * cols + k] === fromFull,
        `row ${b} element ${k} differs from the prompt pass`,
      );
    }
  }
});

Deno.test("rope backward inverts forward", async () => {
  const layout = { batch: 2, seqLen: 13, heads: 3, headDim: 32 };
  const options = optionsFor(layout, 3, 1e6);
  const x = randomF32(sizeOf(layout), 41);
  const roundTrip = tidy(() => ropeBackward(rope(fromArray(x, shapeOf(layout)), options), options));
  // Two rotations by f32 cos and sin: |cos^2 + sin^2 - 1| <= 2e-7, plus the arithmetic rounding.
  assertClose(await roundTrip.toFloat32(), x, 1e-6, 0, "ropeBackward(rope(x))");
  roundTrip.dispose();
});

Deno.test("rope tables regrow and release", async () => {
  // A short call builds a small table and a far offset grows it. A short call afterwards must
  // still read the right entries, and releaseRopeTables must let the next call rebuild.
  const layout = { batch: 1, seqLen: 3, heads: 2, headDim: 12 };
  await checkRope({ layout, theta: 12345 }, 42);
  await checkRope({ layout, positionOffset: 3000, theta: 12345 }, 43);
  await checkRope({ layout, theta: 12345 }, 44);
  releaseRopeTables();
  await checkRope({ layout, positionOffset: 7, theta: 12345 }, 45);
});

Deno.test("rope rejects invalid options", () => {
  tidy(() => {
    const x = fromArray(new Float32Array(2 * 3 * 12), [2, 3, 12]);
    const cases: [RopeOptions, string][] = [
      [{ heads: 2, headDim: 5 }, "headDim must be a positive even integer"],
      [{ heads: 3, headDim: 6 }, "expected heads * headDim = 3 * 6"],
      [{ heads: 2, headDim: 6, positionOffset: -1 }, "positionOffset must be an integer >= 0"],
      [{ heads: 2, headDim: 6, theta: 0 }, "theta must be finite and > 0"],
    ];
    for (const [options, expected] of cases) {
      let message = "";
      try {
        rope(x, options);
      } catch (e) {
        message = (e as Error).message;
      }
      assert(message.includes(expected), `expected "${expected}", got "${message}"`);
    }
    let message = "";
    try {
      ropeBackward(fromArray(new Float32Array(12), [12]), { heads: 2, headDim: 6 });
    } catch (e) {
      message = (e as Error).message;
    }
    assert(message.includes("seq_len"), `expected a shape error for a 1-D input, got "${message}"`);
  });
});
