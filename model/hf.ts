// Loading Hugging Face model directories (config.json + model.safetensors or shards):
// CLIPVisionModel, CLIPVisionModelWithProjection, the vision part of CLIPModel,
// GPT2LMHeadModel, Qwen2ForCausalLM and LlamaForCausalLM. Tensors stream one at a time from
// the checkpoint onto the GPU.

import { join } from "node:path";
import type { Module } from "../engine/nn.ts";
import { withoutInit } from "../engine/nn.ts";
import { openCheckpoint } from "../io/safetensors.ts";
import { uploadBf16, uploadBf16Bytes } from "../kernels/matmul_bf16.ts";
import { ClipVisionModel } from "./clip_vision.ts";
import type { ClipVisionConfig, Gpt2Config } from "./config.ts";
import { Gpt2Model } from "./gpt2.ts";
import { Qwen2Model, type Qwen2Config } from "./qwen2.ts";

export class ModelConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ModelConfigError";
  }
}

type Json = Record<string, unknown>;

export async function readConfig(dir: string): Promise<Json> {
  const path = join(dir, "config.json");
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) throw new ModelConfigError(`${path} not found: a Hugging Face model directory needs config.json`);
    throw error;
  }
  try {
    return JSON.parse(text) as Json;
  } catch (error) {
    throw new ModelConfigError(`${path} is not valid JSON (${(error as Error).message}); re-download it`);
  }
}

function field<T>(config: Json, name: string, source: string, fallback?: T): T {
  const value = config[name];
  if (value === undefined || value === null) {
    if (fallback !== undefined) return fallback;
    throw new ModelConfigError(`${source}: config.json has no "${name}"`);
  }
  return value as T;
}

// The vision configuration of a CLIP checkpoint: top level for clip_vision_model, nested under
// vision_config for the full CLIPModel (model_type "clip").
export function clipVisionConfigFromHf(config: Json, source: string): ClipVisionConfig {
  let vision = config;
  let projectionDim = config.projection_dim as number | undefined;
  if (config.model_type === "clip") {
    vision = field<Json>(config, "vision_config", source);
    projectionDim = (config.projection_dim as number | undefined) ?? (vision.projection_dim as number | undefined);
  } else if (config.model_type !== "clip_vision_model") {
    throw new ModelConfigError(`${source}: model_type "${config.model_type}" is not a CLIP model; expected "clip" or "clip_vision_model"`);
  }
  const act = field<string>(vision, "hidden_act", source, "quick_gelu");
  if (act !== "quick_gelu" && act !== "gelu") throw new ModelConfigError(`${source}: hidden_act "${act}" is not supported; use quick_gelu or gelu`);
  return {
    hidden_size: field(vision, "hidden_size", source),
    intermediate_size: field(vision, "intermediate_size", source),
    num_hidden_layers: field(vision, "num_hidden_layers", source),
    num_attention_heads: field(vision, "num_attention_heads", source),
    image_size: field(vision, "image_size", source),
    patch_size: field(vision, "patch_size", source),
    num_channels: field(vision, "num_channels", source, 3),
    layer_norm_eps: field(vision, "layer_norm_eps", source, 1e-5),
    hidden_act: act,
    projection_dim: projectionDim ?? 0,
  };
}

export function gpt2ConfigFromHf(config: Json, source: string): Gpt2Config {
  if (config.model_type !== "gpt2") throw new ModelConfigError(`${source}: model_type "${config.model_type}" is not GPT-2; expected "gpt2"`);
  const act = field<string>(config, "activation_function", source, "gelu_new");
  if (act !== "gelu_new") throw new ModelConfigError(`${source}: activation_function "${act}" is not supported; GPT-2 uses gelu_new`);
  if (config.tie_word_embeddings === false) {
    throw new ModelConfigError(`${source}: tie_word_embeddings is false, but GPT-2's lm_head is tied to wte; untied heads are not supported`);
  }
  const eos = field<number>(config, "eos_token_id", source, 50256);
  return {
    vocab_size: field(config, "vocab_size", source),
    n_positions: field(config, "n_positions", source),
    n_embd: field(config, "n_embd", source),
    n_layer: field(config, "n_layer", source),
    n_head: field(config, "n_head", source),
    n_inner: (config.n_inner as number | null | undefined) ?? null,
    layer_norm_epsilon: field(config, "layer_norm_epsilon", source, 1e-5),
    activation_function: "gelu_new",
    bos_token_id: field(config, "bos_token_id", source, eos),
    eos_token_id: eos,
  };
}

