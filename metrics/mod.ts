// Caption metrics: BLEU-1..4, ROUGE-L and CIDEr-D with the values of the COCO caption
// evaluation code (pycocoevalcap), plus readers for COCO result and annotation files.

import { computeBleu } from "./bleu.ts";
import { computeCiderD } from "./cider.ts";
import { computeRougeL } from "./rouge.ts";
import { splitTokens, tokenizeCaption } from "./tokenize.ts";

export { computeBleu } from "./bleu.ts";
export { computeCiderD } from "./cider.ts";
export { computeRougeL } from "./rouge.ts";
export { splitTokens, tokenizeCaption } from "./tokenize.ts";

/** Metric names, in the order tables and JSON output list them. */
export const METRIC_NAMES = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"] as const;

export type MetricName = typeof METRIC_NAMES[number];

/** One value per metric. */
export type MetricScores = Record<MetricName, number>;

/** Scores of a caption set. */
export interface CaptionScores {
  /**
   * Corpus scores: BLEU from n-gram counts summed over all images, ROUGE-L and CIDEr-D as
   * the mean of the per-image values.
   */
  corpus: MetricScores;
  /**
   * Per-image scores in the order of the candidates. Per-image BLEU is the sentence-level
   * score with its own brevity penalty, so the values do not average to the corpus BLEU.
   */
  perImage: Map<string, MetricScores>;
}

/** Options of scoreCaptions. */
export interface ScoreOptions {
  /**
   * Tokenize captions with tokenizeCaption before scoring (default true). Set it to false
   * for captions that are already tokenized: they are then split on runs of whitespace.
   */
  tokenize?: boolean;
}

/** Error for caption data that cannot be scored: the message names the value and the fix. */
export class CaptionDataError extends Error {
  override name = "CaptionDataError";
}

/**
 * Scores one candidate caption per image against that image's reference captions.
 *
 * Images are keyed by id. Only the images in `candidates` are scored, and CIDEr-D's
 * document frequencies come from their references alone, as in pycocoevalcap's COCOEvalCap.
 * References of other images are ignored.
 *
 * Throws CaptionDataError when `candidates` is empty, when a candidate image has no entry in
 * `references` or an empty reference list, or when a caption is not a string.
 */
export function scoreCaptions(
  candidates: Map<string, string> | Readonly<Record<string, string>>,
  references: Map<string, readonly string[]> | Readonly<Record<string, readonly string[]>>,
  options: ScoreOptions = {},
): CaptionScores {
  const candidateMap = candidates instanceof Map ? candidates : new Map(Object.entries(candidates));
  const referenceMap = references instanceof Map ? references : new Map(Object.entries(references));
  const toTokens = (options.tokenize ?? true) ? tokenizeCaption : splitTokens;

  if (candidateMap.size === 0) {
    throw new CaptionDataError("no candidate captions to score. Pass at least one image");
  }

  const imageIds: string[] = [];
  const candidateTokens: string[][] = [];
  const referenceTokens: string[][][] = [];
  for (const [imageId, caption] of candidateMap) {
    if (typeof caption !== "string") {
      throw new CaptionDataError(
        `candidate caption of image "${imageId}" is ${typeof caption}, expected a string`,
      );
    }
    const imageReferences = referenceMap.get(imageId);
    if (imageReferences === undefined) {
      throw new CaptionDataError(
        `image "${imageId}" has a candidate but no references. Add its reference captions ` +
          `or remove the candidate`,
      );
    }
    if (!Array.isArray(imageReferences)) {
      throw new CaptionDataError(
        `references of image "${imageId}" are ${typeof imageReferences}, expected an array ` +
          `of caption strings`,
      );
    }
    if (imageReferences.length === 0) {
      throw new CaptionDataError(
        `image "${imageId}" has an empty reference list, but every scored image needs at ` +
          `least one reference caption`,
      );
    }
    for (const reference of imageReferences) {
      if (typeof reference !== "string") {
        throw new CaptionDataError(
          `a reference caption of image "${imageId}" is ${typeof reference}, expected a string`,
        );
      }
    }

    imageIds.push(imageId);
    candidateTokens.push(toTokens(caption));
    referenceTokens.push(imageReferences.map(toTokens));
  }

  const bleu = computeBleu(candidateTokens, referenceTokens);
  const rouge = computeRougeL(candidateTokens, referenceTokens);
  const cider = computeCiderD(candidateTokens, referenceTokens);

  const perImage = new Map<string, MetricScores>();
  imageIds.forEach((imageId, index) => {
    perImage.set(imageId, {
      "BLEU-1": bleu.perImage[index][0],
      "BLEU-2": bleu.perImage[index][1],
      "BLEU-3": bleu.perImage[index][2],
      "BLEU-4": bleu.perImage[index][3],
      "ROUGE-L": rouge.perImage[index],
      "CIDEr-D": cider.perImage[index],
    });
  });

  const corpus: MetricScores = {
    "BLEU-1": bleu.corpus[0],
    "BLEU-2": bleu.corpus[1],
    "BLEU-3": bleu.corpus[2],
    "BLEU-4": bleu.corpus[3],
    "ROUGE-L": rouge.corpus,
    "CIDEr-D": cider.corpus,
  };
  return { corpus, perImage };
}

/**
 * Parses the contents of a COCO results file, a JSON array of {"image_id", "caption"}
 * objects, into a map from image id to caption. Image ids may be numbers or strings and are
 * keyed by their string form, so 42 and "42" name the same image.
 *
 * Throws CaptionDataError, naming `source` and the entry, when the value is not a non-empty
 * array of such objects or when an image id appears twice.
 */
