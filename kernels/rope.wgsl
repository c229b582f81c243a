// Rotary position embeddings in Hugging Face's half-split layout (rotate_half), as Llama and
// Qwen2 apply them to queries and keys, and the inverse rotation for the backward pass.
// x and out are (batch, seq_len, heads * head_dim) row-major; head h of a row occupies columns
// h * head_dim .. (h + 1) * head_dim. Within a head, element i < half = head_dim / 2 pairs with
// element i + half. With angle a = position * inv_freq[i] and position = position_offset + t:
//   out[i]        = x[i] * cos(a) - sign * x[i + half] * sin(a)
//   out[i + half] = x[i + half] * cos(a) + sign * x[i] * sin(a)
// sign = 1 rotates by +a (forward); sign = -1 rotates by -a, the transpose, which is the backward
// pass for the output gradient.
// table is (positions, half, 2) row-major: (cos a, sin a) for every position and frequency,
// computed on the CPU by kernels/rope.ts, because f32 sin and cos on the GPU lose accuracy for
// angles of thousands of radians.
// One thread per (row, head, i) pair; the grid is 2-D so that large inputs fit.
// Injected by kernels/rope.ts: WORKGROUP.

struct Params {
  pairs: u32, // rows * heads * half
  half: u32,
  heads: u32,
  seq_len: u32,
  position_offset: u32,
  sign: f32,
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WORKGROUP)
fn rotate(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let k = (wid.y * nwg.x + wid.x) * WORKGROUP + lid.x;
  if (k >= p.pairs) { return; }
  let i = k % p.half;
  let row_head = k / p.half; // row * heads + head
  let row = row_head / p.heads;
  let position = p.position_offset + row % p.seq_len;

  let first = row_head * 2u * p.half + i; // head_dim = 2 * half, heads are contiguous in a row
  let second = first + p.half;
  let t = 2u * (position * p.half + i);
  let c = table[t];
  let s = p.sign * table[t + 1u];

  let x1 = x[first];
  let x2 = x[second];
  out[first] = x1 * c - x2 * s;
  out[second] = x2 * c + x1 * s;
}
