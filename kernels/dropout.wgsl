// Stateless dropout: out[i] = a[i] * scale where element i is kept, 0 where it is dropped.
// The forward pass passes x as `a`, the backward pass passes dy, and both regenerate the same
// keep mask from (seed, salt, i), so no mask is stored between them.
// The mask is the specification that tests reimplement, so it must not change silently:
//   mix32(h)  = murmur3's 32-bit finalizer (xor-shift 16, * 0x85ebca6b, xor-shift 13,
//               * 0xc2b2ae35, xor-shift 16), all arithmetic modulo 2^32
//   key       = mix32(seed ^ mix32(salt ^ 0x9e3779b9))
//   bits(i)   = mix32(mix32(i * 0x9e3779b9 + key) ^ key)
//   kept(i)   = !drop_all && bits(i) >= threshold, threshold = round(p * 2^32)
// seed is seeds[0], read from a storage buffer because it changes every step while uniforms are
// interned by value; the salt is a per-call constant that separates layers.
// One thread per element on a 2-D grid, so tensors beyond 65535 * WORKGROUP elements fit.
// Injected by kernels/dropout.ts: WORKGROUP.

struct Params {
  n: u32,
  threshold: u32,
  salt: u32,
  drop_all: u32, // 1 for p = 1, where no threshold below 2^32 drops everything
  scale: f32, // 1 / (1 - p)
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> seeds: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const GOLDEN: u32 = 0x9e3779b9u; // 2^32 / golden ratio, odd, spreads consecutive indices

fn mix32(value: u32) -> u32 {
  var h = value;
  h ^= h >> 16u;
  h *= 0x85ebca6bu;
  h ^= h >> 13u;
  h *= 0xc2b2ae35u;
  h ^= h >> 16u;
  return h;
}

@compute @workgroup_size(WORKGROUP)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let i = (wid.y * nwg.x + wid.x) * WORKGROUP + lid.x;
  if (i >= p.n) { return; }
  let key = mix32(seeds[0] ^ mix32(p.salt ^ GOLDEN));
  let bits = mix32(mix32(i * GOLDEN + key) ^ key);
  let kept = p.drop_all == 0u && bits >= p.threshold;
  out[i] = select(0.0, a[i] * p.scale, kept);
}
