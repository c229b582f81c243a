// The mapper equals PyTorch's nn.TransformerEncoder (post-norm, ReLU) followed by nn.Linear,
// forward and backward. Fixture: tests/fixtures/hf/mapper-tiny from
// tools/fixtures/make_mapper_fixture.py.

import { backward, noGrad } from "../engine/autograd.ts";
import { fromArray, type Tensor, tidy } from "../engine/tensor.ts";
import { openCheckpoint } from "../io/safetensors.ts";
import { loadWeights } from "../model/hf.ts";
import { Mapper } from "../model/mapper.ts";
import { assert, assertClose, gpuReady } from "./testing.ts";

await gpuReady();

const DIR = new URL("./fixtures/hf/mapper-tiny", import.meta.url).pathname;
const { config } = JSON.parse(await Deno.readTextFile(`${DIR}/reference.json`));
const ref = await openCheckpoint(`${DIR}/reference.safetensors`);
const B = 3;

async function loadMapper(): Promise<Mapper> {
  const mapper = new Mapper(config.clip_width, config.lm_width, {
    ep_len: config.ep_len,
    num_layers: config.num_layers,
    n_heads: config.n_heads,
    forward_expansion: config.forward_expansion,
    dropout: config.dropout,
  }, 0);
  await loadWeights(mapper, DIR, (name) => [name]);
  return mapper;
}

Deno.test("mapper matches torch TransformerEncoder", async () => {
  const mapper = await loadMapper();
  mapper.eval();
  const seed = fromArray(new Uint32Array([1]), [1], "u32");
  const input = fromArray(await ref.readTensor("img_emb"), [B, config.clip_width]);
  input.requiresGrad = true;
  const outputWeights = await ref.readTensor("output_weights"); // d loss / d prefix
  const grads: Record<string, Tensor> = {};
  const prefix = tidy(() => {
    const prefix = mapper.forward(input, seed);
    backward(prefix, fromArray(outputWeights, [...prefix.shape]));
    for (const [name, p] of mapper.namedParameters()) grads[name] = p.grad!.keep();
    grads.img_emb = input.grad!.keep();
    return prefix;
  });
  // Two post-norm layers in f32: observed differences are near 1e-6.
  assertClose(await prefix.toFloat32(), await ref.readTensor("prefix"), 1e-5, 1e-4, "prefix");
  assertClose(await grads.img_emb.toFloat32(), await ref.readTensor("grad.img_emb"), 1e-5, 1e-4, "d / d img_emb");
  for (const [name] of mapper.namedParameters()) {
    assertClose(await grads[name].toFloat32(), await ref.readTensor(`grad.${name}`), 1e-5, 1e-4, name);
  }
  for (const t of [prefix, input, seed, ...Object.values(grads)]) t.dispose();
  mapper.dispose();
});

Deno.test("mapper dropout only in training", async () => {
  const mapper = await loadMapper();
  const input = fromArray(await ref.readTensor("img_emb"), [B, config.clip_width]);
  const run = async (training: boolean, seedValue: number) => {
    mapper.train(training);
    const seed = fromArray(new Uint32Array([seedValue]), [1], "u32");
    const out = noGrad(() => tidy(() => mapper.forward(input, seed)));
    const values = await out.toFloat32();
    out.dispose();
    seed.dispose();
    return values;
  };
  const expected = await ref.readTensor("prefix");
  assertClose(await run(false, 1), expected, 1e-5, 1e-4, "eval ignores the seed");
  const a = await run(true, 1);
  const b = await run(true, 1);
  const c = await run(true, 2);
  assert(a.some((v, i) => Math.abs(v - expected[i]) > 1e-3), "training mode must apply dropout");
  assert(a.every((v, i) => v === b[i]), "the same seed must give the same dropout masks");
  assert(a.some((v, i) => v !== c[i]), "another seed must give other dropout masks");
  input.dispose();
  mapper.dispose();
});
