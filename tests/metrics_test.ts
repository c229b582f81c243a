// Caption metrics against reference values computed by pycocoevalcap (salaniz/pycocoevalcap
// ad63453), plus properties that hold by definition, the COCO file readers and the CLI.

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

import {
  CaptionDataError,
  formatMetricsTable,
  METRIC_NAMES,
  type MetricScores,
  parseCocoAnnotations,
  parseCocoResults,
  scoreCaptions,
} from "../metrics/mod.ts";

const FIXTURE_DIR = new URL("../../shared/metrics-fixtures/", import.meta.url);
const FIXTURE_FILES = ["tiny.json", "edge.json", "corpus.json"];

// Fixture values are float64 results of the Python scorers. This port follows their order of
// operations, so a relative difference above 1e-9 means a real disagreement.
const RELATIVE_TOLERANCE = 1e-9;
// Floor of the relative difference's denominator. Some expected values are exactly 0
// (ROUGE-L and CIDEr-D without a shared word), and there any deviation above 1e-39 fails.
// The smallest nonzero expected values (BLEU near 1e-16) are far above the floor, so they
// are checked at the full relative tolerance.
const DENOMINATOR_FLOOR = 1e-30;

interface FixtureImage {
  id: string;
  candidate: string;
  references: string[];
}

interface Fixture {
  images: FixtureImage[];
  expected: MetricScores & { per_image: Record<string, MetricScores> };
}

async function loadFixture(name: string): Promise<Fixture> {
  const url = new URL(name, FIXTURE_DIR);
  try {
    return JSON.parse(await Deno.readTextFile(url)) as Fixture;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      assert.fail(
        `metric fixture ${name} not found at ${fileURLToPath(url)}: the metric tests need ` +
          `the shared/metrics-fixtures folder checked out beside this repository`,
      );
    }
    throw error;
  }
}

function relativeDifference(actual: number, expected: number): number {
  return Math.abs(actual - expected) / Math.max(Math.abs(expected), DENOMINATOR_FLOOR);
}

for (const file of FIXTURE_FILES) {
  Deno.test(`metrics match pycocoevalcap on ${file}`, async () => {
    const fixture = await loadFixture(file);
    const candidates = new Map(fixture.images.map((image) => [image.id, image.candidate]));
    const references = new Map(fixture.images.map((image) => [image.id, image.references]));

    // The fixtures are already tokenized: score them as given, split on spaces.
    const scores = scoreCaptions(candidates, references, { tokenize: false });

    const checks: { label: string; actual: number; expected: number }[] = [];
    for (const name of METRIC_NAMES) {
      checks.push({
        label: `corpus ${name}`,
        actual: scores.corpus[name],
        expected: fixture.expected[name],
      });
    }
    assert.deepEqual(
      [...scores.perImage.keys()],
      Object.keys(fixture.expected.per_image),
      "per-image ids differ from the fixture's",
    );
    for (const image of fixture.images) {
      const actualScores = scores.perImage.get(image.id)!;
      for (const name of METRIC_NAMES) {
        checks.push({
          label: `image "${image.id}" ${name}`,
          actual: actualScores[name],
          expected: fixture.expected.per_image[image.id][name],
        });
      }
    }

    const maxDifference = Math.max(
      ...checks.map((check) => relativeDifference(check.actual, check.expected)),
    );
    console.log(`  ${file}: ${checks.length} values, max relative difference ${maxDifference}`);
    for (const { label, actual, expected } of checks) {
      const difference = relativeDifference(actual, expected);
      // Relative tolerance 1e-9, denominator floor 1e-30 (see the constants above).
      assert.ok(
        difference <= RELATIVE_TOLERANCE,
        `${file} ${label}: got ${actual}, expected ${expected} (relative difference ${difference})`,
      );
    }

    // Fixture captions are already in PTB-tokenized form, so tokenizing them again must not
    // change a single score.
    const retokenized = scoreCaptions(candidates, references, { tokenize: true });
    assert.deepEqual(retokenized.corpus, scores.corpus, "tokenize: true changed the scores");
  });
}

