// Launcher for kernels/matmul.wgsl.

import { type Kernel, rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import { ceilDiv, elementWindow, fitsOneBinding, maxWindowElements, packParams } from "./common.ts";

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

// Shapes and flags of one call, as the dispatch helpers need them.
interface MatmulProblem {
  a: Tensor;
  b: Tensor;
  bias: Tensor | null;
  out: Tensor;
  M: number;
  N: number;
  K: number;
  batch: number;
  sharedB: boolean; // one B for every batch entry
  transA: boolean;
  transB: boolean;
  alpha: number;
  accumulate: boolean; // the caller passed `out`
}

// Multiplies the last two dimensions of `a` and `b`. Leading dimensions are batch dimensions;
// `b` may have none, in which case it is shared across the batch (a weight matrix).
// Operands larger than one storage binding (rt().gpu.maxBindingBytes), such as GPT-2's token
// embedding or a batch of vocabulary logits, are computed block by block; see planMatmulBlocks.
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

  const problem: MatmulProblem = {
    a,
    b,
    bias,
    out,
    M,
    N,
    K,
    batch,
    sharedB: batchB === 1,
    transA,
    transB,
    alpha,
    accumulate: options.out !== undefined,
  };
  const buffers = [a.buffer, b.buffer, out.buffer, ...(bias ? [bias.buffer] : [])];
  if (buffers.every(fitsOneBinding)) matmulWhole(problem);
  else matmulBlocked(problem);
  return out;
}

function matmulKernel(transA: boolean, transB: boolean, hasBias: boolean, accumulate: boolean, windowed = false): Kernel {
  return rt().kernel({
    shader: "matmul.wgsl",
    entryPoint: "main",
    bindings: ["uniform", "read", "read", "read", "storage"],
    defines: {
      TILE_M: MATMUL_TILE_M,
      TILE_N: MATMUL_TILE_N,
      TILE_K: MATMUL_TILE_K,
      TRANS_A: transA,
      TRANS_B: transB,
      HAS_BIAS: hasBias,
      ACCUMULATE: accumulate,
      WINDOWED: windowed,
    },
  });
}

// One dispatch over whole buffers, with the batch on the z axis of the grid.
function matmulWhole(p: MatmulProblem): void {
  const { M, N, K } = p;
  const kernel = matmulKernel(p.transA, p.transB, p.bias !== null, p.accumulate);
  const lda = p.transA ? M : K;
  const ldb = p.transB ? K : N;
  const params = packParams([M, N, K, M * K, p.sharedB ? 0 : K * N, M * N, { f32: p.alpha }, lda, ldb, N, 0, 0, 0, 0, 0, 0]);
  // Without a bias the binding still needs a buffer; `b` is bound there and never read.
  const biasBuffer = p.bias ? p.bias.buffer : p.b.buffer;
  rt().dispatch(kernel, params, [p.a.buffer, p.b.buffer, biasBuffer, p.out.buffer], [
    ceilDiv(N, MATMUL_TILE_N),
    ceilDiv(M, MATMUL_TILE_M),
    p.batch,
  ]);
}

// Block sizes along M, N and K for a product whose operands do not all fit one binding.
export interface MatmulBlocks {
  blockM: number;
  blockN: number;
  blockK: number;
}

// Chooses blocks of op(C) = op(A) op(B) so that the window of every stored operand of every
// block product fits one storage binding. A window spans whole stored rows, so each operand
// limits the block size of the dimension that indexes its stored rows: C and A (untransposed)
// limit M, A (transposed) and B (untransposed) limit K, and B (transposed) limits N. Block sizes
// are rounded to whole tiles where they exceed one, and evened out so the last block is not
// tiny. Throws if a single stored row of an operand does not fit one binding.
export function planMatmulBlocks(M: number, N: number, K: number, transA: boolean, transB: boolean): MatmulBlocks {
  if (M < 1 || N < 1 || K < 1) {
    throw new Error(`matmul: cannot split a product with an empty dimension (M ${M}, N ${N}, K ${K})`);
  }
  const maxElements = maxWindowElements();
  // Stored rows of `width` elements that one window covers, when consecutive rows are `width` apart.
  const rowsPerWindow = (operand: string, width: number): number => {
    if (width > maxElements) {
      throw new Error(
        `matmul: a row of ${operand} contains ${width} f32 values, more than one storage binding of ` +
          `${rt().gpu.maxBindingBytes} bytes can cover`,
      );
    }
    return Math.floor((maxElements - width) / width) + 1;
  };

  let blockM = Math.min(M, rowsPerWindow("C", N));
  let blockK = K;
  let blockN = N;
  if (transA) blockK = Math.min(blockK, rowsPerWindow("A", M));
  else blockM = Math.min(blockM, rowsPerWindow("A", K));
  if (transB) blockN = Math.min(blockN, rowsPerWindow("B", K));
  else blockK = Math.min(blockK, rowsPerWindow("B", N));

  return {
    blockM: evenBlock(M, blockM, MATMUL_TILE_M),
    blockN: evenBlock(N, blockN, MATMUL_TILE_N),
    blockK: evenBlock(K, blockK, MATMUL_TILE_K),
  };
}

