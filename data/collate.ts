// Turns (CLIP embedding, caption) samples into the padded arrays one training step uploads.
import type { Tokenizer } from "./tokenizer.ts";

export interface CaptionSample {
  embedding: Float32Array;
  caption: string;
}

export interface CollateOptions {
  /** Maximum caption length in tokens, EOS included. */
  maxLen: number;
  /** The padded length is rounded up to a multiple of this (default 8), but never past maxLen. */
  padMultiple?: number;
}

/** Row-major arrays for B samples padded to L tokens, with E-dimensional image embeddings. */
export interface CaptionBatch {
  /** B x E image embeddings. */
  imgEmb: Float32Array;
  /** B x L token ids; padding positions hold the tokenizer's padTokenId. */
  inputIds: Int32Array;
  /** B x L: 1 for caption tokens including EOS, 0 for padding. */
  attentionMask: Float32Array;
  /** Real tokens per sample, EOS included. */
  lengths: Int32Array;
  batchSize: number;
  seqLen: number;
  embedDim: number;
}

/** Returns caption token ids ending in EOS, cut to at most maxLen tokens with EOS kept. */
export function captionTokens(caption: string, tokenizer: Tokenizer, maxLen: number): number[] {
  const ids = tokenizer.encode(caption).slice(0, maxLen - 1);
  ids.push(tokenizer.eosTokenId);
  return ids;
}

/** Tokenizes, truncates and pads a batch. EOS is a real token (mask 1), so the model learns to stop. */
export function collate(
  samples: readonly CaptionSample[],
  tokenizer: Tokenizer,
  options: CollateOptions,
): CaptionBatch {
  const { maxLen, padMultiple = 8 } = options;
  if (samples.length === 0) {
    throw new RangeError("invalid batch: collate needs at least one sample");
  }
  if (!Number.isInteger(maxLen) || maxLen < 1) {
    throw new RangeError(`invalid maxLen ${maxLen}: use an integer >= 1`);
  }
  if (!Number.isInteger(padMultiple) || padMultiple < 1) {
    throw new RangeError(`invalid padMultiple ${padMultiple}: use an integer >= 1`);
  }

  const embedDim = samples[0].embedding.length;
  const tokens = samples.map((sample) => captionTokens(sample.caption, tokenizer, maxLen));
  const longest = Math.max(...tokens.map((ids) => ids.length));
  const seqLen = Math.min(maxLen, Math.ceil(longest / padMultiple) * padMultiple);
  const batchSize = samples.length;

  const imgEmb = new Float32Array(batchSize * embedDim);
  const inputIds = new Int32Array(batchSize * seqLen).fill(tokenizer.padTokenId);
  const attentionMask = new Float32Array(batchSize * seqLen);
  const lengths = new Int32Array(batchSize);
  samples.forEach((sample, row) => {
    if (sample.embedding.length !== embedDim) {
      throw new RangeError(
        `embedding size mismatch: sample ${row} has ${sample.embedding.length} values but sample 0 has ${embedDim}; embed all images with one model`,
      );
    }
    imgEmb.set(sample.embedding, row * embedDim);
    inputIds.set(tokens[row], row * seqLen);
    attentionMask.fill(1, row * seqLen, row * seqLen + tokens[row].length);
    lengths[row] = tokens[row].length;
  });
  return { imgEmb, inputIds, attentionMask, lengths, batchSize, seqLen, embedDim };
}
