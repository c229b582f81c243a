import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  DatasetError,
  detectFormat,
  ImageCaptionDataset,
  loadDataset,
  loadDefaultDataset,
} from "../data/dataset.ts";

const TINY_PNG = fileURLToPath(new URL("./fixtures/images/rgb.png", import.meta.url));

function withTempDir(run: (dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), "dataset-test-"));
    try {
      await run(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

function writeJson(path: string, value: unknown): string {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify(value));
  return path;
}

function addImage(path: string): string {
  mkdirSync(dirname(path), { recursive: true });
  copyFileSync(TINY_PNG, path);
  return path;
}

async function loadError(path: string): Promise<string> {
  try {
    await loadDataset(path);
  } catch (error) {
    assert.ok(error instanceof DatasetError, `expected DatasetError, got ${error}`);
    assert.ok(!error.message.includes("\n"), "message is one line");
    return error.message;
  }
  throw new assert.AssertionError({ message: "expected a DatasetError, but loading succeeded" });
}

Deno.test(
  "captions-mini format loads",
  withTempDir(async (dir) => {
    addImage(join(dir, "images", "a.png"));
    addImage(join(dir, "images", "b.png"));
    writeJson(join(dir, "captions.json"), {
      images: [
        { id: 1, file: "images/a.png", split: "train", captions: [" A cat. ", "A dog"], repo: "x" },
        { id: 2, file: "images/b.png", split: "test", captions: ["Two birds"] },
      ],
    });
    const dataset = await loadDataset(dir);
    assert.equal(dataset.format, "captions-mini");
    assert.deepEqual(dataset.items, [
      {
        imageId: "1",
        imagePath: join(dir, "images", "a.png"),
        captions: ["A cat.", "A dog"],
        split: "train",
      },
      {
        imageId: "2",
        imagePath: join(dir, "images", "b.png"),
        captions: ["Two birds"],
        split: "test",
      },
    ]);
    assert.deepEqual(dataset.pairs("train").map((pair) => pair.caption), ["A cat.", "A dog"]);
    assert.equal(dataset.pairs().length, 3);
    assert.deepEqual(dataset.itemsOf("val"), []);
  }),
);

Deno.test(
  "COCO format loads",
  withTempDir(async (dir) => {
    const file = writeJson(join(dir, "annotations", "captions_val2014.json"), {
      images: [
        { id: 42, file_name: "COCO_val2014_000000000042.jpg" },
        { id: 43, file_name: "COCO_val2014_000000000043.jpg" },
      ],
      annotations: [
        { id: 7, image_id: 42, caption: "A train at a station." },
        { id: 8, image_id: 42, caption: "A red train.\n" },
      ],
    });
    const image = addImage(join(dir, "val2014", "COCO_val2014_000000000042.jpg"));
    const dataset = await loadDataset(file);
    assert.equal(dataset.format, "coco");
    // Image 43 has no caption, so it is dropped and its missing file does not matter.
    assert.deepEqual(dataset.items, [
      {
        imageId: "42",
        imagePath: image,
        captions: ["A train at a station.", "A red train."],
        split: "val",
      },
    ]);
  }),
);

Deno.test(
  "COCO split option overrides file name",
  withTempDir(async (dir) => {
    const file = writeJson(join(dir, "captions_val2014.json"), {
      images: [{ id: 1, file_name: "x.png" }],
      annotations: [{ id: 1, image_id: 1, caption: "c" }],
    });
    addImage(join(dir, "images", "x.png"));
    const dataset = await loadDataset(file, { split: "train" });
    assert.equal(dataset.items[0].split, "train");
  }),
);

Deno.test(
  "ClipCap list resolves COCO file names",
  withTempDir(async (dir) => {
    const file = writeJson(join(dir, "annotations", "train_caption.json"), [
      { image_id: 9, caption: "first" },
      { image_id: "10", caption: "second" },
      { image_id: 9, caption: "third" },
      { image_id: 11, caption: "fourth" },
    ]);
    const train = addImage(join(dir, "train2014", "COCO_train2014_000000000009.jpg"));
    const val = addImage(join(dir, "val2014", "COCO_val2014_000000000010.jpg"));
    const plain = addImage(join(dir, "images", "000000000011.jpg"));
    const dataset = await loadDataset(file);
    assert.equal(dataset.format, "clipcap");
    assert.deepEqual(dataset.items.map((item) => [item.imageId, item.imagePath, item.captions]), [
      ["9", train, ["first", "third"]],
      ["10", val, ["second"]],
      ["11", plain, ["fourth"]],
    ]);
    assert.ok(dataset.items.every((item) => item.split === "train"));
  }),
);

Deno.test(
  "ClipCap imageDir option searched",
  withTempDir(async (dir) => {
    const file = writeJson(join(dir, "list.json"), [{ image_id: 5, caption: "x" }]);
    const image = addImage(join(dir, "elsewhere", "000000000005.jpg"));
    const dataset = await loadDataset(file, { imageDir: join(dir, "elsewhere") });
    assert.equal(dataset.items[0].imagePath, image);
  }),
);

Deno.test(
  "Karpathy format maps restval to train",
  withTempDir(async (dir) => {
    const sentences = (text: string) => [{ raw: text, tokens: text.split(" ") }];
    const file = writeJson(join(dir, "dataset_coco.json"), {
      images: [
        {
          filepath: "val2014",
          filename: "COCO_val2014_000000000001.jpg",
          split: "restval",
          cocoid: 1,
          sentences: sentences("a b"),
        },
        {
          filepath: "val2014",
          filename: "COCO_val2014_000000000002.jpg",
          split: "test",
          cocoid: 2,
          sentences: sentences("c d"),
        },
        {
          filepath: "train2014",
          filename: "COCO_train2014_000000000003.jpg",
          split: "train",
          cocoid: 3,
          sentences: sentences("e"),
        },
        {
          filepath: "val2014",
          filename: "COCO_val2014_000000000004.jpg",
          split: "val",
          cocoid: 4,
          sentences: sentences("f"),
        },
      ],
      dataset: "coco",
    });
    for (
      const [folder, name] of [["val2014", "1"], ["val2014", "2"], ["train2014", "3"], [
        "val2014",
        "4",
      ]]
    ) {
      const prefix = folder === "val2014" ? "COCO_val2014_" : "COCO_train2014_";
      addImage(join(dir, folder, `${prefix}${name.padStart(12, "0")}.jpg`));
    }
    const dataset = await loadDataset(file);
    assert.equal(dataset.format, "karpathy");
    assert.deepEqual(dataset.items.map((item) => [item.imageId, item.split]), [
      ["1", "train"],
      ["2", "test"],
      ["3", "train"],
      ["4", "val"],
    ]);
    assert.equal(dataset.items[0].imagePath, join(dir, "val2014", "COCO_val2014_000000000001.jpg"));
    assert.deepEqual(dataset.captions("train"), ["a b", "e"]);
  }),
);

Deno.test("detectFormat recognizes shapes", () => {
  assert.equal(detectFormat({ images: [], annotations: [] }), "coco");
  assert.equal(detectFormat([{ image_id: 1, caption: "x" }]), "clipcap");
  assert.equal(detectFormat({ images: [{ filename: "a", sentences: [] }] }), "karpathy");
  assert.equal(detectFormat({ images: [{ id: 1, file: "a", captions: [] }] }), "captions-mini");
  assert.equal(detectFormat({ data: [] }), null);
  assert.equal(detectFormat([1, 2]), null);
});

Deno.test(
  "unknown format error names file",
  withTempDir(async (dir) => {
    const file = writeJson(join(dir, "weird.json"), { data: [{ picture: "a.jpg" }] });
    const message = await loadError(file);
    assert.ok(
      message.startsWith(`unknown annotation format in ${file}: expected COCO captions`),
      message,
    );
  }),
);

Deno.test(
  "empty caption error names image and file",
  withTempDir(async (dir) => {
    const file = writeJson(join(dir, "captions_train2014.json"), {
      images: [{ id: 77, file_name: "a.png" }],
      annotations: [{ id: 5, image_id: 77, caption: "  " }],
    });
    assert.equal(
      await loadError(file),
      `empty caption for image id 77 (annotation id 5) in ${file}; remove the annotation or fill in the caption`,
    );
  }),
);

Deno.test(
  "missing image error names paths",
  withTempDir(async (dir) => {
    const file = writeJson(join(dir, "ann", "list.json"), [
      { image_id: 3, caption: "x" },
      { image_id: 4, caption: "y" },
    ]);
    const message = await loadError(file);
    assert.equal(
      message,
      `image file not found for image id 3 (and 1 more images): tried COCO_train2014_000000000003.jpg, ` +
        `COCO_val2014_000000000003.jpg, 000000000003.jpg in ${join(dir, "ann")}, ${dir} ` +
        `(annotations: ${file}); put the images there or pass the dataset folder with --data`,
    );
  }),
);

Deno.test(
  "folder without captions.json rejected",
  withTempDir(async (dir) => {
    const message = await loadError(dir);
    assert.ok(
      message.startsWith(`no captions.json in ${dir}; pass the annotation file itself to --data`),
      message,
    );
  }),
);

Deno.test(
  "invalid JSON error names file",
  withTempDir(async (dir) => {
    const file = join(dir, "captions.json");
    writeFileSync(file, "{ not json");
    const message = await loadError(dir);
    assert.ok(message.startsWith(`failed to read annotation file ${file}: `), message);
  }),
);

Deno.test("default dataset has 172 images", async () => {
  const dataset = await loadDefaultDataset();
  assert.ok(dataset instanceof ImageCaptionDataset);
  assert.equal(dataset.format, "captions-mini");
  assert.equal(dataset.items.length, 172);
  assert.equal(dataset.itemsOf("train").length, 129);
  assert.equal(dataset.itemsOf("val").length, 20);
  assert.equal(dataset.itemsOf("test").length, 23);
  assert.equal(dataset.pairs().length, 860);
  assert.ok(dataset.items.every((item) => existsSync(item.imagePath)), "every image file exists");
});
