// End-to-end checks of `train.ts` and `evaluate.ts` as a user runs them: argument errors,
// resuming, and a SIGKILL in the middle of a checkpoint save.

import { join } from "node:path";
import { assert } from "./testing.ts";

const ROOT = new URL("..", import.meta.url).pathname;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(script: string, args: string[], cwd: string, env: Record<string, string> = {}): Promise<Run> {
  const command = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", join(ROOT, script), ...args],
    cwd,
    env,
    stdout: "piped",
    stderr: "piped",
  });
  const out = await command.output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

// Three short epochs on 64 caption pairs: 2 steps each.
const QUICK = ["-S", "t", "--epochs", "3", "--max-samples", "64", "--log-every", "1"];

async function history(dir: string, name: string): Promise<{ epoch: number; trainLoss: number; valLoss: number }[]> {
  const pointer = JSON.parse(await Deno.readTextFile(join(dir, "runs", name, "last.json")));
  const state = JSON.parse(await Deno.readTextFile(join(dir, "runs", name, pointer.dir, "trainer_state.json")));
  return state.history;
}

Deno.test("train unknown size names the value", async () => {
  const dir = await Deno.makeTempDir();
  const r = await run("train.ts", ["-C", "x", "-S", "XL"], dir);
  assert(r.code === 1, `exit code ${r.code}, expected 1`);
  assert(r.stderr.includes(`unknown size "XL"`), `stderr: ${r.stderr}`);
  assert(r.stderr.includes("S, L, T, Q, TQ"), `the message should list the sizes: ${r.stderr}`);
  assert(r.stderr.trim().split("\n").filter((l) => l.startsWith("error:")).length === 1, "one error line");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train without adapter says how to get one", async () => {
  const dir = await Deno.makeTempDir();
  // DX12 does not exist on Linux or macOS, so asking Deno for it leaves no adapter.
  const r = await run("train.ts", ["-C", "x", "-S", "T"], dir, { DENO_WEBGPU_BACKEND: "dx12" });
  assert(r.code === 1, `exit code ${r.code}, expected 1`);
  assert(r.stderr.includes("No WebGPU adapter found"), `stderr: ${r.stderr}`);
  assert(r.stderr.includes("mesa-vulkan-drivers"), `the message should say how to get an adapter: ${r.stderr}`);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train refuses a run in use", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(join(dir, "runs", "busy"), { recursive: true });
  // This test process is alive, so its pid marks the run as taken.
  await Deno.writeTextFile(join(dir, "runs", "busy", ".lock"), String(Deno.pid));
  const r = await run("train.ts", ["-C", "busy", ...QUICK], dir);
  assert(r.code === 1, `exit code ${r.code}, expected 1`);
  assert(r.stderr.includes(`is being trained by process ${Deno.pid}`), `stderr: ${r.stderr}`);
  assert(await Deno.readTextFile(join(dir, "runs", "busy", ".lock")) === String(Deno.pid), "the other process's lock must stay");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train help and evaluate help", async () => {
  const dir = await Deno.makeTempDir();
  for (const script of ["train.ts", "evaluate.ts"]) {
    const r = await run(script, ["--help"], dir);
    assert(r.code === 0, `${script} --help exit code ${r.code}`);
    assert(r.stdout.includes("-C, --checkpoint-name"), `${script} help: ${r.stdout}`);
    assert(r.stdout.includes("-S, --size"), `${script} help: ${r.stdout}`);
  }
  await Deno.remove(dir, { recursive: true });
});

// Starts a training run that pauses in the middle of saving epoch `epoch`, and SIGKILLs it there.
async function killDuringSave(dir: string, name: string, epoch: number): Promise<void> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", join(ROOT, "train.ts"), "-C", name, ...QUICK],
    cwd: dir,
    env: { CLIP_CAPTIONER_TEST_PAUSE_SAVE: String(epoch) },
    stdout: "piped",
    stderr: "null",
  }).spawn();
  let seen = "";
  for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
    seen += chunk;
    if (seen.includes("checkpoint save paused")) break;
  }
  child.kill("SIGKILL");
  await child.status;
  assert(seen.includes("checkpoint save paused"), `training never reached the save of epoch ${epoch}:\n${seen}`);
}

