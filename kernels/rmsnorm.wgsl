// RMS normalization over the last dimension (Llama / Qwen2 RMSNorm) and its backward pass.
// x, y, dy and dx are (rows, cols) row-major; weight and dweight have cols elements; rstd has
// one element per row and is saved by the forward pass.
//   forward:        y = weight * (x * rstd), rstd = 1 / sqrt(mean(x^2) + eps), in f32 as
//                   Hugging Face's Qwen2RMSNorm and LlamaRMSNorm compute it; one workgroup per row.
//   backward_input: dx = rstd * (g - xhat * mean(g * xhat)), g = dy * weight, xhat = x * rstd;
//                   one workgroup per row.
//   weight_grad_partial: per chunk of rows_per_chunk rows, partial sums of dy * xhat; one thread
//                   per column, looping over the chunk's rows.
//   weight_grad_reduce: sums the partials over chunks in order, one thread per column.
// Every sum runs in a fixed order without atomics, so results repeat bit for bit.
// Injected by kernels/rmsnorm.ts: WORKGROUP (power of two, threads per row) and
// COLUMN_WORKGROUP (threads per workgroup in the column kernels).

struct Params {
  rows: u32,
  cols: u32,
  eps: f32,
  rows_per_chunk: u32, // weight_grad_partial only
  chunks: u32, // weight_grad_reduce only
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// forward
@group(0) @binding(1) var<storage, read> fw_x: array<f32>;
@group(0) @binding(2) var<storage, read> fw_weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> fw_y: array<f32>;
@group(0) @binding(4) var<storage, read_write> fw_rstd: array<f32>;

// backward_input and weight_grad_partial share their inputs
@group(0) @binding(1) var<storage, read> bw_x: array<f32>;
@group(0) @binding(2) var<storage, read> bw_dy: array<f32>;
@group(0) @binding(3) var<storage, read> bw_rstd: array<f32>;
@group(0) @binding(4) var<storage, read> bw_weight: array<f32>; // backward_input
@group(0) @binding(5) var<storage, read_write> bw_dx: array<f32>; // backward_input
@group(0) @binding(4) var<storage, read_write> partial_dweight: array<f32>; // (chunks, cols)

// weight_grad_reduce
@group(0) @binding(1) var<storage, read> sum_dweight_in: array<f32>; // (chunks, cols)
@group(0) @binding(2) var<storage, read_write> dweight: array<f32>;

var<workgroup> shared_sum: array<f32, WORKGROUP>;

fn row_index(wid: vec3u, nwg: vec3u) -> u32 {
  return wid.y * nwg.x + wid.x;
}

// Tree reduction over the workgroup; every thread gets the total. Must be reached by all threads
// of the workgroup.
fn reduce_sum(lane: u32, value: f32) -> f32 {
  shared_sum[lane] = value;
  workgroupBarrier();
  for (var stride = WORKGROUP / 2u; stride > 0u; stride >>= 1u) {
    if (lane < stride) {
      shared_sum[lane] += shared_sum[lane + stride];
    }
    workgroupBarrier();
  }
  let total = shared_sum[0];
  // Keeps a later reduce_sum from overwriting shared_sum[0] before every thread has read it.
  workgroupBarrier();
  return total;
}

@compute @workgroup_size(WORKGROUP)
fn forward(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let r = row_index(wid, nwg);
  // r is the same for every thread of the workgroup, so this return keeps barriers uniform.
  if (r >= p.rows) { return; }
  let base = r * p.cols;

  var sq = 0.0;
  for (var j = lid.x; j < p.cols; j += WORKGROUP) {
    let v = fw_x[base + j];
    sq += v * v;
  }
  let rstd = inverseSqrt(reduce_sum(lid.x, sq) / f32(p.cols) + p.eps);

  // x * rstd is rounded before the weight multiplies it, in the order transformers uses.
  for (var j = lid.x; j < p.cols; j += WORKGROUP) {
    fw_y[base + j] = fw_weight[j] * (fw_x[base + j] * rstd);
  }
  if (lid.x == 0u) {
    fw_rstd[r] = rstd;
  }
}

@compute @workgroup_size(WORKGROUP)
fn backward_input(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let r = row_index(wid, nwg);
  if (r >= p.rows) { return; }
  let base = r * p.cols;
  let rstd = bw_rstd[r];

  var sum_g_xhat = 0.0;
  for (var j = lid.x; j < p.cols; j += WORKGROUP) {
    sum_g_xhat += bw_dy[base + j] * bw_weight[j] * (bw_x[base + j] * rstd);
  }
  let mean_g_xhat = reduce_sum(lid.x, sum_g_xhat) / f32(p.cols);

  for (var j = lid.x; j < p.cols; j += WORKGROUP) {
    let g = bw_dy[base + j] * bw_weight[j];
    let xhat = bw_x[base + j] * rstd;
    bw_dx[base + j] = rstd * (g - xhat * mean_g_xhat);
  }
}

// Grid: x over column blocks of COLUMN_WORKGROUP, y over chunks of rows.
@compute @workgroup_size(COLUMN_WORKGROUP)
fn weight_grad_partial(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let col = wid.x * COLUMN_WORKGROUP + lid.x;
  if (col >= p.cols) { return; }
  let chunk = wid.y;
  let first = chunk * p.rows_per_chunk;
  let last = min(first + p.rows_per_chunk, p.rows);

  var dw = 0.0;
  for (var r = first; r < last; r++) {
    dw += bw_dy[r * p.cols + col] * (bw_x[r * p.cols + col] * bw_rstd[r]);
  }
  partial_dweight[chunk * p.cols + col] = dw;
}

@compute @workgroup_size(COLUMN_WORKGROUP)
fn weight_grad_reduce(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let col = wid.x * COLUMN_WORKGROUP + lid.x;
  if (col >= p.cols) { return; }

  var dw = 0.0;
  for (var chunk = 0u; chunk < p.chunks; chunk++) {
    dw += sum_dweight_in[chunk * p.cols + col];
  }
  dweight[col] = dw;
}
