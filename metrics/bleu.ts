// BLEU-1 to BLEU-4 as the COCO caption evaluation computes them (pycocoevalcap Bleu(4)).

/** Largest n-gram order, as in pycocoevalcap's Bleu(4). */
export const BLEU_MAX_ORDER = 4;

// pycocoevalcap adds these to the numerator and the denominator of every n-gram precision
// and of the length ratio, so a precision of zero gives a tiny positive score and not 0.
const TINY = 1e-15;
const SMALL = 1e-9;

/** BLEU-1 to BLEU-4 for a set of images, with BLEU-1 at index 0. */
export interface BleuScores {
  /** Corpus BLEU from n-gram counts and lengths summed over all images. */
  corpus: number[];
  /** Sentence-level BLEU of each image, in input order, each with its own brevity penalty. */
  perImage: number[][];
}

/**
 * Computes corpus and per-image BLEU-1 to BLEU-4 with the reference length option "closest":
 * for each image the reference length nearest to the candidate length, the shorter one on a
 * tie. Candidate n-gram counts are clipped by the maximum count in any one reference.
 *
 * `candidates[i]` is the token list of image i and `references[i]` its reference token lists.
 * Every image needs at least one reference.
 */
export function computeBleu(
  candidates: readonly (readonly string[])[],
  references: readonly (readonly (readonly string[])[])[],
): BleuScores {
  if (candidates.length !== references.length) {
    throw new RangeError(
      `got ${candidates.length} candidates but ${references.length} reference lists`,
    );
  }

  const totalCorrect = new Array<number>(BLEU_MAX_ORDER).fill(0);
  const totalGuess = new Array<number>(BLEU_MAX_ORDER).fill(0);
  let totalCandidateLength = 0;
  let totalReferenceLength = 0;
  const perImage: number[][] = [];

  for (let image = 0; image < candidates.length; image++) {
    const candidate = candidates[image];
    const imageReferences = references[image];
    if (imageReferences.length === 0) {
      throw new RangeError(`image at index ${image} has no references`);
    }

    const stats = matchNgrams(candidate, imageReferences);
    const referenceLength = closestReferenceLength(imageReferences, candidate.length);
    totalCandidateLength += candidate.length;
    totalReferenceLength += referenceLength;
    for (let k = 0; k < BLEU_MAX_ORDER; k++) {
      totalCorrect[k] += stats.correct[k];
      totalGuess[k] += stats.guess[k];
    }

    perImage.push(
      bleuFromCounts(stats.correct, stats.guess, candidate.length, referenceLength),
    );
  }

  const corpus = bleuFromCounts(
    totalCorrect,
    totalGuess,
    totalCandidateLength,
    totalReferenceLength,
  );
  return { corpus, perImage };
}

/**
 * Returns BLEU-1 to BLEU-4 from clipped matches and candidate n-gram totals. The order of
 * operations follows pycocoevalcap: a running product of the smoothed precisions, its
 * (k+1)-th root for BLEU-(k+1), then the brevity penalty exp(1 - 1/ratio) when the smoothed
 * length ratio is below 1.
 */
function bleuFromCounts(
  correct: readonly number[],
  guess: readonly number[],
  candidateLength: number,
  referenceLength: number,
): number[] {
  const scores: number[] = [];
  let precisionProduct = 1;
  for (let k = 0; k < BLEU_MAX_ORDER; k++) {
    precisionProduct *= (correct[k] + TINY) / (guess[k] + SMALL);
    scores.push(precisionProduct ** (1 / (k + 1)));
  }

  const lengthRatio = (candidateLength + TINY) / (referenceLength + SMALL);
  if (lengthRatio < 1) {
    const brevityPenalty = Math.exp(1 - 1 / lengthRatio);
    for (let k = 0; k < BLEU_MAX_ORDER; k++) scores[k] *= brevityPenalty;
  }
  return scores;
}

interface NgramMatches {
  /** Clipped candidate n-gram matches per order. */
  correct: number[];
  /** Candidate n-gram count per order: max(0, length - n + 1). */
  guess: number[];
}

function matchNgrams(
  candidate: readonly string[],
  references: readonly (readonly string[])[],
): NgramMatches {
  const maxReferenceCounts = new Map<string, number>();
  for (const reference of references) {
    for (const [ngram, count] of countNgrams(reference, BLEU_MAX_ORDER)) {
      const previous = maxReferenceCounts.get(ngram);
      if (previous === undefined || count > previous) maxReferenceCounts.set(ngram, count);
    }
  }

  const correct = new Array<number>(BLEU_MAX_ORDER).fill(0);
  const guess = new Array<number>(BLEU_MAX_ORDER);
  for (let k = 0; k < BLEU_MAX_ORDER; k++) guess[k] = Math.max(0, candidate.length - k);

  for (const [ngram, count] of countNgrams(candidate, BLEU_MAX_ORDER)) {
    const referenceCount = maxReferenceCounts.get(ngram);
    if (referenceCount === undefined) continue;
    correct[ngramOrder(ngram) - 1] += Math.min(count, referenceCount);
  }
  return { correct, guess };
}

/**
 * Counts the n-grams of orders 1 to `maxOrder` in one token list. Keys are the tokens joined
 * by single spaces, so the order of a key is its number of spaces plus one. Tokens must not
 * contain spaces, which is true of both the tokenizer output and whitespace-split text.
 * Map insertion order is order 1 before order 2 and so on, then by first position, the same
 * order in which pycocoevalcap fills its n-gram dictionaries.
 */
export function countNgrams(tokens: readonly string[], maxOrder: number): Map<string, number> {
  const counts = new Map<string, number>();
  for (let order = 1; order <= maxOrder; order++) {
    for (let start = 0; start + order <= tokens.length; start++) {
      let key = tokens[start];
      for (let offset = 1; offset < order; offset++) key += " " + tokens[start + offset];
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
  }
  return counts;
}

/** Returns the order (number of tokens) of an n-gram key built by countNgrams. */
export function ngramOrder(key: string): number {
  let order = 1;
  for (let i = 0; i < key.length; i++) {
    if (key.charCodeAt(i) === 32) order++;
  }
  return order;
}

/** Returns the reference length closest to the candidate length, the shorter one on a tie. */
function closestReferenceLength(
  references: readonly (readonly string[])[],
  candidateLength: number,
): number {
  let best = references[0].length;
  for (const reference of references) {
    const length = reference.length;
    const distance = Math.abs(length - candidateLength);
    const bestDistance = Math.abs(best - candidateLength);
    if (distance < bestDistance || (distance === bestDistance && length < best)) best = length;
  }
  return best;
}
