// Caption metrics benchmark: tokenization plus BLEU, ROUGE-L and CIDEr-D scoring of 5,000
// images with 5 references each, against a 10 s target.
// Run: deno run --allow-all bench/metrics_bench.ts

import { scoreCaptions } from "../metrics/mod.ts";
import { mulberry32 as seededRandom } from "../util/random.ts";

const IMAGE_COUNT = 5000;
const REFERENCES_PER_IMAGE = 5;
const TARGET_SECONDS = 10;
const SEED = 20240611;

export interface MetricsBenchResult {
  name: string;
  seconds: number;
  targetSeconds: number;
  /** seconds / targetSeconds: below 1 meets the target. */
  ratio: number;
  images: number;
  referencesPerImage: number;
}

/**
 * Builds the synthetic caption set, then times one scoreCaptions call with tokenization.
 * The function is async, although scoring is synchronous, so that benchmarks share one
 * signature.
 */
// deno-lint-ignore require-await
export async function benchMetrics(): Promise<MetricsBenchResult> {
  const { candidates, references } = buildCaptionSet(IMAGE_COUNT, REFERENCES_PER_IMAGE, SEED);

  const start = performance.now();
  const scores = scoreCaptions(candidates, references, { tokenize: true });
  const seconds = (performance.now() - start) / 1000;

  // Checking a score keeps the work observable. A NaN would mean broken input data.
  if (Number.isNaN(scores.corpus["CIDEr-D"])) throw new Error("benchmark produced NaN CIDEr-D");
  return {
    name: "metrics",
    seconds,
    targetSeconds: TARGET_SECONDS,
    ratio: seconds / TARGET_SECONDS,
    images: IMAGE_COUNT,
    referencesPerImage: REFERENCES_PER_IMAGE,
  };
}

// Frequent caption words first, so that Zipf-distributed sampling favours them the way
// real captions do.
const COMMON_WORDS = (
  "a the of on in with and is are an to at two sitting standing next near his her man woman " +
  "people person group dog cat table street white black red blue green large small young " +
  "holding riding playing top front water field grass room kitchen bathroom train bus car " +
  "plate food pizza bed couch tree sign building city road snow beach ocean wave surfboard " +
  "skateboard bike motorcycle horse elephant giraffe zebra bird sheep cow tennis ball frisbee " +
  "kite umbrella phone computer laptop desk window door clock wall floor sky cake sandwich " +
  "boy girl child children baby player shirt hat glasses bench park sidewalk parked down " +
  "across through over under behind inside outside walking running eating looking"
).split(" ");

const SYLLABLES = (
  "ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu " +
  "ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo vu"
).split(" ");

/** Returns about 3,000 distinct words: the common words, then made-up rarer ones. */
function buildVocabulary(random: () => number): string[] {
  const vocabulary = new Set(COMMON_WORDS);
  while (vocabulary.size < 3000) {
    const syllableCount = 2 + Math.floor(random() * 3);
    let word = "";
    for (let i = 0; i < syllableCount; i++) {
      word += SYLLABLES[Math.floor(random() * SYLLABLES.length)];
    }
    vocabulary.add(word);
  }
  return [...vocabulary];
}


/** Returns a sampler of word ranks with probability proportional to 1 / (rank + 1). */
function zipfSampler(size: number, random: () => number): () => number {
  const cumulative = new Float64Array(size);
  let total = 0;
  for (let rank = 0; rank < size; rank++) {
    total += 1 / (rank + 1);
    cumulative[rank] = total;
  }
  return () => {
    const target = random() * total;
    let low = 0;
    let high = size - 1;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (cumulative[middle] < target) low = middle + 1;
      else high = middle;
    }
    return low;
  };
}

/**
 * Builds raw captions, capitalized and ending in a period, 8 to 15 words each. The captions
 * of one image draw half their words from a shared set of 12 scene words, so candidates and
 * references overlap as real ones do.
 */
function buildCaptionSet(
  imageCount: number,
  referencesPerImage: number,
  seed: number,
): { candidates: Map<string, string>; references: Map<string, string[]> } {
  const random = seededRandom(seed);
  const vocabulary = buildVocabulary(random);
  const sampleRank = zipfSampler(vocabulary.length, random);

  const candidates = new Map<string, string>();
  const references = new Map<string, string[]>();
  for (let image = 0; image < imageCount; image++) {
    const sceneWords = Array.from({ length: 12 }, () => vocabulary[sampleRank()]);
    const makeCaption = (): string => {
      const length = 8 + Math.floor(random() * 8);
      const words: string[] = [];
      for (let i = 0; i < length; i++) {
        words.push(
          random() < 0.5
            ? sceneWords[Math.floor(random() * sceneWords.length)]
            : vocabulary[sampleRank()],
        );
      }
      words[0] = words[0][0].toUpperCase() + words[0].slice(1);
      return words.join(" ") + ".";
    };

    const imageId = String(image);
    candidates.set(imageId, makeCaption());
    references.set(imageId, Array.from({ length: referencesPerImage }, makeCaption));
  }
  return { candidates, references };
}

if (import.meta.main) {
  const result = await benchMetrics();
  console.log(
    `${result.name}: ${result.images} images x ${result.referencesPerImage} refs: ` +
      `${result.seconds.toFixed(2)} s (target ${result.targetSeconds} s, ` +
      `${result.ratio.toFixed(2)}x)`,
  );
}
