// Image-caption datasets: reads an annotation file in any supported format, locates every
// image file on disk, and serves items or flattened (image, caption) pairs per split.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import {
  type AnnotationFormat,
  type AnnotationRecord,
  DatasetError,
  parseAnnotations,
  type Split,
} from "./annotation_formats.ts";

export {
  type AnnotationFormat,
  DatasetError,
  detectFormat,
  type Split,
} from "./annotation_formats.ts";

/** The dataset shipped with the repository; see data/captions-mini/SOURCES.md. */
export const DEFAULT_DATA_DIR = fileURLToPath(new URL("./captions-mini/", import.meta.url));

// Folders under a COCO root where images usually sit, tried after the root itself.
const IMAGE_SUBFOLDERS = ["images", "train2014", "val2014", "train2017", "val2017"];

export interface DatasetItem {
  imageId: string;
  imagePath: string;
  captions: string[];
  split: Split;
}

export interface CaptionPair {
  imageId: string;
  imagePath: string;
  caption: string;
}

export interface LoadOptions {
  /** Folder to search for images instead of the annotation file's folder and its parent. */
  imageDir?: string;
  /** Split for formats that carry none (COCO, ClipCap). Default: from the file name, else train. */
  split?: Split;
}

export class ImageCaptionDataset {
  constructor(
    readonly items: readonly DatasetItem[],
    readonly format: AnnotationFormat,
    readonly annotationFile: string,
  ) {}

  /** Returns the items of one split, or all items. */
  itemsOf(split?: Split): DatasetItem[] {
    return this.items.filter((item) => split === undefined || item.split === split);
  }

  /** Returns one pair per caption in item order, so an image with five captions appears five times. */
  pairs(split?: Split): CaptionPair[] {
    return this.itemsOf(split).flatMap((item) =>
      item.captions.map((caption) => ({
        imageId: item.imageId,
        imagePath: item.imagePath,
        caption,
      }))
    );
  }

  /** Returns the captions of one split, or of every split. */
  captions(split?: Split): string[] {
    return this.itemsOf(split).flatMap((item) => item.captions);
  }
}

/**
 * Loads a dataset from an annotation file, or from a folder that contains captions.json.
 * Raises DatasetError (one line, naming the file and the fix) for unreadable or unknown
 * annotations, empty captions and image files that cannot be found.
 */
export function loadDataset(
  pathOrDir: string,
  options: LoadOptions = {},
): Promise<ImageCaptionDataset> {
  return Promise.resolve(loadDatasetSync(pathOrDir, options));
}

/** Loads data/captions-mini, the dataset used when no --data is given. */
export function loadDefaultDataset(): Promise<ImageCaptionDataset> {
  return loadDataset(DEFAULT_DATA_DIR);
}

function loadDatasetSync(pathOrDir: string, options: LoadOptions): ImageCaptionDataset {
  const file = annotationFileOf(resolve(pathOrDir));
  const { format, records } = parseAnnotations(
    readJson(file),
    file,
    options.split ?? splitFromName(file),
  );
  const searchDirs = imageSearchDirs(file, options.imageDir);
  const locator = new FileLocator();
  const items: DatasetItem[] = [];
  const missing: AnnotationRecord[] = [];
  for (const record of records) {
    const imagePath = locator.find(searchDirs, record.fileNames);
    if (imagePath === null) missing.push(record);
    else {items.push({
        imageId: record.imageId,
        imagePath,
        captions: record.captions,
        split: record.split,
      });}
  }
  if (missing.length > 0) throw missingImagesError(missing, searchDirs, file);
  return new ImageCaptionDataset(items, format, file);
}

function annotationFileOf(path: string): string {
  if (!existsSync(path)) {
    throw new DatasetError(
      `dataset path ${path} does not exist; pass a folder with captions.json or an annotation file to --data`,
    );
  }
  if (!statSync(path).isDirectory()) return path;
  const file = join(path, "captions.json");
  if (!existsSync(file)) {
    throw new DatasetError(
      `no captions.json in ${path}; pass the annotation file itself to --data (COCO captions_*.json, a ClipCap list or Karpathy dataset_*.json)`,
    );
  }
  return file;
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(readFileSync(file, "utf8"));
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new DatasetError(`failed to read annotation file ${file}: ${reason}`);
  }
}

function splitFromName(file: string): Split {
  const name = basename(file).toLowerCase();
  if (name.includes("test")) return "test";
  if (name.includes("val")) return "val";
  return "train";
}

function imageSearchDirs(annotationFile: string, imageDir?: string): string[] {
  const roots = imageDir
    ? [resolve(imageDir)]
    : [dirname(annotationFile), dirname(dirname(annotationFile))];
  const dirs = roots.flatMap((
    root,
  ) => [root, ...IMAGE_SUBFOLDERS.map((folder) => join(root, folder))]);
  return [...new Set(dirs)].filter(isDirectory);
}

function isDirectory(path: string): boolean {
  return existsSync(path) && statSync(path).isDirectory();
}

function missingImagesError(
  missing: AnnotationRecord[],
  searchDirs: string[],
  file: string,
): DatasetError {
  const [first] = missing;
  const others = missing.length > 1 ? ` (and ${missing.length - 1} more images)` : "";
  const dirs = searchDirs.length > 0 ? searchDirs.join(", ") : "(no existing folder)";
  return new DatasetError(
    `image file not found for image id ${first.imageId}${others}: tried ${
      first.fileNames.join(", ")
    } ` +
      `in ${dirs} (annotations: ${file}); put the images there or pass the dataset folder with --data`,
  );
}

/** Checks file existence through cached directory listings: one readdir per folder. */
class FileLocator {
  private listings = new Map<string, Set<string>>();

  find(dirs: string[], fileNames: string[]): string | null {
    for (const dir of dirs) {
      for (const name of fileNames) {
        const path = join(dir, name);
        if (this.listing(dirname(path)).has(basename(path))) return path;
      }
    }
    return null;
  }

  private listing(dir: string): Set<string> {
    let names = this.listings.get(dir);
    if (!names) {
      names = isDirectory(dir) ? new Set(readdirSync(dir)) : new Set();
      this.listings.set(dir, names);
    }
    return names;
  }
}
