// Scaled dot-product multi-head attention with grouped-query attention, forward and backward.
//
// q has H heads and k, v have KV heads, where KV divides H. Query head h reads key/value head
// kv(h) = h / (H / KV), as Hugging Face's repeat_kv does; KV = H is ordinary multi-head attention.
// For batch b, query head h, query i and key j, with k and v taken from head kv(h):
//   S[i, j] = scale * q_i . k_j            (hidden when key j is masked)
//   P[i, :] = softmax(S[i, :])             (all zeros when every key of row i is masked)
//   out_i   = sum_j P[i, j] v_j
// Backward, with dO the gradient of `out`:
//   dP[i, j] = dO_i . v_j
//   dS[i, j] = P[i, j] * (dP[i, j] - sum_j' P[i, j'] dP[i, j'])
//   dq_i = scale * sum_j dS[i, j] k_j
//   dk_j = scale * sum_{h in group} sum_i dS_h[i, j] q_{h,i},  dv_j = sum_{h in group} sum_i P_h[i, j] dO_{h,i}
// where the group of key/value head g is the query heads g * (H / KV) .. (g + 1) * (H / KV) - 1.
//
// Layouts (row-major f32):
// - q is (B, Tq, q_stride) and k, v are (B, Tk, k_stride / v_stride). Head h of an operand reads
//   columns offset + h * head_dim .. offset + (h + 1) * head_dim, so q, k and v may be column
//   slices of one packed (B, T, (H + 2 * KV) * Dh) tensor.
// - key_mask is (B, Tk): 0 marks a padded key, any other value a real key.
// - probs, d_scores and `weights` are (B, H, Tq, Tk); masked entries hold 0.
// - out is (B, Tq, H * head_dim); gradients are written at (out_stride, out_offset), which lets
//   dq, dk and dv land in separate tensors or in column slices of one packed gradient.
// Key j is visible to query i when key_mask allows it and, with CAUSAL, j <= i + Tk - Tq, so a
// block of Tq new queries at the end of Tk keys attends like the last Tq rows of full attention.
//
// Entry points, each with one workgroup per row and WORKGROUP threads:
// - forward: per (b, h, i); writes P[i, :] and out_i.
// - backward_query: per (b, h, i); writes dS[i, :] and dq_i.
// - backward_key: per (b, h, j), when KV = H; writes grad_j = alpha * sum_i weights[i, j] source_i.
//   With weights = P and source = dO it computes dv; with weights = dS, source = q and
//   alpha = scale it computes dk.
// - backward_key_grouped: the same per (b, g, j) for key/value head g when KV < H, with
//   grad_j = alpha * sum_{h in group g} sum_i weights_h[i, j] source_{h,i}. The group's query
//   heads are summed one after the other inside the workgroup. It is a separate entry point
//   because its loop over heads made the KV = H case slower on llvmpipe (about 8% for a
//   GPT-2-sized attention backward, B 8, H 12, T 64, Dh 64).
// Every output element has exactly one writer and every sum runs in a fixed order, so results
// are deterministic without atomics.
//
// Injected by kernels/attention.ts: WORKGROUP (a power of two), MAX_KEYS (capacity of the
// per-row key buffer; also bounds Tq in backward_key), MAX_HEAD_DIM, CAUSAL, HAS_KEY_MASK.

struct Params {
  batch: u32,
  heads: u32,
  tq: u32,
  tk: u32,
  head_dim: u32,
  q_stride: u32,
  q_offset: u32,
  k_stride: u32,
  k_offset: u32,
  v_stride: u32,
  v_offset: u32,
  out_stride: u32,
  out_offset: u32,
  scale: f32,
  kv_heads: u32,
  _pad0: u32,
}

struct KeyGradParams {
  batch: u32,
  heads: u32, // query heads; rows of backward_key_grouped run over kv_heads
  tq: u32,
  tk: u32,
  head_dim: u32,
  source_stride: u32,
  source_offset: u32,
  out_stride: u32,
  out_offset: u32,
  alpha: f32,
  kv_heads: u32,
  _pad0: u32,
}

// Bindings shared by forward and backward_query sit at the same binding numbers in both.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> key_mask: array<f32>;

// forward
@group(0) @binding(4) var<storage, read> q: array<f32>;
@group(0) @binding(5) var<storage, read_write> probs_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

// backward_query
@group(0) @binding(4) var<storage, read> probs: array<f32>;
@group(0) @binding(5) var<storage, read> d_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> d_scores: array<f32>;
@group(0) @binding(7) var<storage, read_write> dq: array<f32>;

// backward_key
@group(0) @binding(0) var<uniform> kp: KeyGradParams;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> source: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;

// Stands in for the score of a hidden key; below any score that finite inputs produce.
const HIDDEN: f32 = -3.0e38;

var<workgroup> row_values: array<f32, MAX_KEYS>; // scores, probabilities or a column of weights
var<workgroup> head_row: array<f32, MAX_HEAD_DIM>; // the scaled q_i, or dO_i
var<workgroup> partials: array<f32, WORKGROUP>;

