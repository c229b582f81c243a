// Launchers for kernels/matmul_bf16.wgsl: products with frozen bfloat16 weights and a bfloat16
// embedding gather, plus packing helpers. Weights take half the memory of f32 on any adapter,
// because two bf16 values share one u32 and the shaders decode them with integer shifts.
//
// Packed layout: element e of the row-major weight is in word e >> 1, in the low 16 bits when e
// is even and the high 16 bits when e is odd. These are the little-endian bytes of a bf16 array
// (as safetensors stores BF16 tensors) read as u32, so checkpoint bytes upload unchanged.

import { rt } from "../engine/runtime.ts";
import { empty, Tensor } from "../engine/tensor.ts";
import {
  ceilDiv,
  elementWindow,
  fitsOneBinding,
  grid1d,
  maxWindowElements,
  packParams,
} from "./common.ts";

// Tile sizes in elements, as in kernels/matmul.ts, whose llvmpipe measurements found 32 x 32 x 32
// among the fastest. Every thread computes a 4 x 4 block, so TILE_M and TILE_N must be multiples
// of 4.
// NOTE: a decode step (M = 1) fills 1 of the 32 rows of a tile, so generation would run faster
// with a matrix-vector kernel.
export const MATMUL_BF16_TILE_M = 32;
export const MATMUL_BF16_TILE_N = 32;
export const MATMUL_BF16_TILE_K = 32;
// Threads per workgroup of the gather, one thread per output element.
const GATHER_WORKGROUP = 256;

// A bf16 matrix of rows x cols packed two values per u32 (see the file header). `tensor` is a
// u32 tensor of shape [ceil(rows * cols / 2)]; when rows * cols is odd the last high half is 0.
export interface Bf16Weight {
  tensor: Tensor;
  rows: number;
  cols: number;
}

export interface MatmulBf16Options {
  // W is stored N x K (nn.Linear's out_features x in_features), so y = x @ W^T. Default true.
  // With false, W is stored K x N and y = x @ W.
  transB?: boolean;
  bias?: Tensor | null; // f32, length N, added to every row
}

// ---- packing ----------------------------------------------------------------------------------

// Rounds f32 values to bf16 (round to nearest, ties to even) and packs them two per u32, element
// 2i in the low half of word i. NaN stays NaN (a quiet NaN with the input's sign); values that
// round past the largest bf16 become infinity, as IEEE rounding prescribes.
export function packBf16(values: Float32Array): Uint32Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const packed = new Uint32Array(ceilDiv(values.length, 2));
  for (let i = 0; i < values.length; i++) {
    const half = f32BitsToBf16(bits[i]);
    packed[i >> 1] |= (i & 1) === 0 ? half : half << 16;
  }
  return packed;
}

function f32BitsToBf16(x: number): number {
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x0040) & 0xffff; // NaN, made quiet
  // Adding 0x7fff plus the lowest kept bit rounds to nearest with ties to even. A carry out of
  // the mantissa moves the value to the next exponent, or to infinity, as rounding should.
  const rounded = (x + 0x7fff + ((x >>> 16) & 1)) >>> 0;
  return rounded >>> 16;
}

// Unpacks `count` bf16 values from the packed layout into f32 exactly.
export function unpackBf16(packed: Uint32Array, count: number): Float32Array {
  if (packed.length < ceilDiv(count, 2)) {
    throw new Error(`unpackBf16: ${packed.length} words hold fewer than ${count} values`);
  }
  const bits = new Uint32Array(count);
  for (let i = 0; i < count; i++) {
    const word = packed[i >> 1];
    bits[i] = (i & 1) === 0 ? (word << 16) >>> 0 : (word & 0xffff0000) >>> 0;
  }
  return new Float32Array(bits.buffer);
}

function checkMatrixShape(caller: string, rows: number, cols: number): void {
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1) {
    throw new Error(`${caller}: rows and cols must be positive integers, got ${rows} x ${cols}`);
  }
}

// Rounds a row-major f32 matrix to bf16 and uploads it as a packed weight.
export function uploadBf16(values: Float32Array, rows: number, cols: number): Bf16Weight {
  checkMatrixShape("uploadBf16", rows, cols);
  if (values.length !== rows * cols) {
    throw new Error(`uploadBf16: ${values.length} values do not fill ${rows} x ${cols}`);
  }
  const packed = packBf16(values);
  const tensor = empty([packed.length], "u32");
  rt().write(tensor.buffer, 0, packed);
  return { tensor, rows, cols };
}