export function parseCocoResults(json: unknown, source: string): Map<string, string> {
  if (!Array.isArray(json)) {
    throw new CaptionDataError(
      `${source}: expected a JSON array of {"image_id", "caption"} objects, ` +
        `got ${describeJson(json)}`,
    );
  }
  if (json.length === 0) {
    throw new CaptionDataError(
      `${source}: the results list is empty. Add one {"image_id", "caption"} object per image`,
    );
  }

  const captions = new Map<string, string>();
  const firstEntry = new Map<string, number>();
  json.forEach((entry: unknown, index: number) => {
    const { imageId, caption } = readCaptionEntry(entry, `${source}: entry ${index}`);
    const earlier = firstEntry.get(imageId);
    if (earlier !== undefined) {
      throw new CaptionDataError(
        `${source}: image_id ${imageId} appears in entries ${earlier} and ${index}. ` +
          `Keep one caption per image`,
      );
    }
    firstEntry.set(imageId, index);
    captions.set(imageId, caption);
  });
  return captions;
}

/** Reference captions of a COCO annotation file. */
export interface CocoReferences {
  /** Reference captions of each image id that has at least one annotation. */
  references: Map<string, string[]>;
  /** Ids listed under "images", or an empty set when the file has no "images" list. */
  imageIds: Set<string>;
}

/**
 * Parses the contents of a COCO captions annotation file,
 * {"images": [{"id", ...}], "annotations": [{"image_id", "caption", ...}]}, grouping the
 * captions by image id in file order. The "images" list is optional.
 *
 * Throws CaptionDataError, naming `source` and the entry, when "annotations" is missing or
 * empty, or when an entry lacks a numeric or string image_id or a string caption.
 */
export function parseCocoAnnotations(json: unknown, source: string): CocoReferences {
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new CaptionDataError(
      `${source}: expected a COCO captions object with an "annotations" array, ` +
        `got ${describeJson(json)}`,
    );
  }
  const { annotations, images } = json as { annotations?: unknown; images?: unknown };
  if (!Array.isArray(annotations)) {
    throw new CaptionDataError(
      `${source}: "annotations" is ${describeJson(annotations)}, expected an array of ` +
        `{"image_id", "caption"} objects, so this is not a COCO captions annotation file`,
    );
  }
  if (annotations.length === 0) {
    throw new CaptionDataError(
      `${source}: the "annotations" list is empty, so there are no reference captions`,
    );
  }

  const references = new Map<string, string[]>();
  annotations.forEach((entry: unknown, index: number) => {
    const { imageId, caption } = readCaptionEntry(entry, `${source}: annotations[${index}]`);
    const captions = references.get(imageId);
    if (captions === undefined) references.set(imageId, [caption]);
    else captions.push(caption);
  });

  const imageIds = new Set<string>();
  if (Array.isArray(images)) {
    images.forEach((image: unknown, index: number) => {
      const id = (image as { id?: unknown } | null)?.id;
      if (typeof id !== "number" && typeof id !== "string") {
        throw new CaptionDataError(
          `${source}: images[${index}].id is ${describeJson(id)}, expected a number or string`,
        );
      }
      imageIds.add(String(id));
    });
  }
  return { references, imageIds };
}

function readCaptionEntry(entry: unknown, where: string): { imageId: string; caption: string } {
  if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
    throw new CaptionDataError(
      `${where} is ${describeJson(entry)}, expected an object with "image_id" and "caption"`,
    );
  }
  const { image_id: imageId, caption } = entry as { image_id?: unknown; caption?: unknown };
  if (typeof imageId !== "number" && typeof imageId !== "string") {
    throw new CaptionDataError(
      `${where}: "image_id" is ${describeJson(imageId)}, expected a number or string`,
    );
  }
  if (typeof caption !== "string") {
    throw new CaptionDataError(
      `${where}: "caption" is ${describeJson(caption)}, expected a string`,
    );
  }
  return { imageId: String(imageId), caption };
}

function describeJson(value: unknown): string {
  if (value === undefined) return "missing";
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return `a ${typeof value}`;
}

/**
 * Reads and parses a JSON file. A missing, unreadable or invalid file raises CaptionDataError
 * with `role` ("results", "annotations") and the path in its message.
 */
export async function readJsonFile(path: string, role: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new CaptionDataError(`${role} file not found: ${path} (check the path)`);
    }
    if (error instanceof Deno.errors.IsADirectory) {
      throw new CaptionDataError(`${role} path ${path} is a directory, not a JSON file`);
    }
    throw new CaptionDataError(`cannot read ${role} file ${path}: ${(error as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new CaptionDataError(
      `${role} file ${path} is not valid JSON (${(error as Error).message}). Fix or regenerate it`,
    );
  }
}

/** Reads a COCO results file and parses it with parseCocoResults. */
export async function readCocoResults(path: string): Promise<Map<string, string>> {
  return parseCocoResults(await readJsonFile(path, "results"), path);
}

/** Reads a COCO captions annotation file and parses it with parseCocoAnnotations. */
export async function readCocoAnnotations(path: string): Promise<CocoReferences> {
  return parseCocoAnnotations(await readJsonFile(path, "annotations"), path);
}

/**
 * Formats corpus scores as a two-column console table, one metric per line, with 4 decimals.
 * `title`, when given, is the first line.
 */
export function formatMetricsTable(scores: MetricScores, title?: string): string {
  const nameWidth = Math.max("metric".length, ...METRIC_NAMES.map((name) => name.length));
  const lines: string[] = [];
  if (title !== undefined) lines.push(title);
  lines.push(`${"metric".padEnd(nameWidth)}  ${"score".padStart(8)}`);
  for (const name of METRIC_NAMES) {
    lines.push(`${name.padEnd(nameWidth)}  ${scores[name].toFixed(4).padStart(8)}`);
  }
  return lines.join("\n");
}
