import { fromArray, tidy } from "../engine/tensor.ts";
import { activation, activationBackward, add, addInto, fill, mul, scale } from "../kernels/elementwise.ts";
import { assertClose, dot, finiteDifferences, gpuReady, randomArray } from "./testing.ts";

await gpuReady();

// float64 references of the activations and their derivatives.
const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
const reference = {
  relu: (x: number) => Math.max(x, 0),
  gelu: (x: number) => 0.5 * x * (1 + Math.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x ** 3))),
  quick_gelu: (x: number) => x / (1 + Math.exp(-1.702 * x)),
};
const derivative = {
  relu: (x: number) => (x > 0 ? 1 : 0),
  gelu: (x: number) => {
    const t = Math.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x ** 3));
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x);
  },
  quick_gelu: (x: number) => {
    const s = 1 / (1 + Math.exp(-1.702 * x));
    return s + 1.702 * x * s * (1 - s);
  },
};

// 1, a size below one workgroup, one not a multiple of 256, and one needing several workgroups.
for (const n of [1, 37, 1000, 70001]) {
  for (const kind of ["relu", "gelu", "quick_gelu"] as const) {
    Deno.test(`activation ${kind} n=${n}`, async () => {
      // Values up to +-12 reach the saturated tails of tanh and the sigmoid.
      const x = randomArray(n, 21, -12, 12);
      const dy = randomArray(n, 22);
      const { y, dx } = tidy(() => {
        const tx = fromArray(x, [n]);
        return { y: activation(kind, tx), dx: activationBackward(kind, tx, fromArray(dy, [n])) };
      });
      const expectedY = Array.from(x, reference[kind]);
      const expectedDx = Array.from(x, (v, i) => derivative[kind](v) * dy[i]);
      // f32 evaluation of exp/tanh: a few ulp of values up to 12.
      assertClose(await y.toFloat32(), expectedY, 1e-5, 1e-5, `${kind} forward`);
      assertClose(await dx.toFloat32(), expectedDx, 1e-5, 1e-4, `${kind} backward`);
      y.dispose();
      dx.dispose();
    });
  }
}

Deno.test("activation derivatives match finite differences", () => {
  // Proves the float64 derivative formulas used above; relu is checked away from its kink.
  const x = randomArray(50, 23, -4, 4).map((v) => (Math.abs(v) < 1e-3 ? 0.5 : v));
  const r = randomArray(50, 24);
  for (const kind of ["relu", "gelu", "quick_gelu"] as const) {
    const fd = finiteDifferences((v) => dot(Array.from(v, reference[kind]), r), x);
    assertClose(Array.from(x, (v, i) => derivative[kind](v) * r[i]), fd, 1e-7, 1e-6, `${kind} derivative`);
  }
});

Deno.test("add broadcasts trailing shape", async () => {
  const rows = 7, cols = 13;
  const a = randomArray(rows * cols, 25);
  const b = randomArray(cols, 26);
  const out = tidy(() => add(fromArray(a, [rows, cols]), fromArray(b, [cols]), 2, -3));
  const expected = Array.from(a, (v, i) => 2 * v - 3 * b[i % cols]);
  assertClose(await out.toFloat32(), expected, 1e-6, 1e-6, "alpha a + beta b"); // f32 rounding
  out.dispose();
});

Deno.test("addInto mul scale fill", async () => {
  const n = 300;
  const a = randomArray(n, 27);
  const b = randomArray(n, 28);
  const target = fromArray(a, [n]);
  const { product, scaled, filled } = tidy(() => {
    addInto(target, fromArray(b, [n]), 0.5);
    return { product: mul(fromArray(a, [n]), fromArray(b, [n])), scaled: scale(fromArray(a, [n]), -2), filled: fill([3, 5], 1.25) };
  });
  assertClose(await target.toFloat32(), Array.from(a, (v, i) => v + 0.5 * b[i]), 1e-6, 1e-6, "addInto");
  assertClose(await product.toFloat32(), Array.from(a, (v, i) => v * b[i]), 1e-6, 1e-6, "mul");
  assertClose(await scaled.toFloat32(), Float32Array.from(a).map((v) => -2 * v), 0, 0, "scale"); // exact in f32
  assertClose(await filled.toFloat32(), new Array(15).fill(1.25), 0, 0, "fill");
  for (const t of [target, product, scaled, filled]) t.dispose();
});
