// The WebGPU runtime: shader loading, pipeline and bind-group caches, interned uniform buffers
// and one open command encoder that every kernel launch records into until `flush()`.
//
// Launch cost is what dominates small models, so everything a dispatch needs is created once:
// - pipelines are keyed by shader file, entry point and injected constants;
// - uniform buffers are keyed by their bytes and never rewritten, so a bind group that names
//   them stays valid. Values that change every step (learning rate, seeds) therefore live in
//   storage buffers that the caller writes once per step;
// - bind groups are keyed by pipeline and buffer identities, which repeat from step to step
//   because the buffer pool hands the same buffers back in the same order.

import { getGpu, type GpuContext } from "./gpu.ts";

export type BindingKind = "uniform" | "read" | "storage";

// A constant injected at the top of a shader as `const NAME = value;`. Integers become u32
// unless given as { i32: n } or { f32: n }.
export type Define = number | boolean | { f32: number } | { i32: number };

export interface KernelSpec {
  shader: string; // file name under kernels/, e.g. "matmul.wgsl"
  entryPoint: string;
  bindings: BindingKind[]; // in @binding order, all in @group(0)
  defines?: Record<string, Define>;
}

export type Bindable = GPUBuffer | { buffer: GPUBuffer; offset?: number; size?: number };

export interface Kernel {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  label: string;
  id: number;
}

const KERNEL_DIR = new URL("../kernels/", import.meta.url);
const BUFFER_BINDING_TYPES: Record<BindingKind, GPUBufferBindingType> = {
  uniform: "uniform",
  read: "read-only-storage",
  storage: "storage",
};
// The bind-group cache is cleared when it grows past this many entries. That happens only when
// shapes keep changing, as in decoding with a growing sequence.
const MAX_CACHED_BIND_GROUPS = 8192;
const MAX_CACHED_UNIFORMS = 8192;
// Readback staging buffers kept per byte size; concurrent reads of one size may need a few.
const MAX_STAGING_PER_SIZE = 4;

export class Runtime {
  readonly device: GPUDevice;
  readonly gpu: GpuContext;
  dispatchCount = 0;
  submitCount = 0;
  // Per-kernel GPU time from timestamp queries when CLIP_CAPTIONER_PROFILE=1 (see profileReport).
  readonly profiling: boolean;
  private profileQueries: GPUQuerySet | null = null;
  private profileLabels: string[] = [];
  private profileTotals = new Map<string, { ns: number; calls: number }>();

  private shaderSources = new Map<string, string>();
  private kernels = new Map<string, Kernel>();
  private uniforms = new Map<string, GPUBuffer>();
  private bindGroups = new Map<string, GPUBindGroup>();
  private bufferIds = new WeakMap<GPUBuffer, number>();
  private nextBufferId = 1;
  private encoder: GPUCommandEncoder | null = null;
  private stagingBuffers = new Map<number, GPUBuffer[]>();
  private pass: GPUComputePassEncoder | null = null;
  private pendingError: GPUError | null = null;

  constructor(gpu: GpuContext) {
    this.gpu = gpu;
    this.device = gpu.device;
    this.profiling = Deno.env.get("CLIP_CAPTIONER_PROFILE") === "1" && gpu.hasTimestamps;
    this.device.addEventListener("uncapturederror", (event) => {
      const error = (event as GPUUncapturedErrorEvent).error;
      if (!this.pendingError) this.pendingError = error;
    });
  }