// Uploads a row-major bf16 matrix from its raw little-endian bytes (a safetensors BF16 tensor)
// without converting them.
export function uploadBf16Bytes(bytes: Uint8Array, rows: number, cols: number): Bf16Weight {
  checkMatrixShape("uploadBf16Bytes", rows, cols);
  if (bytes.length !== rows * cols * 2) {
    throw new Error(
      `uploadBf16Bytes: ${bytes.length} bytes do not hold ${rows} x ${cols} bf16 values (${
        rows * cols * 2
      } bytes)`,
    );
  }
  const words = ceilDiv(rows * cols, 2);
  const tensor = empty([words], "u32");
  // Queue writes need a length that is a multiple of 4 bytes, so an odd element count is padded
  // with a zero half.
  const data = bytes.length === words * 4 ? bytes : padBytes(bytes, words * 4);
  rt().write(tensor.buffer, 0, data);
  return { tensor, rows, cols };
}

function padBytes(bytes: Uint8Array, length: number): Uint8Array {
  const padded = new Uint8Array(length);
  padded.set(bytes);
  return padded;
}

function checkWeight(caller: string, w: Bf16Weight): void {
  w.tensor.assertLive(`${caller} weight`);
  checkMatrixShape(caller, w.rows, w.cols);
  if (w.tensor.dtype !== "u32" || w.tensor.size !== ceilDiv(w.rows * w.cols, 2)) {
    throw new Error(
      `${caller}: a ${w.rows} x ${w.cols} bf16 weight needs a u32 tensor of ${
        ceilDiv(w.rows * w.cols, 2)
      } words, got ${w.tensor.dtype} [${w.tensor.shape}]`,
    );
  }
}

// ---- products ---------------------------------------------------------------------------------

// y = x @ W^T (transB, W stored N x K) or x @ W (W stored K x N), over the last dimension of x:
// x is (..., K) f32 and y is (..., N) f32, accumulated in f32.
export function matmulBf16Weight(
  x: Tensor,
  w: Bf16Weight,
  options: MatmulBf16Options = {},
): Tensor {
  const { transB = true, bias = null } = options;
  return productBf16("matmulBf16Weight", x, w, transB, bias);
}

// The gradient of matmulBf16Weight with respect to x: dx = dy @ W for transB (W stored N x K),
// or dy @ W^T otherwise. dy is (..., N) and dx is (..., K). Frozen weights get no gradient, but
// the gradient still flows through them to x.
export function matmulBf16WeightBackwardInput(
  dy: Tensor,
  w: Bf16Weight,
  options: { transB?: boolean } = {},
): Tensor {
  const { transB = true } = options;
  return productBf16("matmulBf16WeightBackwardInput", dy, w, !transB, null);
}

// Shapes of one product C (M x N) = A (M x K) @ op(W), and how W is stored.
interface Bf16Problem {
  a: Tensor;
  w: Bf16Weight;
  bias: Tensor | null;
  out: Tensor;
  M: number;
  N: number;
  K: number;
  transW: boolean; // W is stored N x K
}

// C = A @ op(W) with op(W) = W^T when `transW` (W stored N x K), else W (stored K x N).
function productBf16(
  caller: string,
  a: Tensor,
  w: Bf16Weight,
  transW: boolean,
  bias: Tensor | null,
): Tensor {
  checkWeight(caller, w);
  a.assertLive(`${caller} input`);
  const N = transW ? w.rows : w.cols;
  const K = transW ? w.cols : w.rows;
  const stored = transW ? `${N} x ${K}` : `${K} x ${N}`;
  if (a.dtype !== "f32" || a.shape.length < 1 || a.shape[a.shape.length - 1] !== K) {
    throw new Error(
      `${caller}: input must be f32 (..., ${K}) for a weight stored ${stored}, got ${a.dtype} [${a.shape}]`,
    );
  }
  if (bias) {
    bias.assertLive(`${caller} bias`);
    if (bias.dtype !== "f32" || bias.size !== N) {
      throw new Error(
        `${caller}: bias must be f32 with ${N} values, got ${bias.dtype} [${bias.shape}]`,
      );
    }
  }
  const M = a.size / K;
  const out = empty([...a.shape.slice(0, -1), N]);
  if (M > 0) dispatchBlocks({ a, w, bias, out, M, N, K, transW });
  return out;
}

