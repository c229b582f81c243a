// Acquires the WebGPU adapter and device once per process, with the largest limits the adapter
// allows, because the defaults (128 MiB bindings, 8 storage buffers) are lower than what models need.

export class NoAdapterError extends Error {
  constructor() {
    super(
      "No WebGPU adapter found. Install a GPU driver, or Mesa's software drivers for the CPU " +
        "(Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libgl1-mesa-dri`), then check with " +
        "`deno eval 'console.log(await navigator.gpu.requestAdapter())'`.",
    );
    this.name = "NoAdapterError";
  }
}

export interface GpuContext {
  device: GPUDevice;
  adapterDescription: string;
  hasF16: boolean;
  hasTimestamps: boolean;
  // Largest byte size one storage binding may have. The environment variable
  // CLIP_CAPTIONER_MAX_BINDING lowers it so tests can force tensor splitting on small models.
  maxBindingBytes: number;
}

let context: Promise<GpuContext> | null = null;

export function getGpu(): Promise<GpuContext> {
  if (!context) context = createContext();
  return context;
}

async function createContext(): Promise<GpuContext> {
  ensureRuntimeDir();
  if (!("gpu" in navigator) || !navigator.gpu) throw new NoAdapterError();
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new NoAdapterError();

  const limits = adapter.limits;
  const hasF16 = adapter.features.has("shader-f16");
  const hasTimestamps = adapter.features.has("timestamp-query");
  const features: GPUFeatureName[] = [];
  if (hasF16) features.push("shader-f16");
  if (hasTimestamps) features.push("timestamp-query");
  const device = await adapter.requestDevice({
    requiredFeatures: features,
    requiredLimits: {
      maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
      maxBufferSize: limits.maxBufferSize,
      maxStorageBuffersPerShaderStage: limits.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: limits.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: limits.maxComputeWorkgroupSizeY,
    },
  });

  const forced = Number(Deno.env.get("CLIP_CAPTIONER_MAX_BINDING") ?? "0");
  let maxBindingBytes = limits.maxStorageBufferBindingSize;
  if (forced > 0) maxBindingBytes = Math.min(maxBindingBytes, forced);

  return {
    device,
    adapterDescription: adapter.info?.description || adapter.info?.vendor || "unknown adapter",
    hasF16,
    hasTimestamps,
    maxBindingBytes,
  };
}

// Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid or not set" on every start when the
// variable is unset, as in containers and CI. A private directory (mode 0700) avoids the noise.
function ensureRuntimeDir(): void {
  if (Deno.build.os !== "linux" || Deno.env.get("XDG_RUNTIME_DIR")) return;
  const dir = `${Deno.env.get("TMPDIR") ?? "/tmp"}/clip-captioner-runtime-${Deno.uid() ?? "user"}`;
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    Deno.env.set("XDG_RUNTIME_DIR", dir);
  } catch {
    // Only cosmetic: without the directory the driver prints its warning and works anyway.
  }
}
