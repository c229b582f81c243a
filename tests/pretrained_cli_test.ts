// The pretrained path of the CLI: size S with --clip and --lm pointing at Hugging Face model
// directories (tiny ones made here), and the error when nothing is given, cached or reachable.

import { join } from "node:path";
import { writeSafetensors } from "../io/safetensors.ts";
import { randomNormal } from "../engine/init.ts";
import { assert } from "./testing.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const FIXTURES = join(ROOT, "tests", "fixtures", "hf");

async function run(script: string, args: string[], cwd: string, env: Record<string, string>) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", join(ROOT, script), ...args],
    cwd,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

// A GPT2LMHeadModel directory with random weights sized for the tiny BPE tokenizer (vocab 500).
async function writeTinyGpt2(dir: string): Promise<void> {
  const d = 32, vocab = 500, positions = 64, inner = 4 * d;
  const shapes: [string, number[]][] = [
    ["transformer.wte.weight", [vocab, d]],
    ["transformer.wpe.weight", [positions, d]],
    ["transformer.ln_f.weight", [d]],
    ["transformer.ln_f.bias", [d]],
  ];
  for (const [name, shape] of [
    ["ln_1.weight", [d]], ["ln_1.bias", [d]], ["attn.c_attn.weight", [d, 3 * d]], ["attn.c_attn.bias", [3 * d]],
    ["attn.c_proj.weight", [d, d]], ["attn.c_proj.bias", [d]], ["ln_2.weight", [d]], ["ln_2.bias", [d]],
    ["mlp.c_fc.weight", [d, inner]], ["mlp.c_fc.bias", [inner]], ["mlp.c_proj.weight", [inner, d]], ["mlp.c_proj.bias", [d]],
  ] as [string, number[]][]) shapes.push([`transformer.h.0.${name}`, shape]);
  await writeSafetensors(join(dir, "model.safetensors"), shapes.map(([name, shape], i) => ({
    name,
    dtype: "F32" as const,
    shape,
    data: name.endsWith("ln_1.weight") || name.endsWith("ln_2.weight") || name.endsWith("ln_f.weight")
      ? new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(1)
      : randomNormal(shape.reduce((a, b) => a * b, 1), 50 + i, 0.05),
  })));
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify({
    model_type: "gpt2", architectures: ["GPT2LMHeadModel"], vocab_size: vocab, n_positions: positions, n_embd: d,
    n_layer: 1, n_head: 2, n_inner: null, layer_norm_epsilon: 1e-5, activation_function: "gelu_new",
    bos_token_id: 0, eos_token_id: 0, tie_word_embeddings: true,
  }));
  await Deno.copyFile(join(FIXTURES, "tokenizer-bpe-tiny", "tokenizer.json"), join(dir, "tokenizer.json"));
}

Deno.test("size S trains and evaluates with --clip and --lm", async () => {
  const dir = await Deno.makeTempDir();
  const lmDir = join(dir, "lm");
  await Deno.mkdir(lmDir);
  await writeTinyGpt2(lmDir);
  const clipDir = join(FIXTURES, "clip-vision-224-tiny"); // a 224 px, patch 32 CLIP checkpoint
  const env = { HF_HOME: join(dir, "hf"), HF_HUB_OFFLINE: "1" };
  const common = ["-C", "pre", "-S", "s", "--clip", clipDir, "--lm", lmDir];

  const trained = await run("train.ts", [...common, "--epochs", "1", "--max-samples", "32", "--batch-size", "8"], dir, env);
  assert(trained.code === 0, `training failed:\n${trained.stderr}`);
  assert(trained.stdout.includes("epoch 1/1: train loss"), `no epoch line:\n${trained.stdout}`);
  const config = JSON.parse(await Deno.readTextFile(join(dir, "runs", "pre", "last.json")));
  const saved = JSON.parse(await Deno.readTextFile(join(dir, "runs", "pre", config.dir, "config.json")));
  assert(saved.lm.config.vocab_size === 500, `the saved config should carry the loaded LM's config: ${JSON.stringify(saved.lm.config)}`);

  const evaluated = await run("evaluate.ts", [...common, "--visualisations", "1"], dir, env);
  assert(evaluated.code === 0, `evaluation failed:\n${evaluated.stderr}`);
  assert(evaluated.stdout.includes("CIDEr-D"), `no metrics table:\n${evaluated.stdout}`);

  // The saved results re-score to the same numbers with deno task score.
  const evalDir = join(dir, "runs", "pre", "eval-test-greedy");
  const scores = JSON.parse(await Deno.readTextFile(join(evalDir, "scores.json")));
  const rescored = await run("score.ts", [join(evalDir, "results.json"), join(evalDir, "references.json"), "--json", join(dir, "rescored.json")], dir, env);
  assert(rescored.code === 0, `score failed:\n${rescored.stderr}`);
  const again = JSON.parse(await Deno.readTextFile(join(dir, "rescored.json")));
  for (const metric of ["BLEU-4", "ROUGE-L", "CIDEr-D"]) {
    // The same scorer on the same captions: identical float64 results.
    assert(again.corpus[metric] === scores.corpus[metric], `${metric}: ${again.corpus[metric]} vs ${scores.corpus[metric]}`);
  }
  const pngs = [...Deno.readDirSync(evalDir)].filter((e) => e.name.endsWith(".png"));
  assert(pngs.length === 1, `expected 1 visualisation, found ${pngs.length}`);
  await Deno.remove(dir, { recursive: true });
});