Deno.test("metrics exact match scores one", () => {
  const scores = scoreCaptions(
    {
      match: "a brown dog runs across the green grass",
      other: "two cats sleep on a red couch",
    },
    {
      match: ["a brown dog runs across the green grass"],
      other: ["a cat sleeping on a sofa", "two kittens on a couch"],
    },
    { tokenize: false },
  );
  const match = scores.perImage.get("match")!;
  for (const name of ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"] as const) {
    // The smoothing constants, (count + 1e-15) / (count + 1e-9) in every precision and in the
    // length ratio, leave BLEU of this 8-word match about 3e-10 below 1.
    assert.ok(Math.abs(match[name] - 1) < 1e-8, `${name} of an exact match is ${match[name]}`);
  }
  assert.equal(match["ROUGE-L"], 1);
  // With one reference equal to the candidate, every order's clipped cosine is 1 and the
  // length penalty is 1, so CIDEr-D is 10 up to rounding (tolerance 1e-12 absolute).
  assert.ok(Math.abs(match["CIDEr-D"] - 10) < 1e-12, `CIDEr-D is ${match["CIDEr-D"]}`);
});

Deno.test("metrics no shared word scores zero", () => {
  const scores = scoreCaptions(
    {
      bus: "two cats sleeping together",
      dog: "a dog on the grass",
    },
    {
      bus: ["a red bus parked on the street", "a double decker bus"],
      dog: ["a dog running on green grass"],
    },
    { tokenize: false },
  );
  const bus = scores.perImage.get("bus")!;
  assert.equal(bus["ROUGE-L"], 0);
  assert.equal(bus["CIDEr-D"], 0);
  // Smoothing makes BLEU tiny but positive instead of 0.
  assert.ok(bus["BLEU-1"] > 0, `BLEU-1 is ${bus["BLEU-1"]}`);
  assert.ok(bus["BLEU-1"] < 1e-15, `BLEU-1 is ${bus["BLEU-1"]}`);
});

Deno.test("metrics single image", () => {
  const scores = scoreCaptions(
    new Map([["only", "a man riding a wave on a surfboard"]]),
    new Map([["only", ["a surfer riding a large wave", "a man surfing a wave"]]]),
    { tokenize: false },
  );
  const only = scores.perImage.get("only")!;
  for (const name of METRIC_NAMES) {
    assert.equal(scores.corpus[name], only[name], `corpus ${name} differs from the only image's`);
  }
  // CIDEr-D's IDF is log(images) - log(df) and every reference n-gram has df = 1 = images.
  assert.equal(only["CIDEr-D"], 0);
  assert.ok(only["ROUGE-L"] > 0);
});

Deno.test("metrics reject empty references", () => {
  assert.throws(
    () => scoreCaptions({ cat: "a cat" }, { cat: [] }),
    (error: unknown) =>
      error instanceof CaptionDataError && error.message.includes('"cat"') &&
      error.message.includes("empty reference list"),
  );
});

Deno.test("metrics reject candidate without references", () => {
  assert.throws(
    () => scoreCaptions({ cat: "a cat", dog: "a dog" }, { cat: ["a cat"] }),
    (error: unknown) => error instanceof CaptionDataError && error.message.includes('"dog"'),
  );
});

Deno.test("metrics reject empty candidate set", () => {
  assert.throws(
    () => scoreCaptions(new Map(), new Map([["cat", ["a cat"]]])),
    CaptionDataError,
  );
});

Deno.test("metrics ignore references of unscored images", () => {
  const references = {
    dog: ["a dog on the grass", "a brown dog outside"],
    cat: ["a cat on a bed"],
    bus: ["a red bus on the street"],
  };
  const withExtra = scoreCaptions({ dog: "a dog outside", cat: "a cat" }, references);
  const withoutExtra = scoreCaptions(
    { dog: "a dog outside", cat: "a cat" },
    { dog: references.dog, cat: references.cat },
  );
  assert.deepEqual(withExtra.corpus, withoutExtra.corpus);
});

