/**
 * Measures the peak memory of loading a GPT-2-small-sized F32 checkpoint (about 500 MB) tensor
 * by tensor. A temporary file is stream-written, then a child Deno process loads every tensor
 * into its own Float32Array and keeps them all, as a model load does. The child reports its peak
 * resident set size; the target is a peak below 1.5 times the weight bytes.
 *
 * Run: deno run --allow-all bench/safetensors_memory.ts
 */

import { join } from "node:path";
import { openCheckpoint, type TensorToWrite, writeSafetensors } from "../io/safetensors.ts";

export interface SafetensorsMemoryResult {
  name: string;
  /** Seconds the child spent opening the file and loading all tensors. */
  seconds: number;
  /** Peak resident set size of the loading process, startup included. */
  peakRssBytes: number;
  /** Resident set size of the loading process before it opened the file. */
  baselineRssBytes: number;
  weightsBytes: number;
  /** `peakRssBytes / weightsBytes`. */
  ratio: number;
}

interface ChildReport {
  seconds: number;
  peakRssBytes: number;
  baselineRssBytes: number;
  loadedBytes: number;
}

const HIDDEN = 768;
const VOCABULARY = 50257;
const CONTEXT = 1024;
const LAYERS = 12;

/** Tensor names and shapes of GPT-2 small (124M parameters), in Hugging Face naming. */
export function gpt2SmallShapes(): { name: string; shape: number[] }[] {
  const shapes = [
    { name: "wte.weight", shape: [VOCABULARY, HIDDEN] },
    { name: "wpe.weight", shape: [CONTEXT, HIDDEN] },
  ];
  for (let layer = 0; layer < LAYERS; layer++) {
    const prefix = `h.${layer}`;
    shapes.push(
      { name: `${prefix}.ln_1.weight`, shape: [HIDDEN] },
      { name: `${prefix}.ln_1.bias`, shape: [HIDDEN] },
      { name: `${prefix}.attn.c_attn.weight`, shape: [HIDDEN, 3 * HIDDEN] },
      { name: `${prefix}.attn.c_attn.bias`, shape: [3 * HIDDEN] },
      { name: `${prefix}.attn.c_proj.weight`, shape: [HIDDEN, HIDDEN] },
      { name: `${prefix}.attn.c_proj.bias`, shape: [HIDDEN] },
      { name: `${prefix}.ln_2.weight`, shape: [HIDDEN] },
      { name: `${prefix}.ln_2.bias`, shape: [HIDDEN] },
      { name: `${prefix}.mlp.c_fc.weight`, shape: [HIDDEN, 4 * HIDDEN] },
      { name: `${prefix}.mlp.c_fc.bias`, shape: [4 * HIDDEN] },
      { name: `${prefix}.mlp.c_proj.weight`, shape: [4 * HIDDEN, HIDDEN] },
      { name: `${prefix}.mlp.c_proj.bias`, shape: [HIDDEN] },
    );
  }
  shapes.push({ name: "ln_f.weight", shape: [HIDDEN] }, { name: "ln_f.bias", shape: [HIDDEN] });
  return shapes;
}

/** Peak resident set size from /proc/self/status, or null where that file does not exist. */
function readPeakRssFromProc(): number | null {
  try {
    const status = Deno.readTextFileSync("/proc/self/status");
    const match = status.match(/^VmHWM:\s+(\d+)\s+kB$/m);
    return match === null ? null : Number(match[1]) * 1024;
  } catch {
    return null;
  }
}

/** Loads every tensor of `path`, keeping them all, and returns the memory measurements. */
async function loadAndMeasure(path: string): Promise<ChildReport> {
  const baselineRssBytes = Deno.memoryUsage().rss;
  let peakRssBytes = baselineRssBytes;
  const loadedTensors: Float32Array[] = [];
  let loadedBytes = 0;

  const start = performance.now();
  const checkpoint = await openCheckpoint(path);
  try {
    for await (const { data } of checkpoint) {
      loadedTensors.push(data);
      loadedBytes += data.byteLength;
      peakRssBytes = Math.max(peakRssBytes, Deno.memoryUsage().rss);
    }
  } finally {
    checkpoint.close();
  }
  const seconds = (performance.now() - start) / 1000;

  // VmHWM also catches peaks between samples. Reading `loadedTensors` here keeps the arrays alive until now.
  peakRssBytes = Math.max(peakRssBytes, readPeakRssFromProc() ?? 0);
  if (loadedTensors.length === 0) throw new Error(`${path}: no tensors loaded`);
  return { seconds, peakRssBytes, baselineRssBytes, loadedBytes };
}

/** Writes the benchmark checkpoint, measures a load in a child process and deletes the file. */
export async function benchSafetensorsMemory(): Promise<SafetensorsMemoryResult> {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_memory_" });
  try {
    const path = join(dir, "model.safetensors");
    const shapes = gpt2SmallShapes();
    let weightsBytes = 0;
    const tensors: TensorToWrite[] = shapes.map(({ name, shape }) => {
      const elementCount = shape.reduce((product, dim) => product * dim, 1);
      weightsBytes += elementCount * 4;
      // Produced on demand, so the writer keeps only one tensor in memory at a time.
      const data = () => new Float32Array(elementCount).map((_, i) => (i % 997) * 1e-3);
      return { name, dtype: "F32", shape, data };
    });
    await writeSafetensors(path, tensors, { purpose: "memory benchmark" });

    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--quiet", "--allow-read", import.meta.filename!, "--child", path],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!output.success) {
      throw new Error(
        `benchmark child failed with exit code ${output.code}: ` +
          new TextDecoder().decode(output.stderr),
      );
    }
    const report: ChildReport = JSON.parse(new TextDecoder().decode(output.stdout));
    if (report.loadedBytes !== weightsBytes) {
      throw new Error(`child loaded ${report.loadedBytes} bytes, expected ${weightsBytes}`);
    }

    return {
      name: "safetensors_memory",
      seconds: report.seconds,
      peakRssBytes: report.peakRssBytes,
      baselineRssBytes: report.baselineRssBytes,
      weightsBytes,
      ratio: report.peakRssBytes / weightsBytes,
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) {
  if (Deno.args[0] === "--child") {
    console.log(JSON.stringify(await loadAndMeasure(Deno.args[1])));
  } else {
    const result = await benchSafetensorsMemory();
    const megabytes = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;
    console.log(
      `${result.name}: loaded ${megabytes(result.weightsBytes)} in ${
        result.seconds.toFixed(2)
      } s, ` +
        `peak RSS ${megabytes(result.peakRssBytes)} ` +
        `(baseline ${megabytes(result.baselineRssBytes)}), ratio ${result.ratio.toFixed(3)} ` +
        `(target < 1.5)`,
    );
  }
}
