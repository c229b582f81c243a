// ROUGE-L as the COCO caption evaluation computes it (pycocoevalcap Rouge).

/** Weight of recall against precision in the F-measure, as in pycocoevalcap. */
export const ROUGE_BETA = 1.2;

/** ROUGE-L for a set of images. */
export interface RougeScores {
  /** Mean of the per-image scores. */
  corpus: number;
  /** Score of each image, in input order. */
  perImage: number[];
}

/**
 * Computes ROUGE-L from the longest common subsequence (LCS) of the candidate with each
 * reference. Precision is LCS / candidate length and recall is LCS / reference length. As
 * in pycocoevalcap, the maximum precision and the maximum recall are taken over the
 * references separately, so they may come from different references. They are combined as
 * (1 + beta^2) P R / (R + beta^2 P). The score is 0 when either maximum is 0.
 *
 * Every image needs at least one reference.
 */
export function computeRougeL(
  candidates: readonly (readonly string[])[],
  references: readonly (readonly (readonly string[])[])[],
): RougeScores {
  if (candidates.length !== references.length) {
    throw new RangeError(
      `got ${candidates.length} candidates but ${references.length} reference lists`,
    );
  }

  const perImage: number[] = [];
  for (let image = 0; image < candidates.length; image++) {
    if (references[image].length === 0) {
      throw new RangeError(`image at index ${image} has no references`);
    }
    perImage.push(rougeLForImage(candidates[image], references[image]));
  }
  return { corpus: meanOf(perImage), perImage };
}

function rougeLForImage(
  candidate: readonly string[],
  references: readonly (readonly string[])[],
): number {
  const candidateTokens = asSpaceSplit(candidate);
  let maxPrecision = 0;
  let maxRecall = 0;
  for (const reference of references) {
    const referenceTokens = asSpaceSplit(reference);
    const lcs = longestCommonSubsequence(referenceTokens, candidateTokens);
    maxPrecision = Math.max(maxPrecision, lcs / candidateTokens.length);
    maxRecall = Math.max(maxRecall, lcs / referenceTokens.length);
  }

  if (maxPrecision === 0 || maxRecall === 0) return 0;
  const betaSquared = ROUGE_BETA ** 2;
  return ((1 + betaSquared) * maxPrecision * maxRecall) / (maxRecall + betaSquared * maxPrecision);
}

// pycocoevalcap's Rouge splits captions with str.split(" "), which turns an empty caption
// into one empty token. Doing the same keeps empty captions at the reference's values
// (length 1, so no division by zero) instead of producing NaN.
const EMPTY_CAPTION: readonly string[] = [""];

function asSpaceSplit(tokens: readonly string[]): readonly string[] {
  return tokens.length === 0 ? EMPTY_CAPTION : tokens;
}

/** Returns the length of the longest common subsequence of two token lists. */
export function longestCommonSubsequence(a: readonly string[], b: readonly string[]): number {
  // One row of the dynamic-programming table over `b`, updated in place for each token of
  // `a`. `diagonal` is the value above-left of the cell being written.
  const row = new Int32Array(b.length + 1);
  for (let i = 0; i < a.length; i++) {
    let diagonal = 0;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j];
      row[j] = a[i] === b[j - 1] ? diagonal + 1 : Math.max(above, row[j - 1]);
      diagonal = above;
    }
  }
  return row[b.length];
}

/**
 * Returns the arithmetic mean of `values`, summed pairwise in blocks of 8 as numpy's np.mean
 * sums float64 arrays. On a 60-image test set this reproduces pycocoevalcap's corpus ROUGE-L
 * and CIDEr-D bit for bit, where a plain running sum differs in the last bits.
 */
export function meanOf(values: readonly number[]): number {
  return pairwiseSum(values, 0, values.length) / values.length;
}

// numpy unrolls its pairwise summation by 8 and stops splitting below 128 elements.
const PAIRWISE_UNROLL = 8;
const PAIRWISE_BLOCK = 128;

function pairwiseSum(values: readonly number[], start: number, count: number): number {
  if (count < PAIRWISE_UNROLL) {
    let sum = 0;
    for (let i = 0; i < count; i++) sum += values[start + i];
    return sum;
  }
  if (count <= PAIRWISE_BLOCK) {
    const partial = new Float64Array(PAIRWISE_UNROLL);
    for (let j = 0; j < PAIRWISE_UNROLL; j++) partial[j] = values[start + j];
    let i = PAIRWISE_UNROLL;
    for (; i < count - (count % PAIRWISE_UNROLL); i += PAIRWISE_UNROLL) {
      for (let j = 0; j < PAIRWISE_UNROLL; j++) partial[j] += values[start + i + j];
    }
    let sum = ((partial[0] + partial[1]) + (partial[2] + partial[3])) +
      ((partial[4] + partial[5]) + (partial[6] + partial[7]));
    for (; i < count; i++) sum += values[start + i];
    return sum;
  }
  let half = Math.floor(count / 2);
  half -= half % PAIRWISE_UNROLL;
  return pairwiseSum(values, start, half) + pairwiseSum(values, start + half, count - half);
}
