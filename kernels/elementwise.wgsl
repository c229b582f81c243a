// Elementwise kernels: residual add with trailing broadcast, scaling, fill, and the
// activations GELU (GPT-2's tanh form), quick_gelu (CLIP) and ReLU with their backward passes.
// One thread per element; the grid is 2-D so tensors larger than 65535 * WORKGROUP elements fit.
// Injected by kernels/elementwise.ts: WORKGROUP.

struct Params {
  n: u32,      // elements in `out`
  nb: u32,     // elements in `b`; b is read at i % nb (trailing broadcast)
  alpha: f32,
  beta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const GELU_COEFF: f32 = 0.044715;
const QUICK_GELU_COEFF: f32 = 1.702;

fn index(wid: vec3u, nwg: vec3u, lid: vec3u) -> u32 {
  return (wid.y * nwg.x + wid.x) * WORKGROUP + lid.x;
}

// tanh saturates to +-1 in f32 beyond |x| = 9, and some drivers return NaN for large inputs.
fn safe_tanh(x: f32) -> f32 {
  return tanh(clamp(x, -15.0, 15.0));
}

fn sigmoid(x: f32) -> f32 {
  return 1.0 / (1.0 + exp(-x));
}

// out = alpha * a + beta * b (b broadcast over the trailing nb elements)
@compute @workgroup_size(WORKGROUP)
fn add(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  out[i] = p.alpha * a[i] + p.beta * b[i % p.nb];
}

// out += alpha * a, in place; `b` is unused.
@compute @workgroup_size(WORKGROUP)
fn add_into(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  out[i] = out[i] + p.alpha * a[i];
}

@compute @workgroup_size(WORKGROUP)
fn mul(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  out[i] = a[i] * b[i % p.nb];
}

@compute @workgroup_size(WORKGROUP)
fn fill(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  out[i] = p.alpha;
}

@compute @workgroup_size(WORKGROUP)
fn relu(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  out[i] = max(a[i], 0.0);
}

// a = x, b = dy
@compute @workgroup_size(WORKGROUP)
fn relu_backward(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  out[i] = select(0.0, b[i], a[i] > 0.0);
}

@compute @workgroup_size(WORKGROUP)
fn gelu(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  let x = a[i];
  out[i] = 0.5 * x * (1.0 + safe_tanh(SQRT_2_OVER_PI * (x + GELU_COEFF * x * x * x)));
}

@compute @workgroup_size(WORKGROUP)
fn gelu_backward(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  let x = a[i];
  let t = safe_tanh(SQRT_2_OVER_PI * (x + GELU_COEFF * x * x * x));
  let dt = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_COEFF * x * x);
  out[i] = b[i] * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dt);
}

@compute @workgroup_size(WORKGROUP)
fn quick_gelu(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  let x = a[i];
  out[i] = x * sigmoid(QUICK_GELU_COEFF * x);
}

@compute @workgroup_size(WORKGROUP)
fn quick_gelu_backward(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  let x = a[i];
  let s = sigmoid(QUICK_GELU_COEFF * x);
  out[i] = b[i] * (s + QUICK_GELU_COEFF * x * s * (1.0 - s));
}
