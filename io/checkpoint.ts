// Training-run checkpoints: runs/NAME/checkpoints/<step dir>/ contains config.json,
// model.safetensors, optimizer.safetensors, trainer_state.json and tokenizer.json, laid out as a
// Hugging Face model directory. runs/NAME/last.json and best.json point at a complete directory.
//
// A save writes a new directory first and only then replaces the pointer (atomically, by rename),
// so a process killed at any moment leaves the pointers naming complete checkpoints. Directories
// that no pointer names are deleted on the next save or load.

import { join } from "node:path";
import { atomicWriteJson } from "./atomic.ts";
import { openCheckpoint, type TensorToWrite, writeSafetensors } from "./safetensors.ts";

export interface HostTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

export interface TrainerState {
  epoch: number; // completed epochs
  globalStep: number;
  bestValLoss: number | null;
  history: { epoch: number; trainLoss: number; valLoss: number }[];
}

export interface CheckpointContents {
  config: Record<string, unknown>;
  model: HostTensor[];
  optimizer: HostTensor[];
  trainerState: TrainerState;
  // tokenizer.json and tokenizer_config.json, parsed
  tokenizer: { json: unknown; config: Record<string, unknown> } | null;
}

export type PointerKind = "last" | "best";

interface Pointer {
  dir: string;
  epoch: number;
  globalStep: number;
}

export async function saveCheckpoint(runDir: string, contents: CheckpointContents, kinds: PointerKind[]): Promise<string> {
  const name = `epoch-${String(contents.trainerState.epoch).padStart(4, "0")}-step-${contents.trainerState.globalStep}`;
  const relative = join("checkpoints", name);
  const dir = join(runDir, relative);
  await Deno.mkdir(dir, { recursive: true });

  await atomicWriteJson(join(dir, "config.json"), contents.config);
  await writeSafetensors(join(dir, "model.safetensors"), toWrite(contents.model), { format: "pt" });
  // Test hook: CLIP_CAPTIONER_TEST_PAUSE_SAVE=EPOCH stops that epoch's save half-way, after
  // model.safetensors, so a test can kill the process in the middle of it.
  if (Deno.env.get("CLIP_CAPTIONER_TEST_PAUSE_SAVE") === String(contents.trainerState.epoch)) {
    console.log(`checkpoint save paused in ${dir}`);
    await new Promise((resolve) => setTimeout(resolve, 600_000));
  }
  await writeSafetensors(join(dir, "optimizer.safetensors"), toWrite(contents.optimizer));
  await atomicWriteJson(join(dir, "trainer_state.json"), contents.trainerState);
  if (contents.tokenizer !== null) {
    await atomicWriteJson(join(dir, "tokenizer.json"), contents.tokenizer.json);
    await atomicWriteJson(join(dir, "tokenizer_config.json"), contents.tokenizer.config);
  }

  const pointer: Pointer = { dir: relative, epoch: contents.trainerState.epoch, globalStep: contents.trainerState.globalStep };
  for (const kind of kinds) await atomicWriteJson(join(runDir, `${kind}.json`), pointer);
  await removeUnreferenced(runDir);
  return dir;
}

function toWrite(tensors: HostTensor[]): TensorToWrite[] {
  return tensors.map((t) => ({ name: t.name, dtype: "F32", shape: t.shape, data: t.data }));
}

// The directory a pointer names, or null when the run has no such checkpoint yet.
export async function checkpointDir(runDir: string, kind: PointerKind): Promise<string | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(join(runDir, `${kind}.json`));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
  const pointer = JSON.parse(text) as Pointer;
  return join(runDir, pointer.dir);
}

export async function loadCheckpoint(dir: string): Promise<CheckpointContents> {
  const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
  const trainerState = JSON.parse(await Deno.readTextFile(join(dir, "trainer_state.json"))) as TrainerState;
  const model = await readAll(join(dir, "model.safetensors"));
  const optimizer = await readAll(join(dir, "optimizer.safetensors"));
  let tokenizer: CheckpointContents["tokenizer"] = null;
  try {
    const json = JSON.parse(await Deno.readTextFile(join(dir, "tokenizer.json")));
    const config = JSON.parse(await Deno.readTextFile(join(dir, "tokenizer_config.json")));
    tokenizer = { json, config };
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return { config, model, optimizer, trainerState, tokenizer };
}

async function readAll(path: string): Promise<HostTensor[]> {
  const checkpoint = await openCheckpoint(path);
  try {
    const out: HostTensor[] = [];
    for await (const { info, data } of checkpoint.iterateTensors()) {
      out.push({ name: info.name, shape: [...info.shape], data });
    }
    return out;
  } finally {
    checkpoint.close();
  }
}

async function removeUnreferenced(runDir: string): Promise<void> {
  const keep = new Set<string>();
  for (const kind of ["last", "best"] as const) {
    const dir = await checkpointDir(runDir, kind);
    if (dir) keep.add(dir);
  }
  const root = join(runDir, "checkpoints");
  for await (const entry of Deno.readDir(root)) {
    const path = join(root, entry.name);
    if (entry.isDirectory && !keep.has(path)) await Deno.remove(path, { recursive: true });
  }
}
