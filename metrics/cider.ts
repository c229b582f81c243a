// CIDEr-D as the COCO caption evaluation computes it (pycocoevalcap Cider).

import { countNgrams, ngramOrder } from "./bleu.ts";
import { meanOf } from "./rouge.ts";

/** Largest n-gram order of CIDEr-D. */
export const CIDER_MAX_ORDER = 4;
/** Standard deviation, in tokens, of the gaussian length penalty. */
export const CIDER_SIGMA = 6;

/** CIDEr-D for a set of images. */
export interface CiderScores {
  /** Mean of the per-image scores. */
  corpus: number;
  /** Score of each image, in input order. */
  perImage: number[];
}

/**
 * Computes CIDEr-D. Each caption becomes one TF-IDF vector per n-gram order 1 to 4, with raw
 * n-gram counts as TF and log(number of images) - log(max(1, df)) as IDF, where df counts
 * the images whose references contain the n-gram. The candidate is compared with each
 * reference by cosine similarity in which candidate weights are clipped to the reference's
 * (min(candidate, reference) * reference), times the length penalty
 * e^(-(delta^2) / (2 sigma^2)). Delta is the difference of the two captions' bigram counts,
 * as in pycocoevalcap, which is the difference of their lengths unless one is empty. The
 * image score is the mean over orders, divided by the number of references, times 10.
 *
 * Document frequencies come from the references of exactly these images, so a score depends
 * on the whole set. With a single image every IDF is 0 and so is every score.
 *
 * Every image needs at least one reference.
 */
export function computeCiderD(
  candidates: readonly (readonly string[])[],
  references: readonly (readonly (readonly string[])[])[],
): CiderScores {
  if (candidates.length !== references.length) {
    throw new RangeError(
      `got ${candidates.length} candidates but ${references.length} reference lists`,
    );
  }
  for (let image = 0; image < references.length; image++) {
    if (references[image].length === 0) {
      throw new RangeError(`image at index ${image} has no references`);
    }
  }

  const referenceCounts = references.map((imageReferences) =>
    imageReferences.map((reference) => countNgrams(reference, CIDER_MAX_ORDER))
  );
  const documentFrequency = countDocumentFrequency(referenceCounts);
  const logImageCount = Math.log(candidates.length);
  const idf = (ngram: string): number =>
    logImageCount - Math.log(Math.max(1, documentFrequency.get(ngram) ?? 0));

  const perImage: number[] = [];
  for (let image = 0; image < candidates.length; image++) {
    const candidateVector = tfidfVector(countNgrams(candidates[image], CIDER_MAX_ORDER), idf);
    const orderSums = new Float64Array(CIDER_MAX_ORDER);
    for (const counts of referenceCounts[image]) {
      const similarity = clippedSimilarity(candidateVector, tfidfVector(counts, idf));
      for (let n = 0; n < CIDER_MAX_ORDER; n++) orderSums[n] += similarity[n];
    }

    let orderTotal = 0;
    for (let n = 0; n < CIDER_MAX_ORDER; n++) orderTotal += orderSums[n];
    let score = orderTotal / CIDER_MAX_ORDER;
    score /= referenceCounts[image].length;
    score *= 10;
    perImage.push(score);
  }
  return { corpus: meanOf(perImage), perImage };
}

/** Counts, for each n-gram, the images in which at least one reference contains it. */
function countDocumentFrequency(
  referenceCounts: readonly (readonly Map<string, number>[])[],
): Map<string, number> {
  const documentFrequency = new Map<string, number>();
  for (const imageCounts of referenceCounts) {
    const seen = new Set<string>();
    for (const counts of imageCounts) {
      for (const ngram of counts.keys()) seen.add(ngram);
    }
    for (const ngram of seen) documentFrequency.set(ngram, (documentFrequency.get(ngram) ?? 0) + 1);
  }
  return documentFrequency;
}

interface TfidfVector {
  /** TF-IDF weight of each n-gram, one map per order, unigrams at index 0. */
  weights: Map<string, number>[];
  /** Euclidean norm of each order's weights. */
  norms: number[];
  /** Number of bigrams, which pycocoevalcap uses as the caption length. */
  length: number;
}

function tfidfVector(counts: Map<string, number>, idf: (ngram: string) => number): TfidfVector {
  const weights: Map<string, number>[] = [];
  const squaredNorms = new Array<number>(CIDER_MAX_ORDER).fill(0);
  for (let n = 0; n < CIDER_MAX_ORDER; n++) weights.push(new Map());
  let length = 0;

  for (const [ngram, termFrequency] of counts) {
    const n = ngramOrder(ngram) - 1;
    const weight = termFrequency * idf(ngram);
    weights[n].set(ngram, weight);
    squaredNorms[n] += weight * weight;
    if (n === 1) length += termFrequency;
  }
  return { weights, norms: squaredNorms.map(Math.sqrt), length };
}

/** Returns the clipped cosine similarity per order, times the gaussian length penalty. */
function clippedSimilarity(candidate: TfidfVector, reference: TfidfVector): number[] {
  const delta = candidate.length - reference.length;
  // pycocoevalcap raises numpy's e to a power instead of calling exp, so Math.E ** x does too.
  const lengthPenalty = Math.E ** (-(delta * delta) / (2 * CIDER_SIGMA * CIDER_SIGMA));
  const similarity: number[] = [];

  for (let n = 0; n < CIDER_MAX_ORDER; n++) {
    const referenceWeights = reference.weights[n];
    let dot = 0;
    for (const [ngram, candidateWeight] of candidate.weights[n]) {
      const referenceWeight = referenceWeights.get(ngram) ?? 0;
      dot += Math.min(candidateWeight, referenceWeight) * referenceWeight;
    }
    if (candidate.norms[n] !== 0 && reference.norms[n] !== 0) {
      dot /= candidate.norms[n] * reference.norms[n];
    }
    similarity.push(dot * lengthPenalty);
  }
  return similarity;
}