fn row_index(wid: vec3u, nwg: vec3u) -> u32 {
  return wid.y * nwg.x + wid.x;
}

// The key/value head that query head h reads.
fn kv_head(h: u32) -> u32 {
  return h / (p.heads / p.kv_heads);
}

// Number of leading keys that query i may see under the causal rule (all Tk without it).
fn visible_keys(i: u32) -> u32 {
  if (!CAUSAL) { return p.tk; }
  let end = i32(i) + i32(p.tk) - i32(p.tq) + 1;
  return u32(clamp(end, 0, i32(p.tk)));
}

fn key_is_real(b: u32, j: u32) -> bool {
  if (!HAS_KEY_MASK) { return true; }
  return key_mask[b * p.tk + j] != 0.0;
}

// Tree reductions over the workgroup. Both end with a barrier, so `partials` may be reused and
// workgroup writes made before the call are visible to every thread afterwards.
fn workgroup_max(value: f32, t: u32) -> f32 {
  partials[t] = value;
  workgroupBarrier();
  for (var stride = WORKGROUP / 2u; stride > 0u; stride >>= 1u) {
    if (t < stride) { partials[t] = max(partials[t], partials[t + stride]); }
    workgroupBarrier();
  }
  let result = partials[0];
  workgroupBarrier();
  return result;
}

fn workgroup_sum(value: f32, t: u32) -> f32 {
  partials[t] = value;
  workgroupBarrier();
  for (var stride = WORKGROUP / 2u; stride > 0u; stride >>= 1u) {
    if (t < stride) { partials[t] = partials[t] + partials[t + stride]; }
    workgroupBarrier();
  }
  let result = partials[0];
  workgroupBarrier();
  return result;
}

@compute @workgroup_size(WORKGROUP)
fn forward(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let row = row_index(wid, nwg); // (b * H + h) * Tq + i
  if (row >= p.batch * p.heads * p.tq) { return; }
  let t = lid.x;
  let i = row % p.tq;
  let h = (row / p.tq) % p.heads;
  let b = row / (p.tq * p.heads);
  let dh = p.head_dim;
  let kv_col = kv_head(h) * dh;
  let visible = visible_keys(i);

  // The scale is folded into the staged query row.
  let q_base = (b * p.tq + i) * p.q_stride + p.q_offset + h * dh;
  for (var d = t; d < dh; d += WORKGROUP) {
    head_row[d] = p.scale * q[q_base + d];
  }
  workgroupBarrier();

  var local_max = HIDDEN;
  for (var j = t; j < p.tk; j += WORKGROUP) {
    var score = HIDDEN;
    if (j < visible && key_is_real(b, j)) {
      let k_base = (b * p.tk + j) * p.k_stride + p.k_offset + kv_col;
      var acc = 0.0;
      for (var d = 0u; d < dh; d++) {
        acc = fma(head_row[d], k[k_base + d], acc);
      }
      score = acc;
    }
    row_values[j] = score;
    local_max = max(local_max, score);
  }
  let row_max = workgroup_max(local_max, t);

  // Hidden keys get weight 0 explicitly, so a row with no visible key sums to 0, not to Tk.
  var local_sum = 0.0;
  for (var j = t; j < p.tk; j += WORKGROUP) {
    let score = row_values[j];
    let e = select(0.0, exp(score - row_max), score > HIDDEN);
    row_values[j] = e;
    local_sum += e;
  }
  let total = workgroup_sum(local_sum, t);
  let inv_total = select(0.0, 1.0 / total, total > 0.0);

  for (var j = t; j < p.tk; j += WORKGROUP) {
    let prob = row_values[j] * inv_total;
    row_values[j] = prob;
    probs_out[row * p.tk + j] = prob;
  }
  workgroupBarrier();

  // Keys at or past `visible` have probability 0, so the sum stops there.
  let out_base = (b * p.tq + i) * p.out_stride + p.out_offset + h * dh;
  for (var d = t; d < dh; d += WORKGROUP) {
    var acc = 0.0;
    for (var j = 0u; j < visible; j++) {
      acc = fma(row_values[j], v[(b * p.tk + j) * p.v_stride + p.v_offset + kv_col + d], acc);
    }
    out[out_base + d] = acc;
  }
}

