// Cross-entropy between raw logits (R, V) and i32 class labels (R), averaged over the rows whose
// label is not IGNORE_INDEX, as in PyTorch's F.cross_entropy(reduction="mean", ignore_index).
// - row_loss: one workgroup of WORKGROUP threads per row computes the log-sum-exp with a max and
//   a sum reduction in workgroup memory and writes lse - logits[label], or 0 for ignored rows.
// - finalize: one workgroup adds the row losses and counts the non-ignored labels in a fixed
//   order, then writes loss = total / count, or 0 when every row is ignored.
// - count_valid: the count alone, for a backward pass that was not given the forward's count.
// - backward: dlogits = (softmax - onehot(label)) * grad_loss / count for non-ignored rows and 0
//   for ignored ones; the row's max and sum are recomputed rather than stored.
// A label outside [0, V) that is not IGNORE_INDEX makes its row loss NaN, which makes the mean
// loss NaN, and fills its gradient row with NaN.
// Logits may be bound one chunk of rows at a time: `offset` is the element index of the first
// bound row inside the binding and `row0` its global row, used to index labels and row losses.
// Injected by kernels/cross_entropy.ts: WORKGROUP (power of two), IGNORE_INDEX (i32).

struct RowParams {
  rows: u32,   // rows in this dispatch
  cols: u32,   // V
  offset: u32, // element index of the first row inside the bound logits (and dlogits)
  row0: u32,   // global index of the first row
}

struct TotalParams {
  rows: u32, // R
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

// Smallest finite f32, the start value of maxima: exp(LOWEST - m) is 0 for any finite m.
const LOWEST: f32 = -3.4028234663852886e38;

// A quiet NaN. The bit pattern is held in a variable because a constant NaN is a shader-creation
// error in WGSL.
fn nan() -> f32 {
  var bits = 0x7fc00000u;
  return bitcast<f32>(bits);
}

fn is_valid_label(label: i32) -> bool {
  return label >= 0 && u32(label) < pr.cols;
}

@group(0) @binding(0) var<uniform> pr: RowParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read_write> row_losses: array<f32>;

// backward: binding 3 is the incoming scalar gradient, binding 4 the count, binding 5 dlogits.
@group(0) @binding(3) var<storage, read> grad_loss: array<f32>;
@group(0) @binding(4) var<storage, read> valid_count: array<f32>;
@group(0) @binding(5) var<storage, read_write> dlogits: array<f32>;

@group(0) @binding(0) var<uniform> pt: TotalParams;
@group(0) @binding(1) var<storage, read> total_row_losses: array<f32>;
@group(0) @binding(2) var<storage, read> total_labels: array<i32>;
@group(0) @binding(3) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> count_out: array<f32>;

var<workgroup> scratch: array<f32, WORKGROUP>;
var<workgroup> counts: array<u32, WORKGROUP>;

// Returns the maximum of scratch[0..WORKGROUP) to every thread; every thread must call it. The
// closing barrier lets callers reuse `scratch` right after.
fn tree_max(lid: u32) -> f32 {
  for (var stride = WORKGROUP / 2u; stride > 0u; stride /= 2u) {
    workgroupBarrier();
    if (lid < stride) {
      scratch[lid] = max(scratch[lid], scratch[lid + stride]);
    }
  }
  workgroupBarrier();
  let m = scratch[0];
  workgroupBarrier();
  return m;
}

// Returns the sum of scratch[0..WORKGROUP) in a fixed tree order, like tree_max.
fn tree_sum(lid: u32) -> f32 {
  for (var stride = WORKGROUP / 2u; stride > 0u; stride /= 2u) {
    workgroupBarrier();
    if (lid < stride) {
      scratch[lid] += scratch[lid + stride];
    }
  }
  workgroupBarrier();
  let s = scratch[0];
  workgroupBarrier();
  return s;
}

fn tree_count(lid: u32) -> u32 {
  for (var stride = WORKGROUP / 2u; stride > 0u; stride /= 2u) {
    workgroupBarrier();
    if (lid < stride) {
      counts[lid] += counts[lid + stride];
    }
  }
  workgroupBarrier();
  let c = counts[0];
  workgroupBarrier();
  return c;
}

struct RowStats {
  max: f32,
  sum: f32, // sum of exp(x - max), at least 1
}

fn row_stats(base: u32, lid: u32) -> RowStats {
  var m = LOWEST;
  for (var c = lid; c < pr.cols; c += WORKGROUP) {
    m = max(m, logits[base + c]);
  }
  scratch[lid] = m;
  let row_max = tree_max(lid);

  var s = 0.0;
  for (var c = lid; c < pr.cols; c += WORKGROUP) {
    s += exp(logits[base + c] - row_max);
  }
  scratch[lid] = s;
  return RowStats(row_max, tree_sum(lid));
}

@compute @workgroup_size(WORKGROUP)
fn row_loss(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let row = wid.y * nwg.x + wid.x;
  if (row >= pr.rows) { return; }
  let base = pr.offset + row * pr.cols;
  let stats = row_stats(base, lid.x);

  if (lid.x == 0u) {
    let label = labels[pr.row0 + row];
    var loss = 0.0;
    if (label != IGNORE_INDEX) {
      if (is_valid_label(label)) {
        loss = stats.max + log(stats.sum) - logits[base + u32(label)];
      } else {
        loss = nan();
      }
    }
    row_losses[pr.row0 + row] = loss;
  }
}

@compute @workgroup_size(WORKGROUP)
fn finalize(@builtin(local_invocation_id) lid: vec3u) {
  var s = 0.0;
  var n = 0u;
  for (var r = lid.x; r < pt.rows; r += WORKGROUP) {
    s += total_row_losses[r];
    if (total_labels[r] != IGNORE_INDEX) { n += 1u; }
  }
  scratch[lid.x] = s;
  counts[lid.x] = n;
  let total = tree_sum(lid.x);
  let count = tree_count(lid.x);
  if (lid.x == 0u) {
    // Every row ignored: the loss is defined as 0 (PyTorch returns NaN here).
    loss_out[0] = select(0.0, total / f32(count), count > 0u);
    count_out[0] = f32(count);
  }
}

@compute @workgroup_size(WORKGROUP)
fn count_valid(@builtin(local_invocation_id) lid: vec3u) {
  var n = 0u;
  for (var r = lid.x; r < pt.rows; r += WORKGROUP) {
    if (total_labels[r] != IGNORE_INDEX) { n += 1u; }
  }
  counts[lid.x] = n;
  let count = tree_count(lid.x);
  if (lid.x == 0u) {
    count_out[0] = f32(count);
  }
}

@compute @workgroup_size(WORKGROUP)
fn backward(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let row = wid.y * nwg.x + wid.x;
  if (row >= pr.rows) { return; }
  let base = pr.offset + row * pr.cols;
  let stats = row_stats(base, lid.x);

  let label = labels[pr.row0 + row];
  let ignored = label == IGNORE_INDEX;
  let count = valid_count[0];
  // count is 0 only when every row is ignored, and then every row writes zeros below.
  var scale = select(0.0, grad_loss[0] / count, count > 0.0);
  if (!ignored && !is_valid_label(label)) {
    scale = nan();
  }
  let inv_sum = 1.0 / stats.sum;
  for (var c = lid.x; c < pr.cols; c += WORKGROUP) {
    let p = exp(logits[base + c] - stats.max) * inv_sum;
    let onehot = select(0.0, 1.0, i32(c) == label);
    // An explicit zero for ignored rows, so that non-finite logits there do not leak NaN.
    dlogits[base + c] = select((p - onehot) * scale, 0.0, ignored);
  }
}
