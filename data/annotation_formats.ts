// Parsers for the caption annotation files the trainer accepts. Each turns parsed JSON into
// records that name image files relative to some folder, and dataset.ts locates the files.

export type Split = "train" | "val" | "test";
export type AnnotationFormat = "coco" | "clipcap" | "karpathy" | "captions-mini";

/** One image before its file is located: `fileNames` are candidate paths, tried in order. */
export interface AnnotationRecord {
  imageId: string;
  fileNames: string[];
  captions: string[];
  split: Split;
}

/** Raised for annotation content that cannot be used, with a one-line message. */
export class DatasetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DatasetError";
  }
}

type Json = Record<string, unknown>;

const FORMAT_HELP = "expected COCO captions ({images, annotations}), a ClipCap list " +
  "([{image_id, caption}]), a Karpathy split file ({images: [{filename, sentences}]}) " +
  "or captions-mini ({images: [{id, file, split, captions}]})";

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Detects the format from the JSON shape alone and returns null when nothing matches. */
export function detectFormat(json: unknown): AnnotationFormat | null {
  if (Array.isArray(json)) {
    return json.length > 0 && isObject(json[0]) && "image_id" in json[0] && "caption" in json[0]
      ? "clipcap"
      : null;
  }
  if (!isObject(json) || !Array.isArray(json.images)) return null;
  if (Array.isArray(json.annotations)) return "coco";
  const first = json.images[0];
  if (!isObject(first)) return null;
  if ("sentences" in first && "filename" in first) return "karpathy";
  if ("captions" in first && "file" in first && "id" in first) return "captions-mini";
  return null;
}

/** Parses annotation JSON of any supported format. `file` only names the input in errors. */
export function parseAnnotations(
  json: unknown,
  file: string,
  defaultSplit: Split,
): { format: AnnotationFormat; records: AnnotationRecord[] } {
  const format = detectFormat(json);
  if (format === null) {
    throw new DatasetError(`unknown annotation format in ${file}: ${FORMAT_HELP}`);
  }
  const parse = {
    coco: parseCoco,
    clipcap: parseClipCap,
    karpathy: parseKarpathy,
    "captions-mini": parseCaptionsMini,
  }[format];
  return { format, records: parse(json, file, defaultSplit) };
}

function cleanCaption(value: unknown, imageId: string, where: string, file: string): string {
  if (typeof value !== "string") {
    throw new DatasetError(
      `caption for image id ${imageId} (${where}) in ${file} is ${
        JSON.stringify(value)
      }, not a string; fix the annotation`,
    );
  }
  const caption = value.trim();
  if (caption === "") {
    throw new DatasetError(
      `empty caption for image id ${imageId} (${where}) in ${file}; remove the annotation or fill in the caption`,
    );
  }
  return caption;
}

function requireField(entry: unknown, field: string, index: number, file: string): unknown {
  const value = isObject(entry) ? entry[field] : undefined;
  if (value === undefined || value === null) {
    throw new DatasetError(
      `entry ${index} in ${file} has no "${field}" field; fix or remove the entry`,
    );
  }
  return value;
}

function parseSplit(value: unknown, imageId: string, file: string): Split {
  if (value === "restval") return "train"; // Karpathy's extra val images are used for training.
  if (value === "train" || value === "val" || value === "test") return value;
  throw new DatasetError(
    `invalid split ${
      JSON.stringify(value)
    } for image id ${imageId} in ${file}; use train, val or test`,
  );
}

