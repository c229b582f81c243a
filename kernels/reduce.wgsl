// Reductions.
// - sum_rows: column sums of a row-major (R, C) matrix, for bias gradients. A workgroup covers
//   TILE_C columns; LANES threads share one column, each summing every LANES-th row, and one of
//   them adds the LANES partial sums in lane order.
// - partial_sum / final_sum: the total (or, with SQUARE, the sum of squares) of a tensor. Each of
//   `groups` workgroups sums a grid-strided share into partials[slot + workgroup]; final_sum adds
//   every partial in one workgroup. Several tensors may write disjoint slots of one partials
//   buffer before a single final_sum, which is how the global gradient norm is formed.
// - argmax_rows, log_softmax_rows, topk_rows: one workgroup of WORKGROUP threads per row of an
//   (R, C) matrix. Threads take columns lid, lid + WORKGROUP, ...; results are combined with a
//   tree in workgroup memory.
// Every summation order depends only on the shapes, so results repeat bit for bit.
// Row kernels may see only part of a large matrix: the binding starts at an aligned byte offset,
// `offset` is the element index of the first bound row inside that binding, and `row0` is the
// global index of that row (used for outputs that are not chunked).
// Injected by kernels/reduce.ts: WORKGROUP (power of two), TILE_C, LANES, SQUARE.

struct ColumnParams {
  rows: u32,
  cols: u32,
}

struct PartialParams {
  n: u32,      // elements in x
  slot: u32,   // first partials entry written by this dispatch
  groups: u32, // workgroups in this dispatch
  _pad: u32,
}