Deno.test("metrics tokenize raw captions", () => {
  const raw = scoreCaptions(
    { dog: "A Dog's toy, on the GRASS.", cat: "Two cats (sleeping)!" },
    { dog: ["The dog's red toy."], cat: ["Cats sleeping on a bed...", "Two cats."] },
  );
  const pretokenized = scoreCaptions(
    { dog: "a dog 's toy on the grass", cat: "two cats sleeping" },
    { dog: ["the dog 's red toy"], cat: ["cats sleeping on a bed", "two cats"] },
    { tokenize: false },
  );
  assert.deepEqual(raw.corpus, pretokenized.corpus);
});

Deno.test("metrics score empty candidate", () => {
  // A caption of only punctuation tokenizes to nothing; pycocoevalcap scores it 0 for
  // ROUGE-L and CIDEr-D and gives BLEU a zero brevity penalty.
  const scores = scoreCaptions(
    { empty: "...", dog: "a dog" },
    { empty: ["a cat on a bed"], dog: ["a dog on the grass"] },
  );
  const empty = scores.perImage.get("empty")!;
  for (const name of METRIC_NAMES) {
    assert.equal(empty[name], 0, `${name} of an empty candidate`);
  }
});

Deno.test("parseCocoResults reads captions", () => {
  const captions = parseCocoResults(
    [{ image_id: 42, caption: "a dog" }, { image_id: "7", caption: "a cat" }],
    "results.json",
  );
  assert.deepEqual([...captions], [["42", "a dog"], ["7", "a cat"]]);
});

Deno.test("parseCocoResults rejects bad input", () => {
  const cases: { json: unknown; message: RegExp }[] = [
    { json: { image_id: 1 }, message: /results\.json: expected a JSON array/ },
    { json: [], message: /results\.json: the results list is empty/ },
    { json: [{ image_id: 1 }], message: /entry 0: "caption" is missing/ },
    { json: [{ caption: "a" }], message: /entry 0: "image_id" is missing/ },
    {
      json: [{ image_id: 1, caption: "a" }, { image_id: 1, caption: "b" }],
      message: /image_id 1 appears in entries 0 and 1/,
    },
  ];
  for (const { json, message } of cases) {
    assert.throws(() => parseCocoResults(json, "results.json"), message);
  }
});

Deno.test("parseCocoAnnotations groups captions", () => {
  const { references, imageIds } = parseCocoAnnotations(
    {
      images: [{ id: 1 }, { id: 2 }, { id: 3 }],
      annotations: [
        { image_id: 1, id: 10, caption: "a dog" },
        { image_id: 2, id: 11, caption: "a cat" },
        { image_id: 1, id: 12, caption: "a brown dog" },
      ],
    },
    "captions.json",
  );
  assert.deepEqual([...references], [["1", ["a dog", "a brown dog"]], ["2", ["a cat"]]]);
  assert.deepEqual([...imageIds], ["1", "2", "3"]);
});

Deno.test("parseCocoAnnotations rejects bad input", () => {
  const cases: { json: unknown; message: RegExp }[] = [
    { json: [], message: /captions\.json: expected a COCO captions object/ },
    { json: { images: [] }, message: /"annotations" is missing/ },
    { json: { annotations: [] }, message: /"annotations" list is empty/ },
    { json: { annotations: [{ image_id: 1, caption: 3 }] }, message: /"caption" is a number/ },
  ];
  for (const { json, message } of cases) {
    assert.throws(() => parseCocoAnnotations(json, "captions.json"), message);
  }
});

