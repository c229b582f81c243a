// Strided block copy: for z < Z, r < R, c < C,
//   dst[dst_offset + z * dst_z + r * dst_r + c] = src[src_offset + z * src_z + r * src_r + c]
// (+ the old dst value when ACCUMULATE). Concatenation and slicing along the sequence, broadcasting
// a row over the batch (src_z = 0) and writing into a KV cache are all this one pattern.
// Injected by kernels/copy.ts: WORKGROUP, ACCUMULATE.

struct Params {
  Z: u32,
  R: u32,
  C: u32,
  src_offset: u32,
  src_z: u32,
  src_r: u32,
  dst_offset: u32,
  dst_z: u32,
  dst_r: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = (wid.y * nwg.x + wid.x) * WORKGROUP + lid.x;
  if (i >= p.Z * p.R * p.C) { return; }
  let c = i % p.C;
  let r = (i / p.C) % p.R;
  let z = i / (p.C * p.R);
  let d = p.dst_offset + z * p.dst_z + r * p.dst_r + c;
  var v = src[p.src_offset + z * p.src_z + r * p.src_r + c];
  if (ACCUMULATE) { v += dst[d]; }
  dst[d] = v;
}
