// Row softmax with an optional scale, causal mask and key padding mask, and its backward pass.
// The input is viewed as rows of `cols` (= Tk) contiguous f32 values. Row r belongs to query
// q = r % tq of batch entry b = r / (tq * heads), which matches a (batch, heads, Tq, Tk) layout.
// A key j is visible to row r when
//   - CAUSAL is false, or j <= q + (cols - tq), so a block of Tq queries sits at the end of a
//     longer key sequence (KV-cache decoding), and
//   - HAS_MASK is false, or mask[b * cols + j] != 0 (mask is (batch, Tk), 1 = real, 0 = padding).
// Forward: y[j] = exp(s[j] - max) / sum over visible keys of exp(s - max), with s = scale * x,
// and y = 0 at hidden keys. A row with no visible key is all zeros.
// Backward: dx = scale * y * (dy - sum_j dy[j] * y[j]). Hidden keys have y = 0 and get dx = 0, so
// the backward pass needs no mask.
// One workgroup per row. Threads stride over the row and combine their partial results in
// workgroup memory with a tree reduction, so a row may be as wide as a vocabulary.
// Injected by kernels/softmax.ts: WORKGROUP (a power of two), CAUSAL, HAS_MASK.

struct Params {
  rows: u32,
  cols: u32,
  tq: u32,
  heads: u32,
  scale: f32,
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>; // x in forward, y in backward
@group(0) @binding(2) var<storage, read> b: array<f32>; // key padding mask in forward, dy in backward
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// The running maximum starts at the lowest finite f32 instead of -infinity, because WGSL
// implementations may assume finite math. A pair still at the sentinel has a zero sum, and
// rescale() skips the exp() for it, so LOWEST - m never overflows.
const LOWEST: f32 = -3.40282347e38;

var<workgroup> shared_max: array<f32, WORKGROUP>;
var<workgroup> shared_sum: array<f32, WORKGROUP>;

// sum * exp(m - new_max): a partial sum taken relative to max m, moved to new_max >= m.
fn rescale(sum: f32, m: f32, new_max: f32) -> f32 {
  if (sum == 0.0) { return 0.0; }
  return sum * exp(m - new_max);
}

fn row_index(wid: vec3u, nwg: vec3u) -> u32 {
  return wid.y * nwg.x + wid.x;
}

// Number of leading keys that pass the causal mask for row r, or cols when CAUSAL is false.
fn causal_limit(r: u32) -> u32 {
  if (!CAUSAL) { return p.cols; }
  let q = r % p.tq;
  // The last visible key is q + cols - tq. With more queries than keys the first rows have none.
  let limit = i32(q) + i32(p.cols) - i32(p.tq) + 1;
  return u32(clamp(limit, 0, i32(p.cols)));
}

fn key_visible(mask_base: u32, j: u32) -> bool {
  if (!HAS_MASK) { return true; }
  return b[mask_base + j] != 0.0;
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
  let limit = causal_limit(r);
  let mask_base = (r / (p.tq * p.heads)) * p.cols;

  // Pass 1: each thread keeps an online (max, sum of exp(s - max)) pair over its strided keys,
  // which saves a separate pass over the row for the maximum.
  var m = LOWEST;
  var s = 0.0;
  for (var j = lid.x; j < limit; j += WORKGROUP) {
    if (!key_visible(mask_base, j)) { continue; }
    let v = p.scale * a[base + j];
    if (v > m) {
      s = rescale(s, m, v) + 1.0;
      m = v;
    } else {
      s += exp(v - m);
    }
  }
  shared_max[lid.x] = m;
  shared_sum[lid.x] = s;
  workgroupBarrier();

  for (var stride = WORKGROUP / 2u; stride > 0u; stride >>= 1u) {
    if (lid.x < stride) {
      let max_here = shared_max[lid.x];
      let max_other = shared_max[lid.x + stride];
      let merged = max(max_here, max_other);
      shared_sum[lid.x] = rescale(shared_sum[lid.x], max_here, merged) +
        rescale(shared_sum[lid.x + stride], max_other, merged);
      shared_max[lid.x] = merged;
    }
    workgroupBarrier();
  }
  let row_max = shared_max[0];
  let row_sum = shared_sum[0];
  // Every visible key adds at least exp(0) = 1 at the maximum, so a zero sum means no key is
  // visible and the row is written as zeros.
  let inv_sum = select(0.0, 1.0 / row_sum, row_sum > 0.0);

  // Pass 2: write every element of the row, hidden keys included.
  for (var j = lid.x; j < p.cols; j += WORKGROUP) {
    var y = 0.0;
    if (j < limit && key_visible(mask_base, j)) {
      y = exp(p.scale * a[base + j] - row_max) * inv_sum;
    }
    out[base + j] = y;
  }
}

@compute @workgroup_size(WORKGROUP)
fn backward(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let r = row_index(wid, nwg);
  if (r >= p.rows) { return; }
  let base = r * p.cols;

  var s = 0.0;
  for (var j = lid.x; j < p.cols; j += WORKGROUP) {
    s += a[base + j] * b[base + j];
  }
  shared_sum[lid.x] = s;
  workgroupBarrier();

  for (var stride = WORKGROUP / 2u; stride > 0u; stride >>= 1u) {
    if (lid.x < stride) {
      shared_sum[lid.x] += shared_sum[lid.x + stride];
    }
    workgroupBarrier();
  }
  let dot_y_dy = shared_sum[0];

  for (var j = lid.x; j < p.cols; j += WORKGROUP) {
    let y = a[base + j];
    out[base + j] = p.scale * y * (b[base + j] - dot_y_dy);
  }
}
