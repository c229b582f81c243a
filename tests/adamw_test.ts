import { fromArray, Tensor } from "../engine/tensor.ts";
import { AdamW } from "../kernels/adamw.ts";
import { assert, assertClose, gpuReady, randomArray } from "./testing.ts";

await gpuReady();

// ---- float64 reference of torch.optim.AdamW with torch.nn.utils.clip_grad_norm_ ----

interface RefParam {
  value: Float64Array;
  expAvg: Float64Array;
  expAvgSq: Float64Array;
  step: number;
  weightDecay: number;
}

interface RefSettings {
  beta1: number;
  beta2: number;
  eps: number;
  maxGradNorm: number | null;
}

// Applies one step to the parameters whose gradient is not null; returns the gradient norm.
function refStep(params: RefParam[], grads: (Float64Array | null)[], lr: number, s: RefSettings): number {
  let sumSq = 0;
  grads.forEach((g) => g?.forEach((x) => sumSq += x * x));
  const norm = Math.sqrt(sumSq);
  const clip = s.maxGradNorm === null ? 1 : Math.min(1, s.maxGradNorm / (norm + 1e-6));

  params.forEach((p, k) => {
    const g = grads[k];
    if (!g) return;
    p.step++;
    const bc1 = 1 - s.beta1 ** p.step;
    const bc2 = 1 - s.beta2 ** p.step;
    for (let i = 0; i < p.value.length; i++) {
      const gi = g[i] * clip;
      p.value[i] *= 1 - lr * p.weightDecay;
      p.expAvg[i] = s.beta1 * p.expAvg[i] + (1 - s.beta1) * gi;
      p.expAvgSq[i] = s.beta2 * p.expAvgSq[i] + (1 - s.beta2) * gi * gi;
      p.value[i] -= (lr / bc1) * p.expAvg[i] / (Math.sqrt(p.expAvgSq[i]) / Math.sqrt(bc2) + s.eps);
    }
  });
  return norm;
}

// f32 round trip, so that the reference starts from exactly the values the GPU holds.
function asF32(x: Float64Array): Float64Array {
  return Float64Array.from(Float32Array.from(x));
}

function refParam(value: Float64Array, weightDecay: number): RefParam {
  const n = value.length;
  return { value: Float64Array.from(value), expAvg: new Float64Array(n), expAvgSq: new Float64Array(n), step: 0, weightDecay };
}

function disposeAll(tensors: Tensor[]): void {
  for (const t of tensors) {
    t.grad?.dispose();
    t.dispose();
  }
}

const SIZES = [1, 37, 1000];
const LRS = [1e-2, 5e-3, 2e-3]; // a changing rate checks that per-step values reach the kernel
const BETAS: [number, number] = [0.9, 0.999];
const EPS = 1e-8;

// Parameters near 1 and updates near lr: f32 keeps about 1e-7 absolute on each value, and
// three steps add a few such errors.
const PARAM_ATOL = 1e-6;
// Moments are f32 running averages of values below 2 (and their squares): relative error near
// 1e-7, plus cancellation where a first moment passes through zero.
const MOMENT_ATOL = 2e-7;
const MOMENT_RTOL = 1e-5;

for (const weightDecay of [0, 0.01]) {
  for (const maxGradNorm of [null, 1, 1000]) {
    const name = `wd ${weightDecay} clip ${maxGradNorm ?? "none"}`;

    Deno.test(`adamw three steps ${name}`, async () => {
      const initial = SIZES.map((n, k) => asF32(randomArray(n, 10 + k)));
      const params = initial.map((x, k) => fromArray(x, [SIZES[k]]).keep());
      const ref = initial.map((x) => refParam(x, weightDecay));
      const opt = new AdamW(params, { lr: 0, betas: BETAS, eps: EPS, weightDecay, maxGradNorm });

      for (let t = 0; t < 3; t++) {
        const grads = SIZES.map((n, k) => asF32(randomArray(n, 100 * t + k, -2, 2)));
        params.forEach((p, k) => p.grad = fromArray(grads[k], [SIZES[k]]));
        opt.step(LRS[t]);
        const norm = refStep(ref, grads, LRS[t], { beta1: BETAS[0], beta2: BETAS[1], eps: EPS, maxGradNorm });
        if (maxGradNorm === 1) assert(norm > maxGradNorm, `norm ${norm} does not exceed ${maxGradNorm}, so clipping is idle`);
        if (maxGradNorm === 1000) assert(norm < maxGradNorm, `norm ${norm} exceeds ${maxGradNorm}`);
        if (maxGradNorm !== null) {
          // The norm of ~1000 f32 values near 1, summed in f32.
          assertClose([(await opt.gradNorm())!], [norm], 0, 1e-6, `grad norm step ${t + 1}`);
        }
        opt.zeroGrad();
      }

      for (let k = 0; k < SIZES.length; k++) {
        assertClose(await params[k].toFloat32(), ref[k].value, PARAM_ATOL, 0, `param ${SIZES[k]} ${name}`);
      }
      const state = await opt.state();
      assertClose(state.steps, [3, 3, 3], 0, 0, "steps");
      for (let k = 0; k < SIZES.length; k++) {
        assertClose(state.expAvg[k], ref[k].expAvg, MOMENT_ATOL, MOMENT_RTOL, `exp_avg ${SIZES[k]}`);
        assertClose(state.expAvgSq[k], ref[k].expAvgSq, MOMENT_ATOL, MOMENT_RTOL, `exp_avg_sq ${SIZES[k]}`);
      }
      opt.dispose();
      disposeAll(params);
    });
  }
}