// A block size no larger than `maxBlock` that splits `total` into as few blocks as `maxBlock`
// does, of nearly equal sizes, in whole tiles when `maxBlock` holds at least one tile.
function evenBlock(total: number, maxBlock: number, tile: number): number {
  if (maxBlock >= total) return total;
  const block = maxBlock >= tile ? Math.floor(maxBlock / tile) * tile : maxBlock;
  const even = ceilDiv(total, ceilDiv(total, block));
  return Math.min(block, maxBlock >= tile ? ceilDiv(even, tile) * tile : even);
}

// Computes the product block by block, one dispatch per batch entry and block, binding only the
// window of each buffer that the block reads or writes. Blocks after the first along K add to C,
// and only the first adds the bias.
// NOTE: a batch of many small entries whose total alone exceeds a binding also gets one dispatch
// per entry, which is slow for large batches. engine/ops.ts passes only 2-D operands.
function matmulBlocked(p: MatmulProblem): void {
  const { M, N, K, transA, transB } = p;
  const { blockM, blockN, blockK } = planMatmulBlocks(M, N, K, transA, transB);
  const lda = transA ? M : K;
  const ldb = transB ? K : N;

  for (let z = 0; z < p.batch; z++) {
    const baseA = z * M * K;
    const baseB = p.sharedB ? 0 : z * K * N;
    const baseC = z * M * N;
    for (let m0 = 0; m0 < M; m0 += blockM) {
      const m1 = Math.min(m0 + blockM, M);
      for (let n0 = 0; n0 < N; n0 += blockN) {
        const n1 = Math.min(n0 + blockN, N);
        const windowC = storedBlock(p.out, baseC, N, m0, m1, n0, n1);
        const windowBias = p.bias ? elementWindow(p.bias.buffer, n0, n1) : null;
        for (let k0 = 0; k0 < K; k0 += blockK) {
          const k1 = Math.min(k0 + blockK, K);
          const windowA = transA ? storedBlock(p.a, baseA, M, k0, k1, m0, m1) : storedBlock(p.a, baseA, K, m0, m1, k0, k1);
          const windowB = transB ? storedBlock(p.b, baseB, K, n0, n1, k0, k1) : storedBlock(p.b, baseB, N, k0, k1, n0, n1);
          const first = k0 === 0;
          const kernel = matmulKernel(transA, transB, windowBias !== null && first, p.accumulate || !first, true);
          const params = packParams([
            m1 - m0,
            n1 - n0,
            k1 - k0,
            0,
            0,
            0,
            { f32: p.alpha },
            lda,
            ldb,
            N,
            windowA.elementOffset,
            windowB.elementOffset,
            windowC.elementOffset,
            windowBias?.elementOffset ?? 0,
            0,
            0,
          ]);
          // Without a bias the bias binding gets B's window, which the kernel does not read.
          const biasBinding = windowBias?.binding ?? windowB.binding;
          rt().dispatch(kernel, params, [windowA.binding, windowB.binding, biasBinding, windowC.binding], [
            ceilDiv(n1 - n0, MATMUL_TILE_N),
            ceilDiv(m1 - m0, MATMUL_TILE_M),
            1,
          ]);
        }
      }
    }
  }
}

// The window over rows [r0, r1) and columns [c0, c1) of a row-major matrix that starts at
// element `base` of `t` and has `ld` elements per row.
function storedBlock(t: Tensor, base: number, ld: number, r0: number, r1: number, c0: number, c1: number) {
  return elementWindow(t.buffer, base + r0 * ld + c0, base + (r1 - 1) * ld + c1);
}

// Overrides the tile sizes, for tuning benchmarks.
export function setMatmulTiles(t: { tileM: number; tileN: number; tileK: number }): void {
  if (t.tileM % 4 !== 0 || t.tileN % 4 !== 0) throw new Error(`matmul tiles ${t.tileM} x ${t.tileN} must be multiples of 4`);
  MATMUL_TILE_M = t.tileM;
  MATMUL_TILE_N = t.tileN;
  MATMUL_TILE_K = t.tileK;
}
