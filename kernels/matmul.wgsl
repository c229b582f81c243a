// Batched matrix product with optional transposes, bias and accumulation:
//   C[z] = alpha * op(A[z]) @ op(B[z]) (+ bias) (+ C[z] when ACCUMULATE)
// op(A) is M x K, op(B) is K x N, all row-major; TRANS_A means A is stored K x M and TRANS_B
// means B is stored N x K (the PyTorch nn.Linear weight layout). A batch stride of 0 reuses one
// matrix for every batch entry (a weight shared by all sequences).
//
// With WINDOWED, the row strides of the stored matrices (lda, ldb, ldc) may exceed their width
// and each operand starts at an element offset inside its binding. Together they let the
// launcher compute one block of a product whose operands are larger than one storage binding,
// binding only a window of each buffer. Without WINDOWED the strides follow from the shape and
// the offsets are 0.
//
// Each workgroup computes a TILE_M x TILE_N block of C, staging TILE_K-deep slices of A and B in
// workgroup memory as vec4s: A transposed (k-major, 4 rows per vec4) and B k-major (4 columns per
// vec4). Each thread owns a 4 x 4 block of C, one vec4 accumulator per row, so the inner loop is
// two vec4 loads and four vec4 FMAs; vector loads are what make this fast on CPU adapters.
// Global loads stay scalar and bounds-checked, so any shape and either transpose work.
// Injected by kernels/matmul.ts: TILE_M, TILE_N, TILE_K, TRANS_A, TRANS_B, HAS_BIAS, ACCUMULATE,
// WINDOWED.

// 16 words, so the uniform's size stays a multiple of 16 bytes.
struct Params {
  M: u32,
  N: u32,
  K: u32,
  stride_a: u32, // batch strides in elements; 0 shares one matrix across the batch
  stride_b: u32,
  stride_c: u32,
  alpha: f32,
  lda: u32, // row strides of the stored A, B and C in elements, read only with WINDOWED
  ldb: u32,
  ldc: u32,
  offset_a: u32, // index of A's first element inside its binding, read only with WINDOWED
  offset_b: u32,
  offset_c: u32,
  offset_bias: u32,
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const THREADS_X: u32 = TILE_N / 4u;
const THREADS_Y: u32 = TILE_M / 4u;
const THREADS: u32 = THREADS_X * THREADS_Y;
const ROW_VECS: u32 = TILE_M / 4u;
const COL_VECS: u32 = TILE_N / 4u;

var<workgroup> tile_a: array<vec4f, TILE_K * ROW_VECS>; // [k][m / 4]
var<workgroup> tile_b: array<vec4f, TILE_K * COL_VECS>; // [k][n / 4]

// Row strides of the stored matrices. Without WINDOWED they follow from the shape, because
// reading them from the uniform made whole-buffer products about 3% slower on llvmpipe (2 shared
// cores, a noisy measurement).
fn row_stride_a() -> u32 {
  if (WINDOWED) { return p.lda; }
  if (TRANS_A) { return p.M; }
  return p.K;
}

fn row_stride_b() -> u32 {
  if (WINDOWED) { return p.ldb; }
  if (TRANS_B) { return p.K; }
  return p.N;
}

fn row_stride_c() -> u32 {
  if (WINDOWED) { return p.ldc; }
  return p.N;
}

fn load_a(base: u32, row: u32, k: u32) -> f32 {
  if (row >= p.M || k >= p.K) { return 0.0; }
  if (TRANS_A) { return a[base + k * row_stride_a() + row]; }
  return a[base + row * row_stride_a() + k];
}

fn load_b(base: u32, k: u32, col: u32) -> f32 {
  if (k >= p.K || col >= p.N) { return 0.0; }
  if (TRANS_B) { return b[base + col * row_stride_b() + k]; }
  return b[base + k * row_stride_b() + col];
}

@compute @workgroup_size(THREADS_X, THREADS_Y, 1)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
  @builtin(local_invocation_index) lindex: u32,
) {
  let row0 = wid.y * TILE_M;
  let col0 = wid.x * TILE_N;
  var base_a = wid.z * p.stride_a;
  var base_b = wid.z * p.stride_b;
  var base_c = wid.z * p.stride_c;
  var base_bias = 0u;
  if (WINDOWED) {
    base_a += p.offset_a;
    base_b += p.offset_b;
    base_c += p.offset_c;
    base_bias = p.offset_bias;
  }

  var acc: array<vec4f, 4>;

  for (var k0 = 0u; k0 < p.K; k0 += TILE_K) {
    for (var i = lindex; i < TILE_K * ROW_VECS; i += THREADS) {
      let k = i / ROW_VECS;
      let m = (i % ROW_VECS) * 4u;
      tile_a[i] = vec4f(
        load_a(base_a, row0 + m, k0 + k),
        load_a(base_a, row0 + m + 1u, k0 + k),
        load_a(base_a, row0 + m + 2u, k0 + k),
        load_a(base_a, row0 + m + 3u, k0 + k),
      );
    }
    for (var i = lindex; i < TILE_K * COL_VECS; i += THREADS) {
      let k = i / COL_VECS;
      let n = (i % COL_VECS) * 4u;
      tile_b[i] = vec4f(
        load_b(base_b, k0 + k, col0 + n),
        load_b(base_b, k0 + k, col0 + n + 1u),
        load_b(base_b, k0 + k, col0 + n + 2u),
        load_b(base_b, k0 + k, col0 + n + 3u),
      );
    }
    workgroupBarrier();

    for (var k = 0u; k < TILE_K; k++) {
      let av = tile_a[k * ROW_VECS + lid.y];
      let bv = tile_b[k * COL_VECS + lid.x];
      acc[0] = fma(vec4f(av.x), bv, acc[0]);
      acc[1] = fma(vec4f(av.y), bv, acc[1]);
      acc[2] = fma(vec4f(av.z), bv, acc[2]);
      acc[3] = fma(vec4f(av.w), bv, acc[3]);
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < 4u; i++) {
    let row = row0 + lid.y * 4u + i;
    if (row >= p.M) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let col = col0 + lid.x * 4u + j;
      if (col >= p.N) { continue; }
      var v = p.alpha * acc[i][j];
      if (HAS_BIAS) { v += bias[base_bias + col]; }
      let idx = base_c + row * row_stride_c() + col;
      if (ACCUMULATE) { v += c[idx]; }
      c[idx] = v;
    }
  }
}
