// Model sizes. `S` and `L` take the reference ClipCap-with-transformer-mapper values; `T` is a
// tiny size that trains from random weights on a CPU WebGPU adapter in minutes.

export interface ClipVisionConfig {
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  image_size: number;
  patch_size: number;
  num_channels: number;
  layer_norm_eps: number;
  hidden_act: "quick_gelu" | "gelu";
  projection_dim: number;
}

export interface Gpt2Config {
  vocab_size: number;
  n_positions: number;
  n_embd: number;
  n_layer: number;
  n_head: number;
  n_inner: number | null; // null means 4 * n_embd
  layer_norm_epsilon: number;
  activation_function: "gelu_new";
  bos_token_id: number;
  eos_token_id: number;
}

// Qwen2ForCausalLM / LlamaForCausalLM configuration, in Hugging Face's field names.
export interface Qwen2Config {
  model_type: "qwen2" | "llama";
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  max_position_embeddings: number;
  rms_norm_eps: number;
  rope_theta: number;
  attention_bias: boolean; // biases on q, k and v projections
  tie_word_embeddings: boolean;
  bos_token_id: number;
  eos_token_id: number;
}

export type LmSpec =
  | { arch: "gpt2"; pretrained: string | null; config: Gpt2Config }
  | { arch: "qwen2"; pretrained: string | null; config: Qwen2Config };

export interface MapperConfig {
  ep_len: number; // prefix embeddings handed to the LM
  num_layers: number;
  n_heads: number;
  forward_expansion: number; // feed-forward width = forward_expansion * CLIP width
  dropout: number;
}

export interface TrainConfig {
  lr: number;
  batch_size: number;
  epochs: number;
  warmup_steps: number;
  weight_decay: number;
  max_grad_norm: number;
  max_len: number; // caption tokens including EOS
  train_lm: boolean; // a random LM must learn; a pretrained one stays frozen
  seed: number;
}

export interface SizeConfig {
  name: "S" | "L" | "T" | "Q" | "TQ";
  description: string;
  clip: { pretrained: string | null; config: ClipVisionConfig };
  lm: LmSpec;
  mapper: MapperConfig;
  train: TrainConfig;
}

const CLIP_B32: ClipVisionConfig = {
  hidden_size: 768,
  intermediate_size: 3072,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  image_size: 224,
  patch_size: 32,
  num_channels: 3,
  layer_norm_eps: 1e-5,
  hidden_act: "quick_gelu",
  projection_dim: 512,
};

const CLIP_L14: ClipVisionConfig = {
  ...CLIP_B32,
  hidden_size: 1024,
  intermediate_size: 4096,
  num_hidden_layers: 24,
  num_attention_heads: 16,
  patch_size: 14,
  projection_dim: 768,
};

const GPT2: Gpt2Config = {
  vocab_size: 50257,
  n_positions: 1024,
  n_embd: 768,
  n_layer: 12,
  n_head: 12,
  n_inner: null,
  layer_norm_epsilon: 1e-5,
  activation_function: "gelu_new",
  bos_token_id: 50256,
  eos_token_id: 50256,
};

const GPT2_MEDIUM: Gpt2Config = { ...GPT2, n_embd: 1024, n_layer: 24, n_head: 16 };

// Training settings of size S, which Q shares: only the mapper trains.
const S_TRAIN: TrainConfig = {
  lr: 3e-3,
  batch_size: 64,
  epochs: 150,
  warmup_steps: 6000,
  weight_decay: 0.01,
  max_grad_norm: 1.0,
  max_len: 40,
  train_lm: false,
  seed: 100,
};

// The random CLIP tower and training settings shared by the tiny sizes T and TQ.
const TINY_CLIP: ClipVisionConfig = {
  ...CLIP_B32,
  hidden_size: 96,
  intermediate_size: 384,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  projection_dim: 96,
};

// Validation loss bottoms out around epoch 7 on the shipped data, so 10 epochs keep the best
// checkpoint and stop before the model only memorises the 645 training captions.
const TINY_TRAIN: TrainConfig = {
  lr: 2e-3,
  batch_size: 32,
  epochs: 10,
  warmup_steps: 40,
  weight_decay: 0.01,
  max_grad_norm: 1.0,
  max_len: 24,
  train_lm: true,
  seed: 100,
};

// Qwen/Qwen2.5-0.5B's config.json values; a loaded checkpoint's own config replaces them.
const QWEN25_05B: Qwen2Config = {
  model_type: "qwen2",
  vocab_size: 151936,
  hidden_size: 896,
  intermediate_size: 4864,
  num_hidden_layers: 24,
  num_attention_heads: 14,
  num_key_value_heads: 2,
  head_dim: 64,
  max_position_embeddings: 32768,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000,
  attention_bias: true,
  tie_word_embeddings: true,
  bos_token_id: 151643,
  eos_token_id: 151643,
};

