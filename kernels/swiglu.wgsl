// SwiGLU, the gated activation of Llama and Qwen2 MLPs, and SiLU, with their backward passes.
// All tensors are flat arrays of n elements (gate and up are (rows, intermediate) in the model):
//   swiglu:           out = silu(gate) * up
//   swiglu_backward:  dgate = dout * up * silu'(gate), dup = dout * silu(gate)
//   silu:             out = x * sigmoid(x)
//   silu_backward:    dx = dy * silu'(x), silu'(x) = s * (1 + x * (1 - s)), s = sigmoid(x)
// One thread per element; the grid is 2-D so tensors larger than 65535 * WORKGROUP elements fit.
// Injected by kernels/swiglu.ts: WORKGROUP.

struct Params {
  n: u32,
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// swiglu and swiglu_backward
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> fw_out: array<f32>; // swiglu
@group(0) @binding(3) var<storage, read> bw_dout: array<f32>; // swiglu_backward
@group(0) @binding(4) var<storage, read_write> bw_dgate: array<f32>;
@group(0) @binding(5) var<storage, read_write> bw_dup: array<f32>;

// silu and silu_backward
@group(0) @binding(1) var<storage, read> act_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> act_out: array<f32>; // silu
@group(0) @binding(2) var<storage, read> act_dy: array<f32>; // silu_backward
@group(0) @binding(3) var<storage, read_write> act_dx: array<f32>;

fn index(wid: vec3u, nwg: vec3u, lid: vec3u) -> u32 {
  return (wid.y * nwg.x + wid.x) * WORKGROUP + lid.x;
}

// exp only ever sees -|z| <= 0, so it cannot overflow to inf for large |z|; for z -> -inf the
// result underflows to 0 and silu(z) = z * 0 stays finite.
fn sigmoid(z: f32) -> f32 {
  let e = exp(-abs(z));
  let s = 1.0 / (1.0 + e);
  return select(e * s, s, z >= 0.0);
}

fn silu_grad(z: f32, s: f32) -> f32 {
  return s * (1.0 + z * (1.0 - s));
}

@compute @workgroup_size(WORKGROUP)
fn swiglu(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  let z = gate[i];
  fw_out[i] = z * sigmoid(z) * up[i];
}

@compute @workgroup_size(WORKGROUP)
fn swiglu_backward(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  let z = gate[i];
  let s = sigmoid(z);
  let d = bw_dout[i];
  bw_dgate[i] = d * up[i] * silu_grad(z, s);
  bw_dup[i] = d * z * s;
}

@compute @workgroup_size(WORKGROUP)
fn silu(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  let z = act_x[i];
  act_out[i] = z * sigmoid(z);
}

@compute @workgroup_size(WORKGROUP)
fn silu_backward(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = index(wid, nwg, lid);
  if (i >= p.n) { return; }
  let z = act_x[i];
  act_dx[i] = act_dy[i] * silu_grad(z, sigmoid(z));
}
