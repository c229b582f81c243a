// CLIP vision checkpoints in the Hugging Face layout compute what transformers computes.
// Fixtures: tests/fixtures/hf/*, written by tools/fixtures/make_fixtures.py.

import { noGrad } from "../engine/autograd.ts";
import { tidy } from "../engine/tensor.ts";
import { openCheckpoint } from "../io/safetensors.ts";
import { loadClipVision } from "../model/hf.ts";
import { assert, assertClose, gpuReady } from "./testing.ts";

await gpuReady();

const FIXTURES = new URL("./fixtures/hf/", import.meta.url).pathname;

async function reference(dir: string) {
  const checkpoint = await openCheckpoint(`${FIXTURES}${dir}/reference.safetensors`);
  return {
    get: (name: string) => checkpoint.readTensor(name),
    close: () => checkpoint.close(),
  };
}

for (const [dir, prefix] of [["clip-vision-tiny", ""], ["clip-full-tiny", "vision."]] as const) {
  Deno.test(`clip ${dir} matches transformers`, async () => {
    const model = await loadClipVision(`${FIXTURES}${dir}`);
    const ref = await reference(dir);
    const pixels = await ref.get("pixel_values"); // (2, 3, 60, 60): a 5 x 5 grid of 12-pixel patches
    const out = noGrad(() => tidy(() => model.forward(pixels, 2)));
    // f32 on both sides over 2 layers of width 36: differences stay near 1e-6.
    assertClose(await out.lastHiddenState.toFloat32(), await ref.get(`${prefix}last_hidden_state`), 1e-4, 1e-4, "last_hidden_state");
    assertClose(await out.poolerOutput.toFloat32(), await ref.get(`${prefix}pooler_output`), 1e-4, 1e-4, "pooler_output");
    assert(out.imageEmbeds !== null, "the checkpoint has visual_projection, so image_embeds must be computed");
    assertClose(await out.imageEmbeds!.toFloat32(), await ref.get(`${prefix}image_embeds`), 1e-4, 1e-4, "image_embeds");
    for (const t of [out.lastHiddenState, out.poolerOutput, out.imageEmbeds!]) t.dispose();
    ref.close();
    model.dispose();
  });
}

Deno.test("clip checkpoint shape mismatch names the tensor", async () => {
  const dir = await Deno.makeTempDir();
  const source = `${FIXTURES}clip-vision-tiny`;
  await Deno.copyFile(`${source}/model.safetensors`, `${dir}/model.safetensors`);
  const config = JSON.parse(await Deno.readTextFile(`${source}/config.json`));
  config.intermediate_size = 60; // the checkpoint's fc1 has 52 rows
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
  let message = "";
  try {
    await loadClipVision(dir);
  } catch (error) {
    message = (error as Error).message;
  }
  assert(message.includes(`"vision_model.encoder.layers.0.mlp.fc1.bias"`) || message.includes(`"vision_model.encoder.layers.0.mlp.fc1.weight"`), `message: ${message}`);
  assert(message.includes("[52"), `message should give the found shape: ${message}`);
  assert(message.includes("expected [60"), `message should give the expected shape: ${message}`);
  await Deno.remove(dir, { recursive: true });
});
