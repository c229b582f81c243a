// Embedding lookup and its gradient, for a table that may be split along V into chunks of rows
// (one GPU binding holds at most maxStorageBufferBindingSize bytes, less than GPT-2's table).
// A chunk is either a separate tensor or a window of whole rows of one large buffer, and the
// tokens may be split the same way when out or d_out exceed one binding.
// - gather: out[n, :] = table[ids[n] - row_offset, :] for ids inside the chunk
//   [row_offset, row_offset + chunk_rows). Other rows of `out` are left as they are, or, with
//   FILL_MISSING, set to NaN, so that an id that no chunk covers shows up as NaN.
//   One thread per output element.
// - zero: grad = 0, one thread per element, before scatter_add.
// - scatter_add: grad[ids[n] - row_offset, :] += d_out[n, :] for ids inside the chunk. Thread d
//   owns column d of the gradient and walks the tokens in order, so repeated ids accumulate in a
//   fixed order without atomics and the result repeats bit for bit.
// Layouts: ids i32 (N), table and grad (chunk_rows, D), out and d_out (N, D), all row-major,
// each starting at its element offset inside the binding (ids_offset, table_offset, out_offset).
// The offsets are read only with WINDOWED; without it every binding starts at its first element.
// Injected by kernels/embedding.ts: WORKGROUP, FILL_MISSING, WINDOWED.

struct Params {
  tokens: u32,       // N, tokens in this dispatch
  dim: u32,          // D
  row_offset: u32,   // first vocabulary row held by the chunk
  chunk_rows: u32,   // rows in the chunk
  ids_offset: u32,   // index of the first id inside the ids binding
  table_offset: u32, // index of the chunk's first element inside the table or grad binding
  out_offset: u32,   // index of the first token's first element inside the out or d_out binding
  _pad: u32,         // keeps the uniform a multiple of 16 bytes
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// scatter_add: binding 2 is the incoming gradient, binding 3 the table gradient.
@group(0) @binding(2) var<storage, read> d_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;

// zero: binding 1 is the table gradient.
@group(0) @binding(1) var<storage, read_write> zero_target: array<f32>;

// Element offsets inside the bindings. Without WINDOWED they are the constant 0, which keeps the
// whole-buffer path as fast as before the offsets existed.
fn ids_base() -> u32 {
  if (WINDOWED) { return p.ids_offset; }
  return 0u;
}

fn table_base() -> u32 {
  if (WINDOWED) { return p.table_offset; }
  return 0u;
}

fn out_base() -> u32 {
  if (WINDOWED) { return p.out_offset; }
  return 0u;
}

fn linear_index(wid: vec3u, nwg: vec3u, lid: vec3u) -> u32 {
  return (wid.y * nwg.x + wid.x) * WORKGROUP + lid.x;
}

// A quiet NaN. The bit pattern is held in a variable because a constant NaN is a shader-creation
// error in WGSL.
fn nan() -> f32 {
  var bits = 0x7fc00000u;
  return bitcast<f32>(bits);
}

// The id's row inside the chunk, or -1 when the chunk does not hold it.
fn chunk_row(id: i32) -> i32 {
  let local = id - i32(p.row_offset);
  if (local < 0 || u32(local) >= p.chunk_rows) { return -1; }
  return local;
}

@compute @workgroup_size(WORKGROUP)
fn gather(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = linear_index(wid, nwg, lid);
  if (i >= p.tokens * p.dim) { return; }
  let n = i / p.dim;
  let d = i % p.dim;
  let row = chunk_row(ids[ids_base() + n]);
  if (row >= 0) {
    out[out_base() + i] = table[table_base() + u32(row) * p.dim + d];
  } else if (FILL_MISSING) {
    out[out_base() + i] = nan();
  }
}

@compute @workgroup_size(WORKGROUP)
fn zero(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = linear_index(wid, nwg, lid);
  if (i >= p.chunk_rows * p.dim) { return; }
  zero_target[table_base() + i] = 0.0;
}

@compute @workgroup_size(WORKGROUP)
fn scatter_add(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let d = linear_index(wid, nwg, lid);
  if (d >= p.dim) { return; }
  for (var n = 0u; n < p.tokens; n++) {
    let row = chunk_row(ids[ids_base() + n]);
    if (row >= 0) {
      let g = table_base() + u32(row) * p.dim + d;
      grad[g] = grad[g] + d_out[out_base() + n * p.dim + d];
    }
  }
}
