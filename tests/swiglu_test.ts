import { fromArray, type Tensor, tidy } from "../engine/tensor.ts";
import { silu, siluBackward, swiglu, swigluBackward } from "../kernels/swiglu.ts";
import { assert, assertClose, dot, finiteDifferences, gpuReady, randomArray } from "./testing.ts";

await gpuReady();

// float64 references: silu(z) = z * sigmoid(z) and its derivative s * (1 + z * (1 - s)).
function sigmoid(z: number): number {
  return 1 / (1 + Math.exp(-z));
}

function referenceSilu(z: number): number {
  return z * sigmoid(z);
}

function referenceSiluGrad(z: number): number {
  const s = sigmoid(z);
  return s * (1 + z * (1 - s));
}

function referenceSwiglu(gate: ArrayLike<number>, up: ArrayLike<number>): Float64Array {
  return Float64Array.from(gate, (z, i) => referenceSilu(z) * up[i]);
}

function referenceSwigluBackward(
  gate: ArrayLike<number>,
  up: ArrayLike<number>,
  dOut: ArrayLike<number>,
): { dGate: Float64Array; dUp: Float64Array } {
  return {
    dGate: Float64Array.from(gate, (z, i) => dOut[i] * up[i] * referenceSiluGrad(z)),
    dUp: Float64Array.from(gate, (z, i) => dOut[i] * referenceSilu(z)),
  };
}

// Random f32 values, returned in float64 so that the reference gets exactly the GPU's inputs.
function randomF32(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  return Float64Array.from(Float32Array.from(randomArray(n, seed, lo, hi)));
}

// Gate values at the saturated ends of the sigmoid, where exp(-z) overflows f32 for z < -88.7
// unless the kernel avoids it, and around 0.
const EXTREME_GATES = [80, -80, 88, -88, 90, -90, 200, -200, 1e30, -1e30, 0, 1e-8, -1e-8];

async function readAll(tensors: Tensor[]): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const t of tensors) {
    out.push(await t.toFloat32());
    t.dispose();
  }
  return out;
}

function assertFinite(values: Float32Array, label: string): void {
  const bad = values.findIndex((v) => !Number.isFinite(v));
  assert(bad < 0, `${label}: element ${bad} is ${values[bad]}`);
}

async function checkSwiglu(shape: number[], seed: number, extremes = false): Promise<void> {
  const n = shape.reduce((a, b) => a * b, 1);
  const label = `[${shape}]`;
  const gate = randomF32(n, seed, -12, 12);
  if (extremes) {
    gate.set(Float32Array.from(EXTREME_GATES).subarray(0, Math.min(n, EXTREME_GATES.length)));
  }
  const up = randomF32(n, seed + 1);
  const dOut = randomF32(n, seed + 2);

  const [out, dGate, dUp, siluOut, siluDx] = await readAll(tidy(() => {
    const g = fromArray(gate, shape);
    const u = fromArray(up, shape);
    const grads = swigluBackward(g, u, fromArray(dOut, shape));
    return [swiglu(g, u), grads.dGate, grads.dUp, silu(g), siluBackward(g, fromArray(dOut, shape))];
  }));
  for (
    const [values, name] of [[out, "out"], [dGate, "dGate"], [dUp, "dUp"], [siluOut, "silu"], [
      siluDx,
      "silu dx",
    ]] as const
  ) {
    assertFinite(values, `${label} ${name}`);
  }

  const expected = referenceSwiglu(gate, up);
  const grads = referenceSwigluBackward(gate, up, dOut);
  // The WGSL spec bounds f32 exp(z) within 3 + 2|z| ulps, under 1e-5 relative for |z| <= 12.
  // Larger errors only reach values below 1e-30, where silu is about z * exp(z), so the
  // absolute floor of 1e-6 covers them and values near zero.
  assertClose(out, expected, 1e-6, 1e-5, `${label} swiglu`);
  assertClose(dGate, grads.dGate, 1e-6, 1e-5, `${label} swiglu dGate`);
  assertClose(dUp, grads.dUp, 1e-6, 1e-5, `${label} swiglu dUp`);
  assertClose(siluOut, Float64Array.from(gate, referenceSilu), 1e-6, 1e-5, `${label} silu`);
  const expectedSiluDx = Float64Array.from(gate, (z, i) => dOut[i] * referenceSiluGrad(z));
  assertClose(siluDx, expectedSiluDx, 1e-6, 1e-5, `${label} silu dx`);
}

Deno.test("swiglu one element", async () => {
  await checkSwiglu([1], 10);
  await checkSwiglu([1, 1], 11);
});

Deno.test("swiglu small shapes", async () => {
  await checkSwiglu([1, 37], 12);
  await checkSwiglu([5, 37], 13);
  await checkSwiglu([130, 37], 14); // 4810 elements: not a multiple of the 256-thread workgroup
});

Deno.test("swiglu Qwen2.5 intermediate size", async () => {
  // 4864 is Qwen2.5-0.5B's intermediate_size.
  await checkSwiglu([1, 4864], 15);
  await checkSwiglu([2, 3, 4864], 16);
});

Deno.test("swiglu large gates", async () => {
  // silu(-200) = -200 * exp(-200) underflows to -0 and silu(1e30) = 1e30; neither may give NaN.
  await checkSwiglu([1, EXTREME_GATES.length], 17, true);
  await checkSwiglu([3, 37], 18, true);
});

Deno.test("swiglu reference matches finite differences", () => {
  // Proves the float64 derivative formulas used above, on gates where the sigmoid bends.
  const n = 40;
  const gate = randomArray(n, 19, -6, 6);
  const up = randomArray(n, 20);
  const dOut = randomArray(n, 21);
  const grads = referenceSwigluBackward(gate, up, dOut);
  // Central differences with step 1e-6 on float64: truncation and rounding near 1e-10.
  const numericGate = finiteDifferences((v) => dot(referenceSwiglu(v, up), dOut), gate);
  assertClose(grads.dGate, numericGate, 1e-8, 1e-7, "reference dGate vs finite differences");
  const numericUp = finiteDifferences((v) => dot(referenceSwiglu(gate, v), dOut), up);
  assertClose(grads.dUp, numericUp, 1e-8, 1e-7, "reference dUp vs finite differences");
  const siluDx = Float64Array.from(gate, (z, i) => dOut[i] * referenceSiluGrad(z));
  const numericSilu = finiteDifferences(
    (v) => dot(Float64Array.from(v, referenceSilu), dOut),
    gate,
  );
  assertClose(siluDx, numericSilu, 1e-8, 1e-7, "reference silu dx vs finite differences");
});

Deno.test("swiglu rejects mismatched shapes", () => {
  tidy(() => {
    const a = fromArray(new Float32Array(6), [2, 3]);
    const b = fromArray(new Float32Array(6), [3, 2]);
    let message = "";
    try {
      swiglu(a, b);
    } catch (e) {
      message = (e as Error).message;
    }
    assert(message.includes("up of shape [3,2]"), `expected an up shape error, got "${message}"`);

    message = "";
    try {
      swigluBackward(a, a, b);
    } catch (e) {
      message = (e as Error).message;
    }
    assert(
      message.includes("dOut of shape [3,2]"),
      `expected a dOut shape error, got "${message}"`,
    );

    message = "";
    try {
      siluBackward(a, fromArray(new Int32Array(6), [2, 3], "i32"));
    } catch (e) {
      message = (e as Error).message;
    }
    assert(message.includes("dy must be f32"), `expected a dtype error, got "${message}"`);
  });
});
