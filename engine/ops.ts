// Differentiable ops: each runs its forward kernel and records how to compute the input
// gradients from the output gradient. Gradients for inputs that need none are not computed.

import { needsGrad, record } from "./autograd.ts";
import { empty, Tensor } from "./tensor.ts";
import { matmul } from "../kernels/matmul.ts";
import * as ew from "../kernels/elementwise.ts";
import { concatSeq as concatSeqKernel, copyBlock, prependRow as prependRowKernel, sliceSeq as sliceSeqKernel, unsliceSeq } from "../kernels/copy.ts";
import { sumRows } from "../kernels/reduce.ts";
import { layerNorm as layerNormKernel, layerNormBackward } from "../kernels/layernorm.ts";
import { embedding as embeddingKernel, embeddingBackward } from "../kernels/embedding.ts";
import { crossEntropy as crossEntropyKernel, crossEntropyBackward } from "../kernels/cross_entropy.ts";
import { dropout as dropoutKernel, dropoutBackward } from "../kernels/dropout.ts";
import { rmsNorm as rmsNormKernel, rmsNormBackward } from "../kernels/rmsnorm.ts";
import { rope as ropeKernel, ropeBackward, type RopeOptions } from "../kernels/rope.ts";
import { swiglu as swigluKernel, swigluBackward } from "../kernels/swiglu.ts";
import {
  type Bf16Weight,
  embeddingBf16 as embeddingBf16Kernel,
  matmulBf16Weight,
  matmulBf16WeightBackwardInput,
} from "../kernels/matmul_bf16.ts";
import {
  attention as attentionKernel,
  attentionBackward,
  attentionBackwardPacked,
  type AttentionOptions as KernelAttentionOptions,
  splitPackedQkv,
} from "../kernels/attention.ts";

function rows(t: Tensor): number {
  return t.size / t.shape[t.shape.length - 1];
}

// x @ W (+ b) over the last dimension of x. `layout` is how W is stored: "out_in" is
// PyTorch nn.Linear (out_features x in_features), and "in_out" is GPT-2's Conv1D.
export function linear(x: Tensor, weight: Tensor, bias: Tensor | null, layout: "out_in" | "in_out"): Tensor {
  const transB = layout === "out_in";
  const inFeatures = x.shape[x.shape.length - 1];
  const [wr, wc] = weight.shape;
  const outFeatures = transB ? wr : wc;
  if ((transB ? wc : wr) !== inFeatures) {
    throw new Error(`linear: input width ${inFeatures} does not match weight [${weight.shape}] (${layout})`);
  }
  const x2 = x.view([rows(x), inFeatures]);
  const y = matmul(x2, weight, { transB, bias }).view([...x.shape.slice(0, -1), outFeatures]);

  return record(y, bias ? [x, weight, bias] : [x, weight], (g) => {
    const g2 = g.view([rows(g), outFeatures]);
    // dx = g W (out_in) or g W^T (in_out)
    const dx = needsGrad(x) ? matmul(g2, weight, { transB: !transB }).view([...x.shape]) : null;
    // dW = g^T x (out_in, shape out x in) or x^T g (in_out, shape in x out)
    let dw: Tensor | null = null;
    if (weight.requiresGrad && transB) dw = matmul(g2, x2, { transA: true });
    else if (weight.requiresGrad) dw = matmul(x2, g2, { transA: true });
    const db = bias?.requiresGrad ? sumRows(g2) : null;
    return bias ? [dx, dw, db] : [dx, dw];
  });
}

// a + b, where b's shape is a trailing part of a's (bias, position embeddings) or equal to it.
export function add(a: Tensor, b: Tensor): Tensor {
  const y = ew.add(a, b);
  return record(y, [a, b], (g) => {
    // A broadcast b receives the gradient summed over the rows it was added to.
    let db: Tensor | null = null;
    if (needsGrad(b) && b.size === a.size) db = g;
    else if (needsGrad(b)) db = sumRows(g.view([a.size / b.size, b.size])).view([...b.shape]);
    return [g, db];
  });
}

export function scale(a: Tensor, alpha: number): Tensor {
  return record(ew.scale(a, alpha), [a], (g) => [ew.scale(g, alpha)]);
}

export function activation(kind: ew.Activation, x: Tensor): Tensor {
  return record(ew.activation(kind, x), [x], (g) => [ew.activationBackward(kind, x, g)]);
}

export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number): Tensor {
  const { y, mean, rstd } = layerNormKernel(x, weight, bias, { eps });
  return record(y, [x, weight, bias], (g) => {
    const needWeightGrad = weight.requiresGrad || bias.requiresGrad;
    const { dx, dWeight, dBias } = layerNormBackward(x, g, mean, rstd, weight, { needWeightGrad });
    return [dx, needWeightGrad ? dWeight : null, needWeightGrad ? dBias : null];
  });
}

export function reshape(x: Tensor, shape: number[]): Tensor {
  const y = x.view(shape);
  return record(y, [x], (g) => [g.view([...x.shape])]);
}

export function concatSeq(parts: Tensor[]): Tensor {
  const y = concatSeqKernel(parts);
  return record(y, parts, (g) => {
    let offset = 0;
    return parts.map((p) => {
      const length = p.shape[1];
      const grad = needsGrad(p) ? sliceSeqKernel(g, offset, length) : null;
      offset += length;
      return grad;
    });
  });
}

export function sliceSeq(x: Tensor, start: number, length: number): Tensor {
  const y = sliceSeqKernel(x, start, length);
  return record(y, [x], (g) => [unsliceSeq(g, x.shape[1], start)]);
}