  kernel(spec: KernelSpec): Kernel {
    const defines = spec.defines ?? {};
    const defineKey = Object.keys(defines).sort().map((k) => `${k}=${JSON.stringify(defines[k])}`);
    const key = `${spec.shader}:${spec.entryPoint}:${defineKey.join(",")}`;
    const cached = this.kernels.get(key);
    if (cached) return cached;

    const code = defineHeader(defines) + this.shaderSource(spec.shader);
    const module = this.device.createShaderModule({ code, label: spec.shader });
    const layout = this.device.createBindGroupLayout({
      entries: spec.bindings.map((kind, binding) => ({
        binding,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: BUFFER_BINDING_TYPES[kind] },
      })),
    });
    const pipeline = this.device.createComputePipeline({
      label: key,
      layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: spec.entryPoint },
    });
    const kernel = { pipeline, layout, label: `${spec.shader.replace(".wgsl", "")}.${spec.entryPoint}`, id: this.kernels.size + 1 };
    this.kernels.set(key, kernel);
    return kernel;
  }

  // Returns a uniform buffer holding exactly these bytes; identical parameters share one buffer.
  uniform(params: Uint32Array | Float32Array | Int32Array): GPUBuffer {
    const bytes = new Uint8Array(params.buffer, params.byteOffset, params.byteLength);
    let key = "";
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    for (let i = 0; i < words.length; i++) key += words[i].toString(36) + ",";
    const cached = this.uniforms.get(key);
    if (cached) return cached;

    if (this.uniforms.size >= MAX_CACHED_UNIFORMS) this.dropUniforms();
    const size = Math.max(16, Math.ceil(bytes.byteLength / 16) * 16);
    const buffer = this.device.createBuffer({ size, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    const padded = new Uint8Array(size);
    padded.set(bytes);
    this.device.queue.writeBuffer(buffer, 0, padded);
    this.uniforms.set(key, buffer);
    return buffer;
  }

  // Records one dispatch into the open compute pass. `bindings` follow the kernel's binding order;
  // `params`, when given, is bound first as the uniform at binding 0.
  dispatch(
    kernel: Kernel,
    params: Uint32Array | Float32Array | Int32Array | null,
    buffers: Bindable[],
    workgroups: [number, number?, number?],
  ): void {
    const entries: Bindable[] = params ? [this.uniform(params), ...buffers] : buffers;
    const bindGroup = this.bindGroup(kernel, entries);
    const [x, y = 1, z = 1] = workgroups;
    if (x === 0 || y === 0 || z === 0) return;
    const maxGroups = this.device.limits.maxComputeWorkgroupsPerDimension;
    if (x > maxGroups || y > maxGroups || z > maxGroups) {
      throw new Error(`${kernel.label}: dispatch of ${x}x${y}x${z} workgroups exceeds the adapter limit of ${maxGroups} per dimension`);
    }

    if (this.profiling) {
      this.profiledDispatch(kernel, bindGroup, x, y, z);
      return;
    }
    if (!this.pass) {
      this.encoder ??= this.device.createCommandEncoder();
      this.pass = this.encoder.beginComputePass();
    }
    this.pass.setPipeline(kernel.pipeline);
    this.pass.setBindGroup(0, bindGroup);
    this.pass.dispatchWorkgroups(x, y, z);
    this.dispatchCount++;
  }

  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    this.endPass();
    this.encoder ??= this.device.createCommandEncoder();
    this.encoder.copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
  }

  // Writes host data into a buffer. Pending commands are submitted first, because a queue write
  // lands before any command buffer submitted after it, including ones recorded earlier.
  write(buffer: GPUBuffer, offset: number, data: ArrayBufferView): void {
    if (this.encoder) this.flush();
    this.device.queue.writeBuffer(buffer, offset, data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
  }

  flush(): void {
    this.endPass();
    if (this.encoder) {
      this.device.queue.submit([this.encoder.finish()]);
      this.submitCount++;
      this.encoder = null;
    }
    this.throwPendingError();
  }

  async read(buffer: GPUBuffer, offset = 0, bytes = buffer.size - offset): Promise<ArrayBuffer> {
    // Staging buffers are reused by size: the loss read every few steps needs no new buffer.
    const size = Math.ceil(bytes / 4) * 4;
    const staging = this.stagingBuffers.get(size)?.pop() ??
      this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    this.copy(buffer, offset, staging, 0, bytes);
    this.flush();
    await staging.mapAsync(GPUMapMode.READ);
    const copy = staging.getMappedRange(0, bytes).slice(0);
    staging.unmap();
    const free = this.stagingBuffers.get(size) ?? [];
    if (free.length < MAX_STAGING_PER_SIZE) free.push(staging);
    else staging.destroy();
    this.stagingBuffers.set(size, free);
    this.throwPendingError();
    return copy;
  }

  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.throwPendingError();
  }

  // Each profiled dispatch gets its own pass with timestamps at its start and end.
  private profiledDispatch(kernel: Kernel, bindGroup: GPUBindGroup, x: number, y: number, z: number): void {
    const capacity = 4096;
    this.profileQueries ??= this.device.createQuerySet({ type: "timestamp", count: capacity });
    if (this.profileLabels.length * 2 >= capacity) this.collectProfile();
    const index = this.profileLabels.length * 2;
    this.endPass();
    this.encoder ??= this.device.createCommandEncoder();
    const pass = this.encoder.beginComputePass({
      timestampWrites: { querySet: this.profileQueries, beginningOfPassWriteIndex: index, endOfPassWriteIndex: index + 1 },
    });
    pass.setPipeline(kernel.pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(x, y, z);
    pass.end();
    this.profileLabels.push(kernel.label);
    this.dispatchCount++;
  }

  // Resolves the pending timestamps into the per-kernel totals. Synchronous: it waits with a
  // blocking map, which profiling accepts in exchange for exact per-dispatch attribution.
  private collectProfile(): void {
    if (!this.profileQueries || this.profileLabels.length === 0) return;
    const count = this.profileLabels.length * 2;
    this.encoder ??= this.device.createCommandEncoder();
    const resolved = this.device.createBuffer({ size: count * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    this.encoder.resolveQuerySet(this.profileQueries, 0, count, resolved, 0);
    this.pendingProfiles.push({ buffer: resolved, labels: this.profileLabels });
    this.profileLabels = [];
  }

  private pendingProfiles: { buffer: GPUBuffer; labels: string[] }[] = [];

  // Per-kernel GPU time in milliseconds since the last report, slowest first.
  async profileReport(): Promise<{ kernel: string; ms: number; calls: number }[]> {
    this.collectProfile();
    this.flush();
    for (const { buffer, labels } of this.pendingProfiles) {
      const data = new BigUint64Array(await this.read(buffer));
      labels.forEach((label, i) => {
        const entry = this.profileTotals.get(label) ?? { ns: 0, calls: 0 };
        entry.ns += Number(data[2 * i + 1] - data[2 * i]);
        entry.calls++;
        this.profileTotals.set(label, entry);
      });
      buffer.destroy();
    }
    this.pendingProfiles = [];
    const report = [...this.profileTotals].map(([kernel, e]) => ({ kernel, ms: e.ns / 1e6, calls: e.calls }));
    this.profileTotals.clear();
    return report.sort((a, b) => b.ms - a.ms);
  }

  // Forgets bind groups that name a buffer about to be destroyed.
  forgetBuffer(buffer: GPUBuffer): void {
    const id = this.bufferIds.get(buffer);
    if (id === undefined) return;
    const needle = `:${id}@`;
    for (const key of this.bindGroups.keys()) if (key.includes(needle)) this.bindGroups.delete(key);
  }

  private bindGroup(kernel: Kernel, entries: Bindable[]): GPUBindGroup {
    let key = `${kernel.id}`;
    for (const entry of entries) {
      const buffer = entry instanceof GPUBuffer ? entry : entry.buffer;
      const offset = entry instanceof GPUBuffer ? 0 : entry.offset ?? 0;
      const size = entry instanceof GPUBuffer ? -1 : entry.size ?? -1;
      key += `:${this.bufferId(buffer)}@${offset}+${size}`;
    }
    const cached = this.bindGroups.get(key);
    if (cached) return cached;

    if (this.bindGroups.size >= MAX_CACHED_BIND_GROUPS) this.bindGroups.clear();
    const group = this.device.createBindGroup({
      layout: kernel.layout,
      entries: entries.map((entry, binding) => ({
        binding,
        resource: entry instanceof GPUBuffer ? { buffer: entry } : entry,
      })),
    });
    this.bindGroups.set(key, group);
    return group;
  }

  private bufferId(buffer: GPUBuffer): number {
    let id = this.bufferIds.get(buffer);
    if (id === undefined) {
      id = this.nextBufferId++;
      this.bufferIds.set(buffer, id);
    }
    return id;
  }

  private shaderSource(file: string): string {
    let source = this.shaderSources.get(file);
    if (source === undefined) {
      source = Deno.readTextFileSync(new URL(file, KERNEL_DIR));
      this.shaderSources.set(file, source);
    }
    return source;
  }

  private dropUniforms(): void {
    // Uniforms may be named by recorded commands, so submit them before destroying anything.
    this.flush();
    for (const buffer of this.uniforms.values()) {
      this.forgetBuffer(buffer);
      buffer.destroy();
    }
    this.uniforms.clear();
  }

  private endPass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  private throwPendingError(): void {
    if (this.pendingError) {
      const error = this.pendingError;
      this.pendingError = null;
      throw new Error(`WebGPU error: ${error.message}`);
    }
  }
}

function defineHeader(defines: Record<string, Define>): string {
  let header = "";
  for (const [name, value] of Object.entries(defines)) {
    if (typeof value === "boolean") header += `const ${name} = ${value};\n`;
    else if (typeof value === "number") {
      if (!Number.isInteger(value) || value < 0) throw new Error(`define ${name}=${value}: expected a non-negative integer`);
      header += `const ${name} = ${value}u;\n`;
    } else if ("f32" in value) header += `const ${name} = f32(${value.f32});\n`;
    else header += `const ${name} = i32(${value.i32});\n`;
  }
  return header;
}

let runtime: Runtime | null = null;

export async function getRuntime(): Promise<Runtime> {
  if (!runtime) runtime = new Runtime(await getGpu());
  return runtime;
}

// The runtime after `getRuntime()` has resolved once; model code is synchronous and uses this.
export function rt(): Runtime {
  if (!runtime) throw new Error("WebGPU runtime not initialised: await getRuntime() first");
  return runtime;
}