// COCO captions_*.json: {images: [{id, file_name}], annotations: [{id, image_id, caption}]}.
// Images without any caption are dropped because they carry no training signal.
function parseCoco(json: unknown, file: string, split: Split): AnnotationRecord[] {
  const { images, annotations } = json as { images: unknown[]; annotations: unknown[] };
  const byId = new Map<string, AnnotationRecord>();
  images.forEach((image, index) => {
    const imageId = String(requireField(image, "id", index, file));
    const fileName = String(requireField(image, "file_name", index, file));
    byId.set(imageId, { imageId, fileNames: [fileName], captions: [], split });
  });
  annotations.forEach((annotation, index) => {
    const imageId = String(requireField(annotation, "image_id", index, file));
    const record = byId.get(imageId);
    if (!record) {
      throw new DatasetError(
        `annotation ${index} in ${file} refers to image id ${imageId}, which "images" does not list; fix the annotation file`,
      );
    }
    const where = `annotation id ${(annotation as Json).id ?? `#${index}`}`;
    record.captions.push(cleanCaption((annotation as Json).caption, imageId, where, file));
  });
  return [...byId.values()].filter((record) => record.captions.length > 0);
}

// ClipCap's list [{image_id, caption}] names no files: the ids follow COCO's file naming.
function parseClipCap(json: unknown, file: string, split: Split): AnnotationRecord[] {
  const byId = new Map<string, AnnotationRecord>();
  (json as unknown[]).forEach((entry, index) => {
    const rawId = requireField(entry, "image_id", index, file);
    const imageId = String(rawId);
    let record = byId.get(imageId);
    if (!record) {
      record = { imageId, fileNames: cocoFileNames(rawId, imageId, file), captions: [], split };
      byId.set(imageId, record);
    }
    record.captions.push(cleanCaption((entry as Json).caption, imageId, `entry ${index}`, file));
  });
  return [...byId.values()];
}

/** COCO file names for a numeric image id: 2014 train and val names, then the 2017 name. */
export function cocoFileNames(rawId: unknown, imageId: string, file: string): string[] {
  const number = Number(rawId);
  if (!Number.isInteger(number) || number < 0) {
    throw new DatasetError(
      `image id ${imageId} in ${file} is not a COCO image number, so no file name can be derived; use COCO ids or the captions-mini format`,
    );
  }
  const padded = String(number).padStart(12, "0");
  return [`COCO_train2014_${padded}.jpg`, `COCO_val2014_${padded}.jpg`, `${padded}.jpg`];
}

// Karpathy's dataset_coco.json: {images: [{filepath, filename, split, cocoid, sentences}]}.
// dataset_flickr8k.json has no cocoid or filepath, so the file name is the id there.
function parseKarpathy(json: unknown, file: string): AnnotationRecord[] {
  return ((json as Json).images as unknown[]).map((image, index) => {
    const fileName = String(requireField(image, "filename", index, file));
    const entry = image as Json;
    const imageId = String(entry.cocoid ?? fileName);
    const folder = typeof entry.filepath === "string" ? entry.filepath : "";
    const sentences = requireField(image, "sentences", index, file);
    if (!Array.isArray(sentences)) {
      throw new DatasetError(
        `"sentences" of entry ${index} in ${file} is not a list; fix the entry`,
      );
    }
    const captions = sentences.map((sentence, number) =>
      cleanCaption(
        isObject(sentence) ? sentence.raw : undefined,
        imageId,
        `sentence ${number}`,
        file,
      )
    );
    const fileNames = folder ? [`${folder}/${fileName}`, fileName] : [fileName];
    return { imageId, fileNames, captions, split: parseSplit(entry.split, imageId, file) };
  });
}

// The shipped format {images: [{id, file, split, captions: [...]}]}, with each file path
// relative to the annotation file.
function parseCaptionsMini(json: unknown, file: string): AnnotationRecord[] {
  return ((json as Json).images as unknown[]).map((image, index) => {
    const imageId = String(requireField(image, "id", index, file));
    const captions = requireField(image, "captions", index, file);
    if (!Array.isArray(captions)) {
      throw new DatasetError(
        `"captions" of image id ${imageId} in ${file} is not a list; fix the entry`,
      );
    }
    return {
      imageId,
      fileNames: [String(requireField(image, "file", index, file))],
      captions: captions.map((caption, number) =>
        cleanCaption(caption, imageId, `caption ${number}`, file)
      ),
      split: parseSplit((image as Json).split, imageId, file),
    };
  });
}
