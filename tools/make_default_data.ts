// Builds data/captions-mini/, the dataset train.ts uses when --data is not given, from a
// captions-mini source folder. It keeps only COCO images whose Flickr licence allows
// derivative works, because every image was resized and re-encoded before it reached us.
//
//   deno run --allow-read --allow-write tools/make_default_data.ts --source DIR [--out DIR]
//
// DIR must contain captions.json and images/. Rerunning with the same source rewrites the
// same files: entries keep the source order and captions.json is written with stable keys.
import { parseArgs } from "node:util";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { basename, join } from "node:path";

// Creative Commons 2.0 licences as COCO names them. The NoDerivs variants are left out.
const DERIVATIVES_ALLOWED = [
  "Attribution License",
  "Attribution-ShareAlike License",
  "Attribution-NonCommercial License",
  "Attribution-NonCommercial-ShareAlike License",
];

interface SourceEntry {
  id: number;
  file: string;
  source: string;
  split: string;
  captions: string[];
  image_license?: string;
  [field: string]: unknown;
}

function countBy(
  entries: SourceEntry[],
  key: (entry: SourceEntry) => string,
): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const entry of entries) counts[key(entry)] = (counts[key(entry)] ?? 0) + 1;
  return Object.fromEntries(Object.entries(counts).sort(([a], [b]) => a.localeCompare(b)));
}

function selectEntries(entries: SourceEntry[]): SourceEntry[] {
  return entries.filter((entry) =>
    entry.source.startsWith("coco") && DERIVATIVES_ALLOWED.includes(entry.image_license ?? "")
  );
}

function describe(selected: SourceEntry[]) {
  return {
    name: "captions-mini",
    description:
      "MS-COCO 2017 photos whose Flickr licence allows derivative works, with all their original " +
      "COCO reference captions. Provenance and licences: SOURCES.md.",
    selection: `COCO entries of the source set whose image_license is one of: ${
      DERIVATIVES_ALLOWED.join(", ")
    }.`,
    image_processing:
      "Done before selection: converted to RGB, resized with Lanczos so the shorter side is 256 px, " +
      "saved as baseline JPEG quality 90 without metadata.",
    counts: {
      total: selected.length,
      by_split: countBy(selected, (entry) => entry.split),
      by_license: countBy(selected, (entry) => entry.image_license ?? ""),
      by_source: countBy(selected, (entry) => entry.source),
      captions: selected.reduce((sum, entry) => sum + entry.captions.length, 0),
    },
  };
}

function main(): void {
  const { values } = parseArgs({
    options: { source: { type: "string" }, out: { type: "string", default: "data/captions-mini" } },
  });
  if (!values.source) {
    throw new Error("missing --source DIR (a captions-mini folder with captions.json)");
  }
  const source = JSON.parse(readFileSync(join(values.source, "captions.json"), "utf8"));
  const selected = selectEntries(source.images as SourceEntry[]);

  const imageDir = join(values.out, "images");
  if (existsSync(imageDir)) {
    for (const name of readdirSync(imageDir)) rmSync(join(imageDir, name));
  }
  mkdirSync(imageDir, { recursive: true });
  for (const entry of selected) {
    copyFileSync(join(values.source, entry.file), join(imageDir, basename(entry.file)));
  }

  const output = { info: describe(selected), images: selected };
  writeFileSync(join(values.out, "captions.json"), JSON.stringify(output, null, 2) + "\n");
  console.log(JSON.stringify(output.info.counts, null, 1));
}

main();
