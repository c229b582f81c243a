// Batched matrix product with optional transposes, bias and accumulation:
//   C[z] = alpha * op(A[z]) @ op(B[z]) (+ bias) (+ C[z] when ACCUMULATE)
// op(A) is M x K, op(B) is K x N, all row-major; TRANS_A means A is stored K x M and TRANS_B
// means B is stored N x K (the PyTorch nn.Linear weight layout). A batch stride of 0 reuses one
// matrix for every batch entry (a weight shared by all sequences).
// Each workgroup computes a TILE_M x TILE_N block of C, staging TILE_K-wide slices of A and B
// in workgroup memory; each thread accumulates a THREAD_M x THREAD_N register block in f32.
// Injected by kernels/matmul.ts: TILE_M, TILE_N, TILE_K, THREAD_M, THREAD_N, TRANS_A, TRANS_B,
// HAS_BIAS, ACCUMULATE.

struct Params {
  M: u32,
  N: u32,
  K: u32,
  stride_a: u32,
  stride_b: u32,
  stride_c: u32,
  alpha: f32,
  _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const THREADS_X: u32 = TILE_N / THREAD_N;
const THREADS_Y: u32 = TILE_M / THREAD_M;
const THREADS: u32 = THREADS_X * THREADS_Y;

var<workgroup> tile_a: array<f32, TILE_M * TILE_K>; // [m][k]
var<workgroup> tile_b: array<f32, TILE_K * TILE_N>; // [k][n]

fn load_a(base: u32, row: u32, k: u32) -> f32 {
  if (row >= p.M || k >= p.K) { return 0.0; }
  if (TRANS_A) { return a[base + k * p.M + row]; }
  return a[base + row * p.K + k];
}

fn load_b(base: u32, k: u32, col: u32) -> f32 {
  if (k >= p.K || col >= p.N) { return 0.0; }
  if (TRANS_B) { return b[base + col * p.K + k]; }
  return b[base + k * p.N + col];
}

@compute @workgroup_size(THREADS_X, THREADS_Y, 1)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
  @builtin(local_invocation_index) lindex: u32,
) {
  let row0 = wid.y * TILE_M;
  let col0 = wid.x * TILE_N;
  let base_a = wid.z * p.stride_a;
  let base_b = wid.z * p.stride_b;
  let base_c = wid.z * p.stride_c;

  var acc: array<f32, THREAD_M * THREAD_N>;
  var b_reg: array<f32, THREAD_N>;

  for (var k0 = 0u; k0 < p.K; k0 += TILE_K) {
    for (var i = lindex; i < TILE_M * TILE_K; i += THREADS) {
      let m = i / TILE_K;
      let k = i % TILE_K;
      tile_a[i] = load_a(base_a, row0 + m, k0 + k);
    }
    for (var i = lindex; i < TILE_K * TILE_N; i += THREADS) {
      let k = i / TILE_N;
      let n = i % TILE_N;
      tile_b[i] = load_b(base_b, k0 + k, col0 + n);
    }
    workgroupBarrier();

    for (var k = 0u; k < TILE_K; k++) {
      for (var j = 0u; j < THREAD_N; j++) {
        b_reg[j] = tile_b[k * TILE_N + j * THREADS_X + lid.x];
      }
      for (var i = 0u; i < THREAD_M; i++) {
        let a_val = tile_a[(i * THREADS_Y + lid.y) * TILE_K + k];
        for (var j = 0u; j < THREAD_N; j++) {
          acc[i * THREAD_N + j] = fma(a_val, b_reg[j], acc[i * THREAD_N + j]);
        }
      }
    }
    workgroupBarrier();
  }

  // Threads own strided rows and columns (i * THREADS_Y + lid.y), which keeps neighbouring
  // threads on neighbouring addresses when loading from workgroup memory and storing C.
  for (var i = 0u; i < THREAD_M; i++) {
    let row = row0 + i * THREADS_Y + lid.y;
    if (row >= p.M) { continue; }
    for (var j = 0u; j < THREAD_N; j++) {
      let col = col0 + j * THREADS_X + lid.x;
      if (col >= p.N) { continue; }
      var v = p.alpha * acc[i * THREAD_N + j];
      if (HAS_BIAS) { v += bias[col]; }
      let idx = base_c + row * p.N + col;
      if (ACCUMULATE) { v += c[idx]; }
      c[idx] = v;
    }
  }
}
