// Command-line scorer: BLEU-1..4, ROUGE-L and CIDEr-D of a COCO results file against a COCO
// captions annotation file. Run it as `deno task score RESULTS.json ANNOTATIONS.json`.

import { parseArgs } from "node:util";

import {
  CaptionDataError,
  type CaptionScores,
  formatMetricsTable,
  readCocoAnnotations,
  readCocoResults,
  scoreCaptions,
} from "./metrics/mod.ts";

const USAGE = `Usage: deno task score [options] RESULTS.json ANNOTATIONS.json

Scores generated captions against reference captions with BLEU-1..4, ROUGE-L and
CIDEr-D, giving the values of the COCO caption evaluation code (pycocoevalcap).

Arguments:
  RESULTS.json      COCO results file: [{"image_id": 42, "caption": "a dog ..."}, ...]
  ANNOTATIONS.json  COCO captions annotation file with an "annotations" list of
                    {"image_id", "caption"} objects; only images in RESULTS.json are scored

Options:
  --json OUT        also write corpus and per-image scores to the file OUT as JSON
  --pretokenized    score captions as given, split on whitespace, without the
                    PTB-style tokenization (lowercasing, punctuation removal)
  -h, --help        print this help and exit`;

/** Runs the scorer with command-line arguments and returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        json: { type: "string" },
        pretokenized: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    console.error(
      `error: invalid arguments (${(error as Error).message}). Run with --help for usage.`,
    );
    return 2;
  }

  if (parsed.values.help) {
    console.log(USAGE);
    return 0;
  }
  if (parsed.positionals.length !== 2) {
    console.error(
      `error: expected 2 arguments, RESULTS.json and ANNOTATIONS.json, got ` +
        `${parsed.positionals.length}. Run with --help for usage.`,
    );
    return 2;
  }

  const [resultsPath, annotationsPath] = parsed.positionals;
  const tokenize = !parsed.values.pretokenized;
  try {
    const candidates = await readCocoResults(resultsPath);
    const { references, imageIds } = await readCocoAnnotations(annotationsPath);
    checkImagesHaveReferences(candidates, references, imageIds, resultsPath, annotationsPath);

    const scores = scoreCaptions(candidates, references, { tokenize });
    const tokenization = tokenize ? "PTB-style tokenization" : "pretokenized";
    console.log(formatMetricsTable(scores.corpus, `${candidates.size} images, ${tokenization}`));

    if (parsed.values.json !== undefined) {
      await writeScoresJson(parsed.values.json, scores, tokenize);
      console.log(`wrote corpus and per-image scores to ${parsed.values.json}`);
    }
  } catch (error) {
    if (error instanceof CaptionDataError) {
      console.error(`error: ${error.message}`);
      return 1;
    }
    throw error;
  }
  return 0;
}

function checkImagesHaveReferences(
  candidates: Map<string, string>,
  references: Map<string, string[]>,
  listedImageIds: Set<string>,
  resultsPath: string,
  annotationsPath: string,
): void {
  for (const imageId of candidates.keys()) {
    if (references.has(imageId)) continue;
    const reason = listedImageIds.has(imageId)
      ? `is listed under "images" in ${annotationsPath} but has no captions there`
      : `is not in ${annotationsPath}`;
    throw new CaptionDataError(
      `${resultsPath}: image_id ${imageId} ${reason}. ` +
        `Score results against the annotation file of the same split`,
    );
  }
}

async function writeScoresJson(
  path: string,
  scores: CaptionScores,
  tokenize: boolean,
): Promise<void> {
  const output = {
    images: scores.perImage.size,
    tokenize,
    corpus: scores.corpus,
    per_image: Object.fromEntries(scores.perImage),
  };
  try {
    await Deno.writeTextFile(path, JSON.stringify(output, null, 2) + "\n");
  } catch (error) {
    throw new CaptionDataError(
      `cannot write JSON output to ${path} (${(error as Error).message}). Check that the ` +
        `directory exists and is writable`,
    );
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