// Copies every parameter and bf16 weight of `module` from the checkpoint in `dir`. `keyFor`
// maps a parameter name to its candidate checkpoint keys. Tensors the model does not use (a CLIP
// text tower, GPT-2's attention-mask buffers) are ignored. A missing or misshapen one is an error.
export async function loadWeights(module: Module, dir: string, keyFor: (name: string) => string[]): Promise<void> {
  const checkpoint = await openCheckpoint(dir);
  try {
    for (const [name] of module.namedParameters()) {
      const keys = keyFor(name);
      const key = keys.find((k) => checkpoint.has(k));
      if (!key) {
        throw new ModelConfigError(`${dir}: checkpoint has no tensor "${keys[0]}"; it does not match its config.json or is incomplete`);
      }
      const info = checkpoint.info(key);
      module.loadParameter(name, await checkpoint.readTensor(key), info.shape, `${dir}: tensor "${key}"`);
    }
    for (const [name, slot] of module.namedBf16Weights()) {
      const keys = keyFor(name);
      const key = keys.find((k) => checkpoint.has(k));
      if (!key) throw new ModelConfigError(`${dir}: checkpoint has no tensor "${keys[0]}"; it does not match its config.json or is incomplete`);
      const info = checkpoint.info(key);
      if (info.shape.length !== 2 || info.shape[0] !== slot.rows || info.shape[1] !== slot.cols) {
        throw new ModelConfigError(`${dir}: tensor "${key}" has shape [${info.shape.join(", ")}], expected [${slot.rows}, ${slot.cols}]`);
      }
      // BF16 tensors go to the GPU byte for byte; others are rounded to bf16 once here.
      slot.weight = info.dtype === "BF16"
        ? uploadBf16Bytes(await checkpoint.readRaw(key), slot.rows, slot.cols)
        : uploadBf16(await checkpoint.readTensor(key), slot.rows, slot.cols);
    }
  } finally {
    checkpoint.close();
  }
}

export async function loadClipVision(dir: string): Promise<ClipVisionModel> {
  const raw = await readConfig(dir);
  const config = clipVisionConfigFromHf(raw, dir);
  const checkpoint = await openCheckpoint(dir);
  const withProjection = checkpoint.has("visual_projection.weight");
  checkpoint.close();
  if (withProjection && config.projection_dim === 0) throw new ModelConfigError(`${dir}: config.json has no projection_dim but the checkpoint has visual_projection.weight`);
  const model = withoutInit(() => new ClipVisionModel(config, 0, withProjection));
  await loadWeights(model, dir, (name) => [name]);
  model.setTrainable(false);
  model.eval();
  return model;
}

// GPT2LMHeadModel checkpoints name tensors "transformer.h.0...", while checkpoints saved from
// GPT2Model (such as the original gpt2 upload) drop the "transformer." prefix.
export function gpt2Keys(name: string): string[] {
  return [name, name.replace(/^transformer\./, "")];
}

export async function loadGpt2(dir: string): Promise<Gpt2Model> {
  const config = gpt2ConfigFromHf(await readConfig(dir), dir);
  const model = withoutInit(() => new Gpt2Model(config, 0));
  await loadWeights(model, dir, gpt2Keys);
  return model;
}

// Qwen2ForCausalLM and LlamaForCausalLM configs. transformers 5 writes rope_theta inside
// rope_parameters; older configs have it at the top level.
export function qwen2ConfigFromHf(config: Json, source: string): Qwen2Config {
  const type = config.model_type;
  if (type !== "qwen2" && type !== "llama") {
    throw new ModelConfigError(`${source}: model_type "${type}" is not Qwen2 or Llama; expected "qwen2" or "llama"`);
  }

  const act = field<string>(config, "hidden_act", source, "silu");
  if (act !== "silu") throw new ModelConfigError(`${source}: hidden_act "${act}" is not supported; Qwen2 and Llama use silu`);
  const rope = config.rope_parameters as { rope_theta?: number; rope_type?: string } | undefined;
  const ropeType = rope?.rope_type ?? (config.rope_scaling as { rope_type?: string } | null | undefined)?.rope_type ?? "default";
  if (ropeType !== "default") throw new ModelConfigError(`${source}: rope_type "${ropeType}" is not supported; only default RoPE is`);

  const heads = field<number>(config, "num_attention_heads", source);
  const hidden = field<number>(config, "hidden_size", source);
  const eos = config.eos_token_id;
  const eosId = Array.isArray(eos) ? eos[0] as number : eos as number | undefined;
  if (eosId === undefined || eosId === null) throw new ModelConfigError(`${source}: config.json has no eos_token_id`);

  return {
    model_type: type,
    vocab_size: field(config, "vocab_size", source),
    hidden_size: hidden,
    intermediate_size: field(config, "intermediate_size", source),
    num_hidden_layers: field(config, "num_hidden_layers", source),
    num_attention_heads: heads,
    num_key_value_heads: field(config, "num_key_value_heads", source, heads),
    head_dim: field(config, "head_dim", source, hidden / heads),
    max_position_embeddings: field(config, "max_position_embeddings", source),
    rms_norm_eps: field(config, "rms_norm_eps", source, 1e-6),
    rope_theta: rope?.rope_theta ?? field(config, "rope_theta", source, 10000),
    attention_bias: type === "qwen2" ? true : field(config, "attention_bias", source, false),
    tie_word_embeddings: field(config, "tie_word_embeddings", source, false),
    bos_token_id: field(config, "bos_token_id", source, eosId),
    eos_token_id: eosId,
  };
}

// `bf16Weights` keeps the projection and embedding weights as packed bf16 (for a frozen model).
export async function loadQwen2(dir: string, bf16Weights = false): Promise<Qwen2Model> {
  const config = qwen2ConfigFromHf(await readConfig(dir), dir);
  const model = withoutInit(() => new Qwen2Model(config, 0, bf16Weights));
  await loadWeights(model, dir, (name) => [name]);
  return model;
}