Deno.test("formatMetricsTable lists every metric", () => {
  const scores = Object.fromEntries(METRIC_NAMES.map((name, i) => [name, i / 10])) as MetricScores;
  const table = formatMetricsTable(scores, "3 images");
  const lines = table.split("\n");
  assert.equal(lines[0], "3 images");
  assert.equal(lines.length, 2 + METRIC_NAMES.length);
  assert.match(table, /CIDEr-D\s+0\.5000/);
});

// The CLI tests run score.ts in a subprocess on small files in a temporary directory.

const SCORE_SCRIPT = fileURLToPath(new URL("../score.ts", import.meta.url));

async function runScore(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", SCORE_SCRIPT, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

async function writeCliFiles(directory: string): Promise<{ results: string; annotations: string }> {
  const results = `${directory}/results.json`;
  const annotations = `${directory}/captions.json`;
  await Deno.writeTextFile(
    results,
    JSON.stringify([
      { image_id: 1, caption: "A dog running on the grass." },
      { image_id: 2, caption: "A cat on a bed." },
    ]),
  );
  await Deno.writeTextFile(
    annotations,
    JSON.stringify({
      images: [{ id: 1 }, { id: 2 }],
      annotations: [
        { image_id: 1, id: 1, caption: "A dog runs across the grass." },
        { image_id: 1, id: 2, caption: "A brown dog playing outside." },
        { image_id: 2, id: 3, caption: "A cat sleeping on a bed." },
      ],
    }),
  );
  return { results, annotations };
}

Deno.test("score CLI prints table and writes JSON", async () => {
  const directory = await Deno.makeTempDir();
  try {
    const { results, annotations } = await writeCliFiles(directory);
    const jsonPath = `${directory}/scores.json`;
    const run = await runScore([results, annotations, "--json", jsonPath]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /2 images, PTB-style tokenization/);
    assert.match(run.stdout, /CIDEr-D\s+\d\.\d{4}/);

    const written = JSON.parse(await Deno.readTextFile(jsonPath));
    const expected = scoreCaptions(
      { "1": "A dog running on the grass.", "2": "A cat on a bed." },
      {
        "1": ["A dog runs across the grass.", "A brown dog playing outside."],
        "2": ["A cat sleeping on a bed."],
      },
    );
    assert.deepEqual(written.corpus, expected.corpus);
    assert.deepEqual(written.per_image["2"], expected.perImage.get("2"));
  } finally {
    await Deno.remove(directory, { recursive: true });
  }
});

Deno.test("score CLI reports input errors", async () => {
  const directory = await Deno.makeTempDir();
  try {
    const { results, annotations } = await writeCliFiles(directory);
    const invalid = `${directory}/invalid.json`;
    await Deno.writeTextFile(invalid, "[{");
    const unknownImage = `${directory}/unknown.json`;
    await Deno.writeTextFile(unknownImage, JSON.stringify([{ image_id: 9, caption: "a dog" }]));
    const empty = `${directory}/empty.json`;
    await Deno.writeTextFile(empty, "[]");

    const cases: { args: string[]; message: RegExp }[] = [
      { args: [`${directory}/missing.json`, annotations], message: /results file not found/ },
      { args: [invalid, annotations], message: /invalid\.json is not valid JSON/ },
      { args: [unknownImage, annotations], message: /image_id 9 is not in .*captions\.json/ },
      { args: [empty, annotations], message: /the results list is empty/ },
      { args: [results], message: /expected 2 arguments/ },
    ];
    for (const { args, message } of cases) {
      const run = await runScore(args);
      assert.notEqual(run.code, 0, `score ${args.join(" ")} exited with 0`);
      assert.match(run.stderr, message);
      assert.equal(run.stderr.trim().split("\n").length, 1, `not one line: ${run.stderr}`);
    }
  } finally {
    await Deno.remove(directory, { recursive: true });
  }
});

Deno.test("score CLI prints help", async () => {
  const run = await runScore(["--help"]);
  assert.equal(run.code, 0);
  assert.match(run.stdout, /^Usage: deno task score/);
});