export const SIZES: Record<SizeConfig["name"], SizeConfig> = {
  S: {
    name: "S",
    description: "CLIP ViT-B/32 + GPT-2 (124M), pretrained and frozen; only the mapper trains",
    clip: { pretrained: "openai/clip-vit-base-patch32", config: CLIP_B32 },
    lm: { arch: "gpt2", pretrained: "gpt2", config: GPT2 },
    mapper: { ep_len: 4, num_layers: 6, n_heads: 16, forward_expansion: 4, dropout: 0.1 },
    train: S_TRAIN,
  },
  L: {
    name: "L",
    description: "CLIP ViT-L/14 + GPT-2 medium (355M), pretrained and frozen; only the mapper trains",
    clip: { pretrained: "openai/clip-vit-large-patch14", config: CLIP_L14 },
    lm: { arch: "gpt2", pretrained: "gpt2-medium", config: GPT2_MEDIUM },
    mapper: { ep_len: 4, num_layers: 5, n_heads: 16, forward_expansion: 4, dropout: 0.08 },
    train: {
      lr: 5e-3,
      batch_size: 32,
      epochs: 120,
      warmup_steps: 5000,
      weight_decay: 0.01,
      max_grad_norm: 1.0,
      max_len: 40,
      train_lm: false,
      seed: 100,
    },
  },
  T: {
    name: "T",
    description: "tiny CLIP-style ViT (patch 32) + tiny GPT-2, random weights from a fixed seed, " +
      "word-level vocabulary; for running the whole pipeline on a CPU adapter",
    clip: { pretrained: null, config: TINY_CLIP },
    lm: {
      arch: "gpt2",
      pretrained: null,
      // vocab_size and token ids are set from the word-level tokenizer built for the run.
      config: { ...GPT2, vocab_size: 0, n_positions: 64, n_embd: 128, n_layer: 2, n_head: 4, bos_token_id: 0, eos_token_id: 0 },
    },
    mapper: { ep_len: 4, num_layers: 2, n_heads: 4, forward_expansion: 4, dropout: 0.1 },
    train: TINY_TRAIN,
  },
  Q: {
    name: "Q",
    description: "CLIP ViT-B/32 + Qwen2.5-0.5B, pretrained and frozen (16-bit weights on the GPU); only the mapper trains",
    clip: { pretrained: "openai/clip-vit-base-patch32", config: CLIP_B32 },
    lm: { arch: "qwen2", pretrained: "Qwen/Qwen2.5-0.5B", config: QWEN25_05B },
    mapper: { ep_len: 4, num_layers: 6, n_heads: 16, forward_expansion: 4, dropout: 0.1 },
    train: S_TRAIN,
  },
  TQ: {
    name: "TQ",
    description: "size T with a tiny Qwen2-architecture LM (RMSNorm, RoPE, grouped-query attention, SwiGLU) " +
      "in place of GPT-2; for comparing the two architectures on the same data",
    clip: { pretrained: null, config: TINY_CLIP },
    lm: {
      arch: "qwen2",
      pretrained: null,
      // Same width, depth and query heads as T's GPT-2, with 2 KV heads. The SwiGLU width makes
      // the MLP as large as GPT-2's: 3 * 128 * 344 = 132,096 weights against 2 * 128 * 512 = 131,072.
      config: {
        model_type: "qwen2",
        vocab_size: 0,
        hidden_size: 128,
        intermediate_size: 344,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 32,
        max_position_embeddings: 64,
        rms_norm_eps: 1e-6,
        rope_theta: 10000,
        attention_bias: true,
        tie_word_embeddings: true,
        bos_token_id: 0,
        eos_token_id: 0,
      },
    },
    mapper: { ep_len: 4, num_layers: 2, n_heads: 4, forward_expansion: 4, dropout: 0.1 },
    train: TINY_TRAIN,
  },
};

export class UnknownSizeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UnknownSizeError";
  }
}

// Resolves a -S/--size value case-insensitively.
export function resolveSize(value: string): SizeConfig {
  const key = value.trim().toUpperCase();
  if (!(key in SIZES)) {
    throw new UnknownSizeError(`unknown size "${value}": use one of ${Object.keys(SIZES).join(", ")} (case-insensitive), e.g. -S T`);
  }
  return structuredClone(SIZES[key as SizeConfig["name"]]);
}
