import { backward } from "../engine/autograd.ts";
import * as ops from "../engine/ops.ts";
import { fromArray, tidy } from "../engine/tensor.ts";
import { assert, assertClose, dot, finiteDifferences, gpuReady, randomArray } from "./testing.ts";

await gpuReady();

// float64 reference of f(x) = r . (W2 relu(x W1^T + b1) + x), x (N, I), W1 (H, I), W2 as Conv1D (H, I).
function reference(x: Float64Array, w1: Float64Array, b1: Float64Array, w2: Float64Array, N: number, I: number, H: number) {
  const y = new Float64Array(N * I);
  for (let n = 0; n < N; n++) {
    const h = new Float64Array(H);
    for (let j = 0; j < H; j++) {
      let s = b1[j];
      for (let i = 0; i < I; i++) s += x[n * I + i] * w1[j * I + i];
      h[j] = Math.max(s, 0);
    }
    for (let i = 0; i < I; i++) {
      let s = x[n * I + i];
      for (let j = 0; j < H; j++) s += h[j] * w2[j * I + i];
      y[n * I + i] = s;
    }
  }
  return y;
}

const N = 5, I = 7, H = 11;
const x = randomArray(N * I, 11);
const w1 = randomArray(H * I, 12);
const b1 = randomArray(H, 13);
const w2 = randomArray(H * I, 14);
const r = randomArray(N * I, 15);

for (const frozenW1 of [false, true]) {
  Deno.test(`autograd mlp gradients frozenW1=${frozenW1}`, async () => {
    const tx = fromArray(x, [N, I]);
    tx.requiresGrad = true;
    const tw1 = fromArray(w1, [H, I]);
    tw1.requiresGrad = !frozenW1;
    const tb1 = fromArray(b1, [H]);
    tb1.requiresGrad = true;
    const tw2 = fromArray(w2, [H, I]);
    tw2.requiresGrad = true;

    tidy(() => {
      const h = ops.activation("relu", ops.linear(tx, tw1, tb1, "out_in"));
      const y = ops.add(ops.linear(h, tw2, null, "in_out"), tx); // x feeds two paths: grads accumulate
      backward(y, fromArray(r, [N, I]));
      for (const t of [tx, tw1, tb1, tw2]) if (t.grad) t.grad.keep();
    });

    const f = (xs: Float64Array, a: Float64Array, b: Float64Array, c: Float64Array) => dot(reference(xs, a, b, c, N, I, H), r);
    const expected = {
      x: finiteDifferences((v) => f(v, w1, b1, w2), x),
      w1: finiteDifferences((v) => f(x, v, b1, w2), w1),
      b1: finiteDifferences((v) => f(x, w1, v, w2), b1),
      w2: finiteDifferences((v) => f(x, w1, b1, v), w2),
    };
    // Finite differences of the float64 reference are exact to ~1e-8 away from relu's kink.
    // The GPU computes in f32, so 1e-4 covers its rounding over sums of at most 11 terms.
    assertClose(await tx.grad!.toFloat32(), expected.x, 1e-4, 1e-4, "dx");
    assertClose(await tb1.grad!.toFloat32(), expected.b1, 1e-4, 1e-4, "db1");
    assertClose(await tw2.grad!.toFloat32(), expected.w2, 1e-4, 1e-4, "dW2");
    if (frozenW1) assert(tw1.grad === null, "a frozen weight must not receive a gradient");
    else assertClose(await tw1.grad!.toFloat32(), expected.w1, 1e-4, 1e-4, "dW1");
    for (const t of [tx, tw1, tb1, tw2]) {
      t.grad?.dispose();
      t.dispose();
    }
  });
}