// Block sizes along M, N and K such that every operand's window fits one storage binding.
export interface Bf16Blocks {
  blockM: number;
  blockN: number;
  blockK: number;
}

// Chooses blocks of C = A @ op(W). A window spans whole stored rows, so A and C limit M, and the
// stored W limits N (stored N x K) or K (stored K x N). With real limits (128 MiB on llvmpipe)
// only vocabulary-sized operands split, such as Qwen2.5's 151936 x 896 tied embedding (272 MB in
// bf16) or its logits. Throws if one stored row does not fit a binding.
export function planBf16Blocks(M: number, N: number, K: number, transW: boolean): Bf16Blocks {
  const maxWords = maxWindowElements();
  const limit = rt().gpu.maxBindingBytes;
  const f32Rows = (operand: string, width: number): number => {
    if (width > maxWords) {
      throw new Error(
        `matmulBf16: a row of ${operand} with ${width} f32 values exceeds one storage binding of ${limit} bytes`,
      );
    }
    return Math.floor(maxWords / width);
  };
  // A window of r rows of `width` halves may start and end in the middle of a word, so it needs
  // up to r * width / 2 + 1 words.
  const bf16Rows = (width: number): number => {
    const rows = Math.floor((2 * (maxWords - 1)) / width);
    if (rows < 1) {
      throw new Error(
        `matmulBf16: a weight row of ${width} bf16 values does not fit one storage binding of ${limit} bytes`,
      );
    }
    return rows;
  };

  const blockM = Math.min(M, f32Rows("the input", K), f32Rows("the output", N));
  const blockN = transW ? Math.min(N, bf16Rows(K)) : N;
  const blockK = transW ? K : Math.min(K, bf16Rows(N));
  return {
    blockM: wholeTiles(M, blockM, MATMUL_BF16_TILE_M),
    blockN: wholeTiles(N, blockN, MATMUL_BF16_TILE_N),
    blockK: wholeTiles(K, blockK, MATMUL_BF16_TILE_K),
  };
}

// A block size no larger than `maxBlock` that splits `total` into as few, nearly equal blocks as
// `maxBlock` does, in whole tiles where `maxBlock` holds at least one tile.
function wholeTiles(total: number, maxBlock: number, tile: number): number {
  if (maxBlock >= total) return total;
  const blocks = ceilDiv(total, maxBlock);
  const even = ceilDiv(total, blocks);
  if (maxBlock < tile) return even;
  return Math.min(Math.floor(maxBlock / tile) * tile, ceilDiv(even, tile) * tile);
}

// Records one dispatch per block, binding only the window of each buffer that the block touches.
// Blocks after the first along K add to C, and only the first adds the bias.
function dispatchBlocks(p: Bf16Problem): void {
  const { M, N, K, transW } = p;
  const { blockM, blockN, blockK } = planBf16Blocks(M, N, K, transW);
  const ldw = p.w.cols;

  for (let m0 = 0; m0 < M; m0 += blockM) {
    const m1 = Math.min(m0 + blockM, M);
    for (let n0 = 0; n0 < N; n0 += blockN) {
      const n1 = Math.min(n0 + blockN, N);
      const windowC = elementWindow(p.out.buffer, m0 * N + n0, (m1 - 1) * N + n1);
      const windowBias = p.bias ? elementWindow(p.bias.buffer, n0, n1) : null;
      for (let k0 = 0; k0 < K; k0 += blockK) {
        const k1 = Math.min(k0 + blockK, K);
        const windowA = elementWindow(p.a.buffer, m0 * K + k0, (m1 - 1) * K + k1);
        const windowW = transW
          ? bf16Window(p.w.tensor.buffer, n0 * ldw + k0, (n1 - 1) * ldw + k1)
          : bf16Window(p.w.tensor.buffer, k0 * ldw + n0, (k1 - 1) * ldw + n1);
        const first = k0 === 0;
        const kernel = rt().kernel({
          shader: "matmul_bf16.wgsl",
          entryPoint: "main",
          bindings: ["uniform", "read", "read", "read", "storage"],
          defines: moduleDefines({
            TRANS_W: transW,
            HAS_BIAS: windowBias !== null && first,
            ACCUMULATE: !first,
          }),
        });
        const params = packParams([
          m1 - m0,
          n1 - n0,
          k1 - k0,
          K,
          ldw,
          N,
          windowA.elementOffset,
          windowW.elementOffset,
          windowC.elementOffset,
          windowBias?.elementOffset ?? 0,
          0,
          0,
        ]);
        // Without a bias the binding still needs a buffer; A's window is bound there, unread.
        const biasBinding = windowBias?.binding ?? windowA.binding;
        rt().dispatch(kernel, params, [
          windowA.binding,
          windowW.binding,
          biasBinding,
          windowC.binding,
        ], [
          ceilDiv(n1 - n0, MATMUL_BF16_TILE_N),
          ceilDiv(m1 - m0, MATMUL_BF16_TILE_M),
          1,
        ]);
      }
    }
  }
}