// Puts `row` (D) in front of every sequence of x (B, T, D), like CLIP's class embedding.
export function prependRow(x: Tensor, row: Tensor): Tensor {
  const y = prependRowKernel(x, row);
  return record(y, [x, row], (g) => {
    const [B, T1, D] = g.shape;
    const dx = needsGrad(x) ? sliceSeqKernel(g, 1, T1 - 1) : null;
    let drow: Tensor | null = null;
    if (needsGrad(row)) {
      const first = empty([B, D]);
      copyBlock(g, first, { Z: B, R: 1, C: D, srcZ: T1 * D, srcR: D, dstZ: D, dstR: D });
      drow = sumRows(first).view([...row.shape]);
    }
    return [dx, drow];
  });
}

export function embedding(ids: Tensor, table: Tensor): Tensor {
  const y = embeddingKernel(ids, table);
  return record(y, [table], (g) => [embeddingBackward(ids, g, table.shape[0])]);
}

// Mean cross-entropy of raw logits (R, V) against labels (R); label -100 is ignored.
export function crossEntropy(logits: Tensor, labels: Tensor): Tensor {
  const { loss, count } = crossEntropyKernel(logits, labels);
  return record(loss, [logits], (g) => [crossEntropyBackward(logits, labels, g, { count })]);
}

// Inverted dropout with a mask hashed from (seed, salt, index); identity when not training.
export function dropout(x: Tensor, p: number, seed: Tensor, salt: number, training: boolean): Tensor {
  if (!training || p === 0) return x;
  const y = dropoutKernel(x, p, seed, salt);
  return record(y, [x], (g) => [dropoutBackward(g, p, seed, salt)]);
}

export type AttentionOptions = Omit<KernelAttentionOptions, "q" | "k" | "v">;

// Multi-head scaled dot-product attention over (B, T, H * Dh) q, k and v.
export function attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions): Tensor {
  const { out, probs } = attentionKernel({ q, k, v, ...options });
  return record(out, [q, k, v], (g) => {
    const { dq, dk, dv } = attentionBackward({ q, k, v, probs, dOut: g, ...options });
    return [dq, dk, dv];
  });
}

// Attention reading q, k and v from one fused (B, T, 3 * H * Dh) projection without copying.
// The gradient comes back in the same fused layout.
export function attentionPacked(qkv: Tensor, options: AttentionOptions): Tensor {
  const { q, k, v } = splitPackedQkv(qkv);
  const { out, probs } = attentionKernel({ q, k, v, ...options });
  return record(out, [qkv], (g) => [attentionBackwardPacked({ q, k, v, probs, dOut: g, ...options })]);
}

// Splits the last dimension into consecutive parts, e.g. GPT-2's fused q|k|v projection.
export function splitLast(x: Tensor, sizes: number[]): Tensor[] {
  const width = x.shape[x.shape.length - 1];
  if (sizes.reduce((a, b) => a + b, 0) !== width) throw new Error(`splitLast: parts ${sizes} do not sum to width ${width}`);
  const R = rows(x);
  let offset = 0;
  return sizes.map((size) => {
    const start = offset;
    offset += size;
    const part = empty([...x.shape.slice(0, -1), size]);
    copyBlock(x, part, { Z: 1, R, C: size, srcOffset: start, srcZ: 0, srcR: width, dstZ: 0, dstR: size });
    return record(part, [x], (g) => {
      const dx = ew.fillInto(empty(x.shape), 0);
      copyBlock(g, dx, { Z: 1, R, C: size, srcZ: 0, srcR: size, dstOffset: start, dstZ: 0, dstR: width });
      return [dx];
    });
  });
}

// RMSNorm over the last dimension (Qwen2, Llama): x * rsqrt(mean(x^2) + eps) * weight.
export function rmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  const { y, rstd } = rmsNormKernel(x, weight, { eps });
  return record(y, [x, weight], (g) => {
    const { dx, dWeight } = rmsNormBackward(x, g, rstd, weight, { needWeightGrad: weight.requiresGrad });
    return [dx, dWeight];
  });
}

// Rotary position embeddings in the Hugging Face half-split layout over (B, T, heads * headDim).
export function rope(x: Tensor, options: RopeOptions): Tensor {
  return record(ropeKernel(x, options), [x], (g) => [ropeBackward(g, options)]);
}

// silu(gate) * up, the SwiGLU MLP activation.
export function swiglu(gate: Tensor, up: Tensor): Tensor {
  return record(swigluKernel(gate, up), [gate, up], (g) => {
    const { dGate, dUp } = swigluBackward(gate, up, g);
    return [dGate, dUp];
  });
}

// x @ W^T (+ b) with W a frozen bf16 weight stored (out, in); only x (and b) get gradients.
export function linearBf16(x: Tensor, weight: Bf16Weight, bias: Tensor | null): Tensor {
  const inFeatures = x.shape[x.shape.length - 1];
  if (weight.cols !== inFeatures) throw new Error(`linearBf16: input width ${inFeatures} does not match weight ${weight.rows} x ${weight.cols}`);
  const x2 = x.view([rows(x), inFeatures]);
  const y = matmulBf16Weight(x2, weight, { transB: true, bias }).view([...x.shape.slice(0, -1), weight.rows]);
  return record(y, bias ? [x, bias] : [x], (g) => {
    const g2 = g.view([rows(g), weight.rows]);
    const dx = needsGrad(x) ? matmulBf16WeightBackwardInput(g2, weight, { transB: true }).view([...x.shape]) : null;
    const db = bias?.requiresGrad ? sumRows(g2) : null;
    return bias ? [dx, db] : [dx];
  });
}

// Rows of a frozen bf16 embedding table, as f32; the table gets no gradient.
export function embeddingBf16(ids: Tensor, table: Bf16Weight): Tensor {
  return embeddingBf16Kernel(ids, table);
}