@compute @workgroup_size(WORKGROUP)
fn backward_query(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let row = row_index(wid, nwg); // (b * H + h) * Tq + i
  if (row >= p.batch * p.heads * p.tq) { return; }
  let t = lid.x;
  let i = row % p.tq;
  let h = (row / p.tq) % p.heads;
  let b = row / (p.tq * p.heads);
  let dh = p.head_dim;
  let kv_col = kv_head(h) * dh;
  let visible = visible_keys(i);

  // d_out is contiguous (B, Tq, H * head_dim).
  let d_out_base = (b * p.tq + i) * p.heads * dh + h * dh;
  for (var d = t; d < dh; d += WORKGROUP) {
    head_row[d] = d_out[d_out_base + d];
  }
  workgroupBarrier();

  // dP[i, j] into row_values, and the row's sum of P * dP.
  var local_dot = 0.0;
  for (var j = t; j < p.tk; j += WORKGROUP) {
    var dp = 0.0;
    if (j < visible && key_is_real(b, j)) {
      let v_base = (b * p.tk + j) * p.v_stride + p.v_offset + kv_col;
      for (var d = 0u; d < dh; d++) {
        dp = fma(head_row[d], v[v_base + d], dp);
      }
    }
    row_values[j] = dp;
    local_dot = fma(probs[row * p.tk + j], dp, local_dot);
  }
  let row_dot = workgroup_sum(local_dot, t);

  // Hidden keys have P = 0 and therefore dS = 0.
  for (var j = t; j < p.tk; j += WORKGROUP) {
    let ds = probs[row * p.tk + j] * (row_values[j] - row_dot);
    row_values[j] = ds;
    d_scores[row * p.tk + j] = ds;
  }
  workgroupBarrier();

  let dq_base = (b * p.tq + i) * p.out_stride + p.out_offset + h * dh;
  for (var d = t; d < dh; d += WORKGROUP) {
    var acc = 0.0;
    for (var j = 0u; j < visible; j++) {
      acc = fma(row_values[j], k[(b * p.tk + j) * p.k_stride + p.k_offset + kv_col + d], acc);
    }
    dq[dq_base + d] = p.scale * acc;
  }
}

@compute @workgroup_size(WORKGROUP)
fn backward_key(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let row = row_index(wid, nwg); // (b * H + h) * Tk + j
  if (row >= kp.batch * kp.heads * kp.tk) { return; }
  let t = lid.x;
  let j = row % kp.tk;
  let bh = row / kp.tk;
  let h = bh % kp.heads;
  let b = bh / kp.heads;
  let dh = kp.head_dim;

  // Under the causal rule only queries i >= j - (Tk - Tq) see key j; earlier weights are 0.
  var first = 0u;
  if (CAUSAL) {
    first = u32(max(i32(j) - i32(kp.tk) + i32(kp.tq), 0));
  }

  // Column j of the weights, gathered once for all head_dim outputs.
  for (var i = first + t; i < kp.tq; i += WORKGROUP) {
    row_values[i] = weights[(bh * kp.tq + i) * kp.tk + j];
  }
  workgroupBarrier();

  let out_base = (b * kp.tk + j) * kp.out_stride + kp.out_offset + h * dh;
  for (var d = t; d < dh; d += WORKGROUP) {
    var acc = 0.0;
    for (var i = first; i < kp.tq; i++) {
      acc = fma(row_values[i], source[(b * kp.tq + i) * kp.source_stride + kp.source_offset + h * dh + d], acc);
    }
    grad[out_base + d] = kp.alpha * acc;
  }
}

@compute @workgroup_size(WORKGROUP)
fn backward_key_grouped(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let row = row_index(wid, nwg); // (b * KV + g) * Tk + j
  if (row >= kp.batch * kp.kv_heads * kp.tk) { return; }
  let t = lid.x;
  let j = row % kp.tk;
  let g = (row / kp.tk) % kp.kv_heads;
  let b = row / (kp.tk * kp.kv_heads);
  let dh = kp.head_dim;
  let group = kp.heads / kp.kv_heads;

  // Under the causal rule only queries i >= j - (Tk - Tq) see key j; earlier weights are 0.
  var first = 0u;
  if (CAUSAL) {
    first = u32(max(i32(j) - i32(kp.tk) + i32(kp.tq), 0));
  }

  // Thread t computes head-size column d = t + s * WORKGROUP in slot s. Its sum runs over the
  // group's query heads in order, and over i in order within each head. The slot loop has the
  // same trip count in every thread, which keeps the barriers in uniform control flow.
  let slots = (dh + WORKGROUP - 1u) / WORKGROUP;
  for (var s = 0u; s < slots; s++) {
    let d = t + s * WORKGROUP;
    var acc = 0.0;
    for (var r = 0u; r < group; r++) {
      let h = g * group + r;
      let bh = b * kp.heads + h;

      // Column j of this head's weights, gathered once for the workgroup's head_dim outputs.
      for (var i = first + t; i < kp.tq; i += WORKGROUP) {
        row_values[i] = weights[(bh * kp.tq + i) * kp.tk + j];
      }
      workgroupBarrier();

      if (d < dh) {
        let source_col = kp.source_offset + h * dh + d;
        for (var i = first; i < kp.tq; i++) {
          acc = fma(row_values[i], source[(b * kp.tq + i) * kp.source_stride + source_col], acc);
        }
      }
      // row_values is overwritten by the next head.
      workgroupBarrier();
    }
    if (d < dh) {
      grad[(b * kp.tk + j) * kp.out_stride + kp.out_offset + g * dh + d] = kp.alpha * acc;
    }
  }
}
