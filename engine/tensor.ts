// GPU tensors, the buffer pool they come from, and `tidy` scopes that return them to it.
//
// Every tensor owns one pooled GPUBuffer (views share their base's). Tensors created inside
// `tidy(fn)` go back to the pool when `fn` returns, except the ones it returns and the ones
// marked `keep()` (parameters, optimizer state). A training step therefore allocates nothing
// new after its first run: the pool hands back buffers of the exact same sizes.

import { rt } from "./runtime.ts";

export type DType = "f32" | "i32" | "u32";

const BUFFER_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

class BufferPool {
  private free = new Map<number, GPUBuffer[]>();
  allocatedBytes = 0; // every buffer the pool created and has not destroyed
  liveBytes = 0; // buffers handed out and not yet released
  peakLiveBytes = 0;

  acquire(bytes: number): GPUBuffer {
    const size = Math.max(16, Math.ceil(bytes / 16) * 16);
    const list = this.free.get(size);
    let buffer = list?.pop();
    if (!buffer) {
      buffer = rt().device.createBuffer({ size, usage: BUFFER_USAGE });
      this.allocatedBytes += size;
    }
    this.liveBytes += size;
    this.peakLiveBytes = Math.max(this.peakLiveBytes, this.liveBytes);
    return buffer;
  }

  release(buffer: GPUBuffer): void {
    this.liveBytes -= buffer.size;
    let list = this.free.get(buffer.size);
    if (!list) this.free.set(buffer.size, list = []);
    list.push(buffer);
  }

  // Destroys every free buffer, for instance after loading weights left large temporaries.
  trim(): void {
    rt().flush();
    for (const list of this.free.values()) {
      for (const buffer of list) {
        this.allocatedBytes -= buffer.size;
        rt().forgetBuffer(buffer);
        buffer.destroy();
      }
    }
    this.free.clear();
  }
}

export const pool = new BufferPool();

// Autograd record attached to a tensor produced by a differentiable op.
export interface GradNode {
  inputs: Tensor[];
  // Returns one gradient per input, or null where the input needs none.
  backward: (gradOutput: Tensor) => (Tensor | null)[];
}

const scopes: Set<Tensor>[] = [];

export class Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly size: number;
  readonly buffer: GPUBuffer;
  // The tensor whose buffer a view shares; views never release the buffer themselves.
  readonly base: Tensor | null;
  requiresGrad = false;
  grad: Tensor | null = null;
  node: GradNode | null = null;
  name = "";
  private disposed = false;
  private kept = false;

  constructor(shape: readonly number[], dtype: DType = "f32", base: Tensor | null = null) {
    this.shape = shape;
    this.dtype = dtype;
    this.size = shape.reduce((a, b) => a * b, 1);
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new Error(`invalid tensor shape [${shape.join(", ")}]`);
    }
    this.base = base;
    this.buffer = base ? base.buffer : pool.acquire(this.size * 4);
    scopes.at(-1)?.add(this);
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  get bytes(): number {
    return this.size * 4;
  }

  // Excludes the tensor from the enclosing `tidy` scopes; it lives until `dispose()`.
  keep(): this {
    this.kept = true;
    for (const scope of scopes) scope.delete(this);
    return this;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.node = null;
    if (!this.base) pool.release(this.buffer);
  }

  // A tensor of another shape over the same buffer; no data is copied.
  view(shape: number[]): Tensor {
    const resolved = resolveShape(shape, this.size, this.shape);
    return new Tensor(resolved, this.dtype, this.base ?? this);
  }

  assertLive(what: string): void {
    if (this.disposed) throw new Error(`${what}: tensor ${this.name || `[${this.shape}]`} was already disposed`);
  }

  async toArray(): Promise<Float32Array | Int32Array | Uint32Array> {
    this.assertLive("toArray");
    const data = await rt().read(this.buffer, 0, this.bytes);
    if (this.dtype === "i32") return new Int32Array(data);
    if (this.dtype === "u32") return new Uint32Array(data);
    return new Float32Array(data);
  }

  async toFloat32(): Promise<Float32Array> {
    const data = await this.toArray();
    return data instanceof Float32Array ? data : Float32Array.from(data);
  }

  async item(): Promise<number> {
    return (await this.toArray())[0];
  }

  get isKept(): boolean {
    return this.kept;
  }
}

function resolveShape(shape: number[], size: number, from: readonly number[]): number[] {
  const inferred = shape.indexOf(-1);
  const known = shape.reduce((a, b) => (b === -1 ? a : a * b), 1);
  const resolved = [...shape];
  if (inferred >= 0) resolved[inferred] = size / known;
  const total = resolved.reduce((a, b) => a * b, 1);
  if (total !== size || !resolved.every(Number.isInteger)) {
    throw new Error(`cannot view a tensor of shape [${from.join(", ")}] as [${shape.join(", ")}]`);
  }
  return resolved;
}

export function empty(shape: readonly number[], dtype: DType = "f32"): Tensor {
  return new Tensor(shape, dtype);
}

export function fromArray(
  data: ArrayLike<number>,
  shape: readonly number[],
  dtype: DType = "f32",
): Tensor {
  const t = new Tensor(shape, dtype);
  if (data.length !== t.size) {
    throw new Error(`fromArray: ${data.length} values do not fill shape [${shape.join(", ")}]`);
  }
  const typed = dtype === "f32"
    ? (data instanceof Float32Array ? data : Float32Array.from(data))
    : dtype === "i32"
    ? (data instanceof Int32Array ? data : Int32Array.from(data))
    : (data instanceof Uint32Array ? data : Uint32Array.from(data));
  rt().write(t.buffer, 0, typed);
  return t;
}

// Writes host data into an existing tensor, e.g. the batch inputs of a training step.
export function upload(tensor: Tensor, data: Float32Array | Int32Array | Uint32Array): void {
  if (data.length !== tensor.size) throw new Error(`upload: ${data.length} values for a tensor of ${tensor.size}`);
  rt().write(tensor.buffer, 0, data);
}

// Runs `fn` and disposes every tensor it created, except kept ones and those it returns
// (a tensor, or tensors inside a returned array or plain object).
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } finally {
    scopes.pop();
  }
  const returned = new Set<Tensor>();
  collectTensors(result, returned);
  for (const t of scope) {
    if (returned.has(t)) scopes.at(-1)?.add(t);
    else t.dispose();
  }
  return result;
}

function collectTensors(value: unknown, into: Set<Tensor>): void {
  if (value instanceof Tensor) {
    into.add(value);
    if (value.base) into.add(value.base);
  }
  else if (Array.isArray(value)) for (const v of value) collectTensors(v, into);
  else if (value && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    for (const v of Object.values(value)) collectTensors(v, into);
  }
}