// A Qwen2ForCausalLM directory in bf16 with random weights for the tiny Qwen2-style tokenizer.
async function writeTinyQwen2(dir: string): Promise<void> {
  const d = 32, vocab = 500, inner = 48, heads = 4, kvHeads = 2, headDim = 8;
  const shapes: [string, number[]][] = [["model.embed_tokens.weight", [vocab, d]], ["model.norm.weight", [d]]];
  const layer: [string, number[]][] = [
    ["input_layernorm.weight", [d]], ["post_attention_layernorm.weight", [d]],
    ["self_attn.q_proj.weight", [heads * headDim, d]], ["self_attn.q_proj.bias", [heads * headDim]],
    ["self_attn.k_proj.weight", [kvHeads * headDim, d]], ["self_attn.k_proj.bias", [kvHeads * headDim]],
    ["self_attn.v_proj.weight", [kvHeads * headDim, d]], ["self_attn.v_proj.bias", [kvHeads * headDim]],
    ["self_attn.o_proj.weight", [d, heads * headDim]],
    ["mlp.gate_proj.weight", [inner, d]], ["mlp.up_proj.weight", [inner, d]], ["mlp.down_proj.weight", [d, inner]],
  ];
  for (const [name, shape] of layer) shapes.push([`model.layers.0.${name}`, shape]);
  await writeSafetensors(join(dir, "model.safetensors"), shapes.map(([name, shape], i) => {
    const size = shape.reduce((a, b) => a * b, 1);
    const values = name.endsWith("norm.weight") ? new Float32Array(size).fill(1) : randomNormal(size, 70 + i, 0.05);
    return { name, dtype: "BF16" as const, shape, data: values };
  }));
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify({
    model_type: "qwen2", architectures: ["Qwen2ForCausalLM"], vocab_size: vocab, hidden_size: d, intermediate_size: inner,
    num_hidden_layers: 1, num_attention_heads: heads, num_key_value_heads: kvHeads, max_position_embeddings: 64,
    rms_norm_eps: 1e-6, rope_parameters: { rope_theta: 10000, rope_type: "default" }, hidden_act: "silu",
    tie_word_embeddings: true, bos_token_id: 0, eos_token_id: 0,
  }));
  await Deno.copyFile(join(FIXTURES, "tokenizer-qwen2-tiny", "tokenizer.json"), join(dir, "tokenizer.json"));
}

Deno.test("size Q trains and evaluates with --clip and --lm", async () => {
  const dir = await Deno.makeTempDir();
  const lmDir = join(dir, "qwen");
  await Deno.mkdir(lmDir);
  await writeTinyQwen2(lmDir);
  const env = { HF_HOME: join(dir, "hf"), HF_HUB_OFFLINE: "1" };
  const common = ["-C", "q", "-S", "q", "--clip", join(FIXTURES, "clip-vision-224-tiny"), "--lm", lmDir];
  const trained = await run("train.ts", [...common, "--epochs", "1", "--max-samples", "32", "--batch-size", "8"], dir, env);
  assert(trained.code === 0, `training failed:\n${trained.stderr}`);
  assert(trained.stdout.includes("epoch 1/1: train loss"), `no epoch line:\n${trained.stdout}`);
  const evaluated = await run("evaluate.ts", [...common, "--visualisations", "0", "--beams", "2"], dir, env);
  assert(evaluated.code === 0, `evaluation failed:\n${evaluated.stderr}`);
  assert(evaluated.stdout.includes("beam search (2 beams)"), `the table should name the decoding mode:\n${evaluated.stdout}`);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("size S offline without weights lists what is needed", async () => {
  const dir = await Deno.makeTempDir();
  const r = await run("train.ts", ["-C", "x", "-S", "S"], dir, { HF_HOME: join(dir, "hf"), HF_HUB_OFFLINE: "1" });
  assert(r.code === 1, `exit code ${r.code}, expected 1`);
  // One error line per missing model, both reported by the same run.
  const lines = r.stderr.split("\n");
  const lm = lines.find((l) => l.startsWith("error: model gpt2 ")) ?? "";
  const clip = lines.find((l) => l.startsWith("error: model openai/clip-vit-base-patch32 ")) ?? "";
  assert(lm !== "", `the error should name the LM: ${r.stderr}`);
  assert(clip !== "", `the error should name the CLIP model too: ${r.stderr}`);
  assert(lm.includes("config.json"), `the error should list config.json: ${lm}`);
  assert(lm.includes("model.safetensors"), `the error should list model.safetensors: ${lm}`);
  assert(lm.includes("--lm"), `the error should name the --lm option: ${lm}`);
  assert(clip.includes("--clip"), `the error should name the --clip option: ${clip}`);
  assert(lm.includes(join(dir, "hf", "hub")), `the error should name the cache path: ${lm}`);
  await Deno.remove(dir, { recursive: true });
});