function assertSameCurve(actual: { trainLoss: number; valLoss: number }[], expected: { trainLoss: number; valLoss: number }[]): void {
  assert(actual.length === expected.length, `${actual.length} epochs, expected ${expected.length}`);
  for (let i = 0; i < expected.length; i++) {
    // Kernels are deterministic and resume restores data order, dropout seeds and optimizer
    // state, so losses agree to float32 rounding of the JSON round trip (1e-6).
    assert(Math.abs(actual[i].trainLoss - expected[i].trainLoss) <= 1e-6, `epoch ${i + 1} train loss ${actual[i].trainLoss} vs ${expected[i].trainLoss}`);
    assert(Math.abs(actual[i].valLoss - expected[i].valLoss) <= 1e-6, `epoch ${i + 1} val loss ${actual[i].valLoss} vs ${expected[i].valLoss}`);
  }
}

Deno.test("train resume after SIGKILL during save", async () => {
  const dir = await Deno.makeTempDir();
  const straight = await run("train.ts", ["-C", "straight", ...QUICK], dir);
  assert(straight.code === 0, `uninterrupted run failed: ${straight.stderr}`);
  const expected = await history(dir, "straight");

  // Killed while epoch 2 is half saved: last.json still names the complete epoch-1 checkpoint.
  await killDuringSave(dir, "killed", 2);
  const before = await history(dir, "killed");
  assert(before.length === 1, `after the kill last.json must name epoch 1, found ${before.length} epochs`);
  const partial = [...Deno.readDirSync(join(dir, "runs", "killed", "checkpoints"))].map((e) => e.name);
  assert(partial.some((n) => n.startsWith("epoch-0002")), `the half-written epoch-2 directory should be left behind: ${partial}`);

  const resumed = await run("train.ts", ["-C", "killed", ...QUICK], dir);
  assert(resumed.code === 0, `resumed run failed: ${resumed.stderr}`);
  assert(resumed.stdout.includes("resuming"), `the second run did not resume:\n${resumed.stdout}`);
  assertSameCurve(await history(dir, "killed"), expected);
  const left = [...Deno.readDirSync(join(dir, "runs", "killed", "checkpoints"))].map((e) => e.name);
  assert(left.every((n) => !n.startsWith("epoch-0002")), `the partial directory should be removed after resuming: ${left}`);

  // Killed during the very first save: no pointer exists, so the next run starts afresh.
  await killDuringSave(dir, "first", 1);
  const pointer = await Deno.stat(join(dir, "runs", "first", "last.json")).then(() => true, () => false);
  assert(!pointer, "no last.json may exist before one save has completed");
  const fresh = await run("train.ts", ["-C", "first", ...QUICK], dir);
  assert(fresh.code === 0, `restarted run failed: ${fresh.stderr}`);
  assertSameCurve(await history(dir, "first"), expected);

  // Evaluating the run with another size is rejected naming both sizes.
  const wrong = await run("evaluate.ts", ["-C", "straight", "-S", "s"], dir);
  assert(wrong.code === 1, `evaluate with the wrong size exited ${wrong.code}`);
  assert(wrong.stderr.includes("trained with size T, not S"), `stderr: ${wrong.stderr}`);
  assert(wrong.stderr.includes("pass -S T"), `the message should name the fix: ${wrong.stderr}`);
  const wrongTrain = await run("train.ts", ["-C", "straight", "-S", "L"], dir);
  assert(wrongTrain.code === 1, `train with the wrong size exited ${wrongTrain.code}`);
  assert(wrongTrain.stderr.includes("trained with size T, not L"), `stderr: ${wrongTrain.stderr}`);
  await Deno.remove(dir, { recursive: true });
});
