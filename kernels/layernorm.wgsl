// Layer normalization over the last dimension and its backward pass.
// x, y, dy and dx are (rows, cols) row-major; weight, bias, dweight and dbias have cols
// elements; mean and rstd have one element per row and are saved by the forward pass.
//   forward:        y = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps), where var
//                   is the biased variance of the row, as in PyTorch's nn.LayerNorm.
//   backward_input: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * weight,
//                   xhat = (x - mean) * rstd; one workgroup per row.
//   param_grad_partial: per chunk of rows_per_chunk rows, partial sums of dy * xhat (dweight)
//                   and dy (dbias); one thread per column, looping over the chunk's rows.
//   param_grad_reduce: sums the partials over chunks in order, one thread per column.
// Every sum runs in a fixed order without atomics, so results repeat bit for bit.
// Injected by kernels/layernorm.ts: WORKGROUP (power of two, threads per row) and
// COLUMN_WORKGROUP (threads per workgroup in the column kernels).

struct Params {
  rows: u32,
  cols: u32,
  eps: f32,
  rows_per_chunk: u32, // param_grad_partial only
  chunks: u32, // param_grad_reduce only
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// forward
@group(0) @binding(1) var<storage, read> fw_x: array<f32>;
@group(0) @binding(2) var<storage, read> fw_weight: array<f32>;
@group(0) @binding(3) var<storage, read> fw_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> fw_y: array<f32>;
@group(0) @binding(5) var<storage, read_write> fw_mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> fw_rstd: array<f32>;

// backward_input and param_grad_partial share their inputs
@group(0) @binding(1) var<storage, read> bw_x: array<f32>;
@group(0) @binding(2) var<storage, read> bw_dy: array<f32>;
@group(0) @binding(3) var<storage, read> bw_mean: array<f32>;
@group(0) @binding(4) var<storage, read> bw_rstd: array<f32>;
@group(0) @binding(5) var<storage, read> bw_weight: array<f32>; // backward_input
@group(0) @binding(6) var<storage, read_write> bw_dx: array<f32>; // backward_input
@group(0) @binding(5) var<storage, read_write> partial_dweight: array<f32>; // (chunks, cols)
@group(0) @binding(6) var<storage, read_write> partial_dbias: array<f32>; // (chunks, cols)

// param_grad_reduce
@group(0) @binding(1) var<storage, read> sum_dweight_in: array<f32>; // (chunks, cols)
@group(0) @binding(2) var<storage, read> sum_dbias_in: array<f32>; // (chunks, cols)
@group(0) @binding(3) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(4) var<storage, read_write> dbias: array<f32>;

var<workgroup> shared_a: array<f32, WORKGROUP>;
var<workgroup> shared_b: array<f32, WORKGROUP>;

fn row_index(wid: vec3u, nwg: vec3u) -> u32 {
  return wid.y * nwg.x + wid.x;
}

// Tree reduction of shared_a over the workgroup; every thread gets the total. Must be reached
// by all threads of the workgroup.
fn reduce_a(lane: u32, value: f32) -> f32 {
  shared_a[lane] = value;
  workgroupBarrier();
  for (var stride = WORKGROUP / 2u; stride > 0u; stride >>= 1u) {
    if (lane < stride) {
      shared_a[lane] += shared_a[lane + stride];
    }
    workgroupBarrier();
  }
  let total = shared_a[0];
  // Keeps a following reduce_a from overwriting shared_a[0] before every thread has read it.
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
  let n = f32(p.cols);

  var s = 0.0;
  for (var j = lid.x; j < p.cols; j += WORKGROUP) {
    s += fw_x[base + j];
  }
  let mean = reduce_a(lid.x, s) / n;

  // The variance is taken around the mean in a second pass instead of as E[x^2] - mean^2,
  // which loses all precision when |mean| is large against the spread.
  var sq = 0.0;
  for (var j = lid.x; j < p.cols; j += WORKGROUP) {
    let d = fw_x[base + j] - mean;
    sq += d * d;
  }
  let rstd = inverseSqrt(reduce_a(lid.x, sq) / n + p.eps);

  for (var j = lid.x; j < p.cols; j += WORKGROUP) {
    fw_y[base + j] = (fw_x[base + j] - mean) * rstd * fw_weight[j] + fw_bias[j];
  }
  if (lid.x == 0u) {
    fw_mean[r] = mean;
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
  let mean = bw_mean[r];
  let rstd = bw_rstd[r];

  var sum_g = 0.0;
  var sum_g_xhat = 0.0;
  for (var j = lid.x; j < p.cols; j += WORKGROUP) {
    let g = bw_dy[base + j] * bw_weight[j];
    sum_g += g;
    sum_g_xhat += g * (bw_x[base + j] - mean) * rstd;
  }
  // Both sums share one tree so that the row needs one set of barriers.
  shared_a[lid.x] = sum_g;
  shared_b[lid.x] = sum_g_xhat;
  workgroupBarrier();
  for (var stride = WORKGROUP / 2u; stride > 0u; stride >>= 1u) {
    if (lid.x < stride) {
      shared_a[lid.x] += shared_a[lid.x + stride];
      shared_b[lid.x] += shared_b[lid.x + stride];
    }
    workgroupBarrier();
  }
  let inv_n = 1.0 / f32(p.cols);
  let mean_g = shared_a[0] * inv_n;
  let mean_g_xhat = shared_b[0] * inv_n;

  for (var j = lid.x; j < p.cols; j += WORKGROUP) {
    let g = bw_dy[base + j] * bw_weight[j];
    let xhat = (bw_x[base + j] - mean) * rstd;
    bw_dx[base + j] = rstd * (g - mean_g - xhat * mean_g_xhat);
  }
}

// Grid: x over column blocks of COLUMN_WORKGROUP, y over chunks of rows.
@compute @workgroup_size(COLUMN_WORKGROUP)
fn param_grad_partial(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let col = wid.x * COLUMN_WORKGROUP + lid.x;
  if (col >= p.cols) { return; }
  let chunk = wid.y;
  let first = chunk * p.rows_per_chunk;
  let last = min(first + p.rows_per_chunk, p.rows);

  var dw = 0.0;
  var db = 0.0;
  for (var r = first; r < last; r++) {
    let dy = bw_dy[r * p.cols + col];
    dw += dy * (bw_x[r * p.cols + col] - bw_mean[r]) * bw_rstd[r];
    db += dy;
  }
  partial_dweight[chunk * p.cols + col] = dw;
  partial_dbias[chunk * p.cols + col] = db;
}

@compute @workgroup_size(COLUMN_WORKGROUP)
fn param_grad_reduce(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let col = wid.x * COLUMN_WORKGROUP + lid.x;
  if (col >= p.cols) { return; }

  var dw = 0.0;
  var db = 0.0;
  for (var chunk = 0u; chunk < p.chunks; chunk++) {
    dw += sum_dweight_in[chunk * p.cols + col];
    db += sum_dbias_in[chunk * p.cols + col];
  }
  dweight[col] = dw;
  dbias[col] = db;
}