// Every constant the module uses. Both entry points share one module, so each pipeline defines
// all of them, and the flags an entry point does not read keep fixed values to share the cache.
function moduleDefines(
  flags: Partial<Record<"TRANS_W" | "HAS_BIAS" | "ACCUMULATE" | "FILL_MISSING", boolean>>,
) {
  return {
    TILE_M: MATMUL_BF16_TILE_M,
    TILE_N: MATMUL_BF16_TILE_N,
    TILE_K: MATMUL_BF16_TILE_K,
    WORKGROUP: GATHER_WORKGROUP,
    TRANS_W: false,
    HAS_BIAS: false,
    ACCUMULATE: false,
    FILL_MISSING: false,
    ...flags,
  };
}

// A binding over bf16 elements [first, end) of a packed buffer, and the element index of
// `first` inside it, which is odd when `first` is.
function bf16Window(buffer: GPUBuffer, first: number, end: number) {
  const words = elementWindow(buffer, first >> 1, ceilDiv(end, 2));
  return { binding: words.binding, elementOffset: words.elementOffset * 2 + (first & 1) };
}

// ---- embedding gather -------------------------------------------------------------------------

// Looks up rows of a bf16 table (V, D) for i32 ids of any shape, giving f32 (...ids.shape, D).
// Rows of ids outside [0, V) are NaN. A table larger than one storage binding (Qwen2.5's
// 151936 x 896 embedding is 272 MB in bf16, against llvmpipe's 128 MiB) is read in chunks of
// rows with one dispatch each. The first dispatch writes NaN to the rows of ids outside its
// chunk, and later chunks overwrite the rows of their own ids.
export function embeddingBf16(ids: Tensor, table: Bf16Weight): Tensor {
  checkWeight("embeddingBf16", table);
  ids.assertLive("embeddingBf16 ids");
  if (ids.dtype !== "i32") {
    throw new Error(`embeddingBf16: ids must be i32, got ${ids.dtype} [${ids.shape}]`);
  }
  const { rows, cols: dim } = table;
  const out = empty([...ids.shape, dim]);
  if (out.size === 0) return out;
  for (const t of [ids, out]) {
    if (!fitsOneBinding(t.buffer)) {
      throw new Error(
        `embeddingBf16: ${ids.size} ids of ${dim} values exceed one storage binding of ${rt().gpu.maxBindingBytes} bytes; gather fewer ids per call`,
      );
    }
  }

  const maxWords = maxWindowElements();
  const chunkRows = Math.floor((2 * (maxWords - 1)) / dim);
  if (chunkRows < 1) {
    throw new Error(
      `embeddingBf16: a table row of ${dim} bf16 values does not fit one storage binding of ${rt().gpu.maxBindingBytes} bytes`,
    );
  }
  for (let row0 = 0; row0 < rows; row0 += chunkRows) {
    const row1 = Math.min(row0 + chunkRows, rows);
    const window = bf16Window(table.tensor.buffer, row0 * dim, row1 * dim);
    const kernel = rt().kernel({
      shader: "matmul_bf16.wgsl",
      entryPoint: "gather",
      bindings: ["uniform", "read", "read", "storage"],
      defines: moduleDefines({ FILL_MISSING: row0 === 0 }),
    });
    const params = packParams([ids.size, dim, row0, row1 - row0, window.elementOffset, 0, 0, 0]);
    rt().dispatch(
      kernel,
      params,
      [ids.buffer, window.binding, out.buffer],
      grid1d(ceilDiv(out.size, GATHER_WORKGROUP)),
    );
  }
  return out;
}
