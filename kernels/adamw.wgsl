// One AdamW step over one parameter tensor, in place, with PyTorch's torch.optim.AdamW update:
//   g = grad * clip_scale
//   p = p * (1 - lr * weight_decay)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   p = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
// where bc1 = 1 - beta1^t and bc2 = 1 - beta2^t for this parameter's step count t.
// clip_scale = min(1, max_norm / (sqrt(sum_squares) + 1e-6)) as in torch.nn.utils.clip_grad_norm_,
// computed here from the GPU-side sum of squares of all gradients, so no value is read back; it
// is 1 without CLIP.
// Per-step values live in the storage buffer `hyper`, 4 floats per parameter at 4 * p.slot:
// [lr, lr / bc1, sqrt(bc2), unused]. Constant settings are uniforms.
// One thread per element. Injected by kernels/adamw.ts: WORKGROUP, CLIP.

// 1 - beta1 and 1 - beta2 come from the launcher, computed in float64: 1 - f32(0.999) in f32
// would be off by 1.3e-5 relative.
struct Params {
  n: u32,            // elements in the parameter
  slot: u32,         // this parameter's entry in `hyper`
  beta1: f32,
  one_minus_beta1: f32,
  beta2: f32,
  one_minus_beta2: f32,
  eps: f32,
  weight_decay: f32,
  max_norm: f32,
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> hyper: array<f32>;
@group(0) @binding(2) var<storage, read> sum_squares: array<f32>;
@group(0) @binding(3) var<storage, read> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> param: array<f32>;
@group(0) @binding(5) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(6) var<storage, read_write> exp_avg_sq: array<f32>;

// The term clip_grad_norm_ adds to the norm so that a zero gradient does not divide by zero.
const NORM_EPS: f32 = 1e-6;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = (wid.y * nwg.x + wid.x) * WORKGROUP + lid.x;
  if (i >= p.n) { return; }

  let lr = hyper[4u * p.slot];
  let step_size = hyper[4u * p.slot + 1u];
  let bc2_sqrt = hyper[4u * p.slot + 2u];

  var g = grad[i];
  if (CLIP) {
    g *= min(1.0, p.max_norm / (sqrt(sum_squares[0]) + NORM_EPS));
  }

  let w = param[i] * (1.0 - lr * p.weight_decay);
  let m = p.beta1 * exp_avg[i] + p.one_minus_beta1 * g;
  let v = p.beta2 * exp_avg_sq[i] + p.one_minus_beta2 * g * g;
  exp_avg[i] = m;
  exp_avg_sq[i] = v;
  param[i] = w - step_size * m / (sqrt(v) / bc2_sqrt + p.eps);
}
