// Products with a frozen weight stored as bfloat16, and a row gather from a bfloat16 table.
//
// Storage: a bf16 matrix W of R x L is packed row-major as a flat sequence of R * L halves, two
// per u32: element e lives in word e / 2, in the low 16 bits when e is even and in the high 16
// bits when e is odd (the little-endian bytes of a bf16 array read as u32). A row of odd length
// therefore starts in the middle of a word, so everything here addresses single elements. A bf16
// value becomes f32 by putting its 16 bits in the high half of an f32: bitcast<f32>(bits << 16).
// No shader-f16 feature is needed. `offset_w` is the element index of W[0, 0] inside the binding,
// which lets the launcher bind a window of a weight larger than one storage binding.
//
// Entry point `main`:
//   C = A @ op(W) (+ bias) (+ C when ACCUMULATE)
// A is M x K f32 (row stride lda), C is M x N f32 (row stride ldc). op(W) is K x N: with TRANS_W,
// W is stored N x K (nn.Linear's weight, so C = A W^T); without it, W is stored K x N. ldw is the
// row stride of the stored W in elements. Accumulation is f32.
// Tiling follows kernels/matmul.wgsl: a workgroup computes a TILE_M x TILE_N block of C and
// stages TILE_K-deep slices of A (k-major, 4 rows per vec4) and op(W) (k-major, 4 columns per
// vec4) in workgroup memory, decoded to f32 once per tile. Each thread owns a 4 x 4 block of C,
// so the inner loop is two vec4 loads and four vec4 FMAs. Global loads are bounds-checked, so any
// M, N, K work.
//
// Entry point `gather`:
//   out[n, :] = table[ids[n] - row_offset, :] as f32, for ids inside the chunk of table rows
//   [row_offset, row_offset + chunk_rows). Rows of other ids are left as they are, or set to NaN
//   with FILL_MISSING, so an id outside every chunk shows up as NaN. One thread per output
//   element; ids are i32 (N), out is (N, D) f32.
//
// Injected by kernels/matmul_bf16.ts: TILE_M, TILE_N, TILE_K, TRANS_W, HAS_BIAS, ACCUMULATE,
// WORKGROUP, FILL_MISSING.

// 12 words; the runtime pads uniforms to a multiple of 16 bytes.
struct Params {
  M: u32,
  N: u32,
  K: u32,
  lda: u32, // row stride of A in elements
  ldw: u32, // row stride of the stored W in bf16 elements
  ldc: u32, // row stride of C in elements
  offset_a: u32, // element index of A[0, 0] inside its binding
  offset_w: u32, // bf16 element index of the stored W[0, 0] inside its binding
  offset_c: u32,
  offset_bias: u32,
  _pad0: u32,
  _pad1: u32,
}

struct GatherParams {
  tokens: u32, // N
  dim: u32, // D, the table's row length
  row_offset: u32, // first vocabulary row held by the chunk
  chunk_rows: u32,
  offset_w: u32, // bf16 element index of the chunk's first element inside its binding
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// gather
@group(0) @binding(0) var<uniform> gp: GatherParams;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const THREADS_X: u32 = TILE_N / 4u;
const THREADS_Y: u32 = TILE_M / 4u;
const THREADS: u32 = THREADS_X * THREADS_Y;
const ROW_VECS: u32 = TILE_M / 4u;
const COL_VECS: u32 = TILE_N / 4u;

var<workgroup> tile_a: array<vec4f, TILE_K * ROW_VECS>; // [k][m / 4]
var<workgroup> tile_w: array<vec4f, TILE_K * COL_VECS>; // [k][n / 4]

// The f32 value of the bf16 element whose 32-bit word is `word` and whose index is `e`.
fn bf16_to_f32(word: u32, e: u32) -> f32 {
  let bits = select(word << 16u, word & 0xffff0000u, (e & 1u) == 1u);
  return bitcast<f32>(bits);
}

fn load_a(row: u32, k: u32) -> f32 {
  if (row >= p.M || k >= p.K) { return 0.0; }
  return a[p.offset_a + row * p.lda + k];
}

// Element (k, col) of op(W).
fn load_w(k: u32, col: u32) -> f32 {
  if (k >= p.K || col >= p.N) { return 0.0; }
  var e: u32;
  if (TRANS_W) {
    e = p.offset_w + col * p.ldw + k;
  } else {
    e = p.offset_w + k * p.ldw + col;
  }
  return bf16_to_f32(w[e >> 1u], e);
}

@compute @workgroup_size(THREADS_X, THREADS_Y, 1)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
  @builtin(local_invocation_index) lindex: u32,
) {
  let row0 = wid.y * TILE_M;
  let col0 = wid.x * TILE_N;

  var acc: array<vec4f, 4>;

  for (var k0 = 0u; k0 < p.K; k0 += TILE_K) {
    for (var i = lindex; i < TILE_K * ROW_VECS; i += THREADS) {
      let k = k0 + i / ROW_VECS;
      let m = row0 + (i % ROW_VECS) * 4u;
      tile_a[i] = vec4f(load_a(m, k), load_a(m + 1u, k), load_a(m + 2u, k), load_a(m + 3u, k));
    }
    for (var i = lindex; i < TILE_K * COL_VECS; i += THREADS) {
      let k = k0 + i / COL_VECS;
      let n = col0 + (i % COL_VECS) * 4u;
      tile_w[i] = vec4f(load_w(k, n), load_w(k, n + 1u), load_w(k, n + 2u), load_w(k, n + 3u));
    }
    workgroupBarrier();

    for (var k = 0u; k < TILE_K; k++) {
      let av = tile_a[k * ROW_VECS + lid.y];
      let wv = tile_w[k * COL_VECS + lid.x];
      acc[0] = fma(vec4f(av.x), wv, acc[0]);
      acc[1] = fma(vec4f(av.y), wv, acc[1]);
      acc[2] = fma(vec4f(av.z), wv, acc[2]);
      acc[3] = fma(vec4f(av.w), wv, acc[3]);
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < 4u; i++) {
    let row = row0 + lid.y * 4u + i;
    if (row >= p.M) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let col = col0 + lid.x * 4u + j;
      if (col >= p.N) { continue; }
      var value = acc[i][j];
      if (HAS_BIAS) { value += bias[p.offset_bias + col]; }
      let idx = p.offset_c + row * p.ldc + col;
      if (ACCUMULATE) { value += c[idx]; }
      c[idx] = value;
    }
  }
}

// A quiet NaN. The bit pattern is held in a variable because a constant NaN is a shader-creation
// error in WGSL.
fn nan() -> f32 {
  var bits = 0x7fc00000u;
  return bitcast<f32>(bits);
}

@compute @workgroup_size(WORKGROUP)
fn gather(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let i = (wid.y * nwg.x + wid.x) * WORKGROUP + lid.x;
  if (i >= gp.tokens * gp.dim) { return; }
  let n = i / gp.dim;
  let d = i % gp.dim;
  let local = ids[n] - i32(gp.row_offset);
  if (local >= 0 && u32(local) < gp.chunk_rows) {
    let e = gp.offset_w + u32(local) * gp.dim + d;
    out[i] = bf16_to_f32(table[e >> 1u], e);
  } else if (FILL_MISSING) {
    out[i] = nan();
  }
}