Deno.test("adamw skips params without grad", async () => {
  const initial = SIZES.map((n, k) => asF32(randomArray(n, 20 + k)));
  const params = initial.map((x, k) => fromArray(x, [SIZES[k]]).keep());
  const ref = initial.map((x) => refParam(x, 0.01));
  const settings = { beta1: BETAS[0], beta2: BETAS[1], eps: EPS, maxGradNorm: 1 };
  const opt = new AdamW(params, { betas: BETAS, eps: EPS, weightDecay: 0.01, maxGradNorm: 1 });

  // Parameter 1 has no gradient at the first step and parameter 2 none at the second, so their
  // step counts and bias corrections fall behind, and the clipping norm covers only the others.
  const present = [[true, false, true], [true, true, false], [true, true, true]];
  for (let t = 0; t < 3; t++) {
    const grads = SIZES.map((n, k) => present[t][k] ? asF32(randomArray(n, 200 + 10 * t + k, -2, 2)) : null);
    params.forEach((p, k) => p.grad = grads[k] ? fromArray(grads[k]!, [SIZES[k]]) : null);
    opt.step(LRS[t]);
    refStep(ref, grads, LRS[t], settings);
    opt.zeroGrad();
  }

  const state = await opt.state();
  assertClose(state.steps, [3, 2, 2], 0, 0, "per-parameter steps");
  for (let k = 0; k < SIZES.length; k++) {
    assertClose(await params[k].toFloat32(), ref[k].value, PARAM_ATOL, 0, `param ${SIZES[k]} with gaps`);
  }
  opt.dispose();
  disposeAll(params);
});

Deno.test("adamw param groups", async () => {
  const initial = [asF32(randomArray(37, 30)), asF32(randomArray(1000, 31))];
  const params = initial.map((x) => fromArray(x, [x.length]).keep());
  const ref = [refParam(initial[0], 0), refParam(initial[1], 0.1)];
  const opt = new AdamW(
    [{ params: [params[0]], weightDecay: 0 }, { params: [params[1]] }],
    { lr: 1e-2, betas: BETAS, eps: EPS, weightDecay: 0.1 },
  );
  for (let t = 0; t < 3; t++) {
    const grads = initial.map((x, k) => asF32(randomArray(x.length, 300 + 10 * t + k)));
    params.forEach((p, k) => p.grad = fromArray(grads[k], [grads[k].length]));
    opt.step(); // the constructor's lr
    refStep(ref, grads, 1e-2, { beta1: BETAS[0], beta2: BETAS[1], eps: EPS, maxGradNorm: null });
    opt.zeroGrad();
  }
  assertClose(await params[0].toFloat32(), ref[0].value, PARAM_ATOL, 0, "group without decay");
  assertClose(await params[1].toFloat32(), ref[1].value, PARAM_ATOL, 0, "group with decay 0.1");
  opt.dispose();
  disposeAll(params);
});

Deno.test("adamw state round trip", async () => {
  const initial = SIZES.map((n, k) => asF32(randomArray(n, 40 + k)));
  const grads = [0, 1, 2].map((t) => SIZES.map((n, k) => asF32(randomArray(n, 400 + 10 * t + k))));
  const options = { lr: 1e-2, weightDecay: 0.01, maxGradNorm: 1 };

  // Optimizer A runs three steps. Optimizer B copies A's parameters and state after two steps
  // and runs the third; both must end bit for bit equal.
  const a = initial.map((x, k) => fromArray(x, [SIZES[k]]).keep());
  const optA = new AdamW(a, options);
  for (let t = 0; t < 2; t++) {
    a.forEach((p, k) => p.grad = fromArray(grads[t][k], [SIZES[k]]));
    optA.step();
    optA.zeroGrad();
  }
  const saved = await optA.state();
  const b: Tensor[] = [];
  for (const p of a) b.push(fromArray(await p.toFloat32(), [...p.shape]).keep());
  const optB = new AdamW(b, options);
  optB.loadState(saved);
  assertClose((await optB.state()).steps, [2, 2, 2], 0, 0, "loaded steps");

  for (const [params, opt] of [[a, optA], [b, optB]] as const) {
    params.forEach((p, k) => p.grad = fromArray(grads[2][k], [SIZES[k]]));
    opt.step();
    opt.zeroGrad();
  }
  for (let k = 0; k < SIZES.length; k++) {
    assertClose(await b[k].toFloat32(), await a[k].toFloat32(), 0, 0, `resumed param ${SIZES[k]}`); // same f32 operations
  }
  optA.dispose();
  optB.dispose();
  disposeAll([...a, ...b]);
});

Deno.test("adamw loadState size mismatch", () => {
  const p = fromArray([1, 2, 3], [3]).keep();
  const opt = new AdamW([p]);
  let message = "";
  try {
    opt.loadState({ steps: Float32Array.from([1]), expAvg: [new Float32Array(2)], expAvgSq: [new Float32Array(3)] });
  } catch (error) {
    message = (error as Error).message;
  }
  assert(message.includes("expected 3"), `expected an error about 3 values, got "${message}"`);
  opt.dispose();
  p.dispose();
});

Deno.test("adamw zeroGrad disposes grads", () => {
  const p = fromArray([1, 2], [2]).keep();
  const grad = fromArray([0.5, -0.5], [2]);
  p.grad = grad;
  const opt = new AdamW([p]);
  opt.zeroGrad();
  assert(p.grad === null, "grad should be cleared");
  assert(grad.isDisposed, "grad tensor should be disposed");
  opt.dispose();
  p.dispose();
});
