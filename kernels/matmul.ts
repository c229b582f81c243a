// Launcher for kernels/matmul.wgsl.

import { rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import { ceilDiv, packParams } from "./common.ts";

// Tile sizes in elements; every thread computes a 4 x 4 block, so TILE_M and TILE_N must be
// multiples of 4. On llvmpipe (2 cores, T-size training shapes) 32 x 32 x 32 and 64 x 64 x 32
// both reached about 4.1 GFLOP/s, 16 x 16 only 2.4; 32 x 32 wastes less on narrow matrices.
export let MATMUL_TILE_M = 32;
export let MATMUL_TILE_N = 32;
export let MATMUL_TILE_K = 32;

export interface MatmulOptions {
  transA?: boolean; // A is stored K x M
  transB?: boolean; // B is stored N x K
  bias?: Tensor | null; // length N, added to every row
  alpha?: number;
  out?: Tensor; // accumulate into this tensor (C += ...) instead of allocating
}

// Multiplies the last two dimensions of `a` and `b`. Leading dimensions are batch dimensions;
// `b` may have none, in which case it is shared across the batch (a weight matrix).
export function matmul(a: Tensor, b: Tensor, options: MatmulOptions = {}): Tensor {
  const { transA = false, transB = false, bias = null, alpha = 1 } = options;
  if (a.shape.length < 2 || b.shape.length < 2) {
    throw new Error(`matmul: operands need at least 2 dimensions, got [${a.shape}] and [${b.shape}]`);
  }
  const [ra, ca] = a.shape.slice(-2);
  const [rb, cb] = b.shape.slice(-2);
  const M = transA ? ca : ra;
  const K = transA ? ra : ca;
  const Kb = transB ? cb : rb;
  const N = transB ? rb : cb;
  if (K !== Kb) {
    throw new Error(`matmul: inner dimensions differ: [${a.shape}]${transA ? "^T" : ""} @ [${b.shape}]${transB ? "^T" : ""}`);
  }

  const batchShape = a.shape.slice(0, -2);
  const batch = batchShape.reduce((x, y) => x * y, 1);
  const batchB = b.shape.slice(0, -2).reduce((x, y) => x * y, 1);
  if (batchB !== 1 && batchB !== batch) {
    throw new Error(`matmul: batch dimensions of [${a.shape}] and [${b.shape}] do not match`);
  }
  if (bias && bias.size !== N) throw new Error(`matmul: bias of shape [${bias.shape}] for ${N} output columns`);

  const outShape = [...batchShape, M, N];
  let out = options.out;
  if (out) {
    if (out.size !== batch * M * N) throw new Error(`matmul: output of shape [${out.shape}] for result [${outShape}]`);
  } else {
    out = empty(outShape);
  }

  const kernel = rt().kernel({
    shader: "matmul.wgsl",
    entryPoint: "main",
    bindings: ["uniform", "read", "read", "read", "storage"],
    defines: {
      TILE_M: MATMUL_TILE_M,
      TILE_N: MATMUL_TILE_N,
      TILE_K: MATMUL_TILE_K,
      TRANS_A: transA,
      TRANS_B: transB,
      HAS_BIAS: bias !== null,
      ACCUMULATE: options.out !== undefined,
    },
  });
  const params = packParams([M, N, K, M * K, batchB === 1 ? 0 : K * N, M * N, { f32: alpha }, 0]);
  // Without a bias the binding still needs a buffer; `b` is bound there and never read.
  const biasBuffer = bias ? bias.buffer : b.buffer;
  rt().dispatch(kernel, params, [a.buffer, b.buffer, biasBuffer, out.buffer], [
    ceilDiv(N, MATMUL_TILE_N),
    ceilDiv(M, MATMUL_TILE_M),
    batch,
  ]);
  return out;
}

// Overrides the tile sizes, for tuning benchmarks.
export function setMatmulTiles(t: { tileM: number; tileN: number; tileK: number }): void {
  if (t.tileM % 4 !== 0 || t.tileN % 4 !== 0) throw new Error(`matmul tiles ${t.tileM} x ${t.tileN} must be multiples of 4`);
  MATMUL_TILE_M = t.tileM;
  MATMUL_TILE_N = t.tileN;
  MATMUL_TILE_K = t.tileK;
}