struct FinalParams {
  count: u32, // partials to add
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

struct RowParams {
  rows: u32,   // rows in this dispatch
  cols: u32,
  offset: u32, // element index of the first row inside the bound x (and y) range
  row0: u32,   // global index of the first row
  k: u32,      // topk_rows only
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

// Smallest finite f32, the start value of maxima: exp(LOWEST - m) is 0 for any finite m.
const LOWEST: f32 = -3.4028234663852886e38;
const NO_INDEX: u32 = 0xffffffffu;

// ---- sum_rows -------------------------------------------------------------------------------

@group(0) @binding(0) var<uniform> pc: ColumnParams;
@group(0) @binding(1) var<storage, read> col_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> col_out: array<f32>;

var<workgroup> lane_sums: array<f32, TILE_C * LANES>;

@compute @workgroup_size(TILE_C, LANES, 1)
fn sum_rows(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let col = (wid.y * nwg.x + wid.x) * TILE_C + lid.x;
  var s = 0.0;
  if (col < pc.cols) {
    for (var r = lid.y; r < pc.rows; r += LANES) {
      s += col_x[r * pc.cols + col];
    }
  }
  lane_sums[lid.y * TILE_C + lid.x] = s;
  workgroupBarrier();
  if (lid.y == 0u && col < pc.cols) {
    var total = 0.0;
    for (var lane = 0u; lane < LANES; lane++) {
      total += lane_sums[lane * TILE_C + lid.x];
    }
    col_out[col] = total;
  }
}

// ---- partial_sum / final_sum ----------------------------------------------------------------

@group(0) @binding(0) var<uniform> pp: PartialParams;
@group(0) @binding(1) var<storage, read> part_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;

@group(0) @binding(0) var<uniform> pf: FinalParams;
@group(0) @binding(1) var<storage, read> final_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> final_out: array<f32>;

var<workgroup> sums: array<f32, WORKGROUP>;

// Adds sums[0..WORKGROUP) in a fixed tree order and returns the total to every thread. Every
// thread must call it; the closing barrier lets callers reuse `sums` right after.
fn tree_sum(lid: u32) -> f32 {
  for (var stride = WORKGROUP / 2u; stride > 0u; stride /= 2u) {
    workgroupBarrier();
    if (lid < stride) {
      sums[lid] += sums[lid + stride];
    }
  }
  workgroupBarrier();
  let total = sums[0];
  workgroupBarrier();
  return total;
}

@compute @workgroup_size(WORKGROUP)
fn partial_sum(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  var s = 0.0;
  for (var i = wid.x * WORKGROUP + lid.x; i < pp.n; i += pp.groups * WORKGROUP) {
    let v = part_x[i];
    if (SQUARE) { s += v * v; } else { s += v; }
  }
  sums[lid.x] = s;
  let total = tree_sum(lid.x);
  if (lid.x == 0u) {
    partials[pp.slot + wid.x] = total;
  }
}

@compute @workgroup_size(WORKGROUP)
fn final_sum(@builtin(local_invocation_id) lid: vec3u) {
  var s = 0.0;
  for (var i = lid.x; i < pf.count; i += WORKGROUP) {
    s += final_in[i];
  }
  sums[lid.x] = s;
  let total = tree_sum(lid.x);
  if (lid.x == 0u) {
    final_out[0] = total;
  }
}

// ---- row kernels ----------------------------------------------------------------------------

@group(0) @binding(0) var<uniform> pr: RowParams;
@group(0) @binding(1) var<storage, read> row_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> row_y: array<f32>;
@group(0) @binding(2) var<storage, read_write> row_index: array<i32>;
@group(0) @binding(3) var<storage, read_write> topk_index: array<i32>;

var<workgroup> best_value: array<f32, WORKGROUP>;
var<workgroup> best_index: array<u32, WORKGROUP>;

// True when (va, ia) comes before (vb, ib) in the order "larger value first, then lower index";
// NO_INDEX marks an empty candidate, which comes last.
fn precedes(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
  if (ia == NO_INDEX) { return false; }
  if (ib == NO_INDEX) { return true; }
  return va > vb || (va == vb && ia < ib);
}

struct Best {
  value: f32,
  index: u32,
}

// Returns the entry of (best_value, best_index) that comes first under `precedes`, to every
// thread. Every thread must call it.
fn tree_best(lid: u32) -> Best {
  for (var stride = WORKGROUP / 2u; stride > 0u; stride /= 2u) {
    workgroupBarrier();
    if (lid < stride) {
      let other = lid + stride;
      if (precedes(best_value[other], best_index[other], best_value[lid], best_index[lid])) {
        best_value[lid] = best_value[other];
        best_index[lid] = best_index[other];
      }
    }
  }
  workgroupBarrier();
  let best = Best(best_value[0], best_index[0]);
  workgroupBarrier();
  return best;
}

// Returns the maximum of sums[0..WORKGROUP) to every thread, like tree_sum.
fn tree_max(lid: u32) -> f32 {
  for (var stride = WORKGROUP / 2u; stride > 0u; stride /= 2u) {
    workgroupBarrier();
    if (lid < stride) {
      sums[lid] = max(sums[lid], sums[lid + stride]);
    }
  }
  workgroupBarrier();
  let m = sums[0];
  workgroupBarrier();
  return m;
}

fn row_index_of(wid: vec3u, nwg: vec3u) -> u32 {
  return wid.y * nwg.x + wid.x;
}

@compute @workgroup_size(WORKGROUP)
fn argmax_rows(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let row = row_index_of(wid, nwg);
  if (row >= pr.rows) { return; }
  let base = pr.offset + row * pr.cols;

  // Columns are visited in increasing order, so the strict comparison keeps the lowest index.
  var value = LOWEST;
  var index = NO_INDEX;
  for (var c = lid.x; c < pr.cols; c += WORKGROUP) {
    let v = row_x[base + c];
    if (index == NO_INDEX || v > value) {
      value = v;
      index = c;
    }
  }
  best_value[lid.x] = value;
  best_index[lid.x] = index;
  let best = tree_best(lid.x);
  if (lid.x == 0u) {
    row_index[pr.row0 + row] = i32(best.index);
  }
}

@compute @workgroup_size(WORKGROUP)
fn log_softmax_rows(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let row = row_index_of(wid, nwg);
  if (row >= pr.rows) { return; }
  let base = pr.offset + row * pr.cols;

  var m = LOWEST;
  for (var c = lid.x; c < pr.cols; c += WORKGROUP) {
    m = max(m, row_x[base + c]);
  }
  sums[lid.x] = m;
  let row_max = tree_max(lid.x);

  var s = 0.0;
  for (var c = lid.x; c < pr.cols; c += WORKGROUP) {
    s += exp(row_x[base + c] - row_max);
  }
  sums[lid.x] = s;
  let log_norm = row_max + log(tree_sum(lid.x));

  for (var c = lid.x; c < pr.cols; c += WORKGROUP) {
    row_y[base + c] = row_x[base + c] - log_norm;
  }
}

// Selects the k best entries one at a time: pass j finds the best entry that comes after the
// entry chosen by pass j - 1 in the order of `precedes`, so ties are taken by increasing index
// and no set of chosen indices is needed. Each pass reads the whole row once.
@compute @workgroup_size(WORKGROUP)
fn topk_rows(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let row = row_index_of(wid, nwg);
  if (row >= pr.rows) { return; }
  let base = pr.offset + row * pr.cols;
  let out_base = (pr.row0 + row) * pr.k;

  var last_value = 0.0;
  var last_index = NO_INDEX;
  for (var j = 0u; j < pr.k; j++) {
    var value = LOWEST;
    var index = NO_INDEX;
    for (var c = lid.x; c < pr.cols; c += WORKGROUP) {
      let v = row_x[base + c];
      let after_last = last_index == NO_INDEX || precedes(last_value, last_index, v, c);
      if (after_last && (index == NO_INDEX || v > value)) {
        value = v;
        index = c;
      }
    }
    best_value[lid.x] = value;
    best_index[lid.x] = index;
    let best = tree_best(lid.x);
    last_value = best.value;
    last_index = best.index;
    if (lid.x == 0u) {
      row_y[out_base + j] = last_value;
      topk_index[out_base + j] = i32(last_index);
    }
  }
}
