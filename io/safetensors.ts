/**
 * Reader and writer for the safetensors checkpoint format.
 *
 * Layout of a file: an 8-byte little-endian unsigned header length N, then N bytes of UTF-8
 * JSON, then the data section. The JSON maps each tensor name to
 * `{dtype, shape, data_offsets: [begin, end]}`, where the offsets are byte positions relative to
 * the start of the data section, and may contain a `__metadata__` object of string values.
 * Tensor data is row-major and little-endian.
 *
 * Reading never loads the whole file. `SafetensorsFile.open` reads only the length prefix and
 * the header and validates every tensor entry against the file size. Each later read fetches
 * only the bytes of one tensor, or of a range of its rows, with positioned reads.
 */

import { dirname, isAbsolute, join } from "node:path";
import { withAtomicFile, writeAll } from "./atomic.ts";

/** Largest accepted JSON header, in bytes. Larger values mean a corrupt or foreign file. */
export const MAX_HEADER_BYTES = 100_000_000;

/** Element types defined by the safetensors format. */
export type Dtype =
  | "BOOL"
  | "U8"
  | "I8"
  | "F8_E4M3"
  | "F8_E5M2"
  | "I16"
  | "U16"
  | "F16"
  | "BF16"
  | "I32"
  | "U32"
  | "F32"
  | "I64"
  | "U64"
  | "F64";

/** Size of one element of each dtype, in bytes. */
export const DTYPE_BYTES: Readonly<Record<Dtype, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
};

const FLOAT_DTYPES: ReadonlySet<Dtype> = new Set(["F32", "F16", "BF16", "F64"]);

export function isDtype(value: unknown): value is Dtype {
  return typeof value === "string" && Object.hasOwn(DTYPE_BYTES, value);
}

/** Error for invalid safetensors files, index files and write requests. */
export class SafetensorsError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SafetensorsError";
  }
}

/** Location and type of one tensor inside a safetensors file. */
export interface TensorInfo {
  readonly name: string;
  readonly dtype: Dtype;
  readonly shape: readonly number[];
  readonly elementCount: number;
  readonly byteLength: number;
  /** `[begin, end)` byte offsets relative to the start of the data section, as in the header. */
  readonly dataOffsets: readonly [number, number];
  /** Absolute file position of the first byte of the tensor. */
  readonly filePosition: number;
}

/** Selects rows `[rowStart, rowEnd)` along the first dimension. Defaults to all rows. */
export interface RowRange {
  rowStart?: number;
  rowEnd?: number;
}

export interface ReadTensorOptions extends RowRange {
  /** Destination for the values. Must hold at least the selected element count. */
  out?: Float32Array;
}

export interface OpenOptions {
  /** Called before every file read with the absolute position and byte count. */
  onRead?: (position: number, length: number) => void;
  /** Overrides `MAX_HEADER_BYTES`. */
  maxHeaderBytes?: number;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// Typed-array views are host-endian and the format is little-endian, so every byte-level
// reinterpretation in this module assumes a little-endian host.
function requireLittleEndian(): void {
  if (!LITTLE_ENDIAN) {
    throw new SafetensorsError("safetensors I/O supports only little-endian hosts");
  }
}

/** Bytes read or converted per step, which bounds the scratch memory of one read. */
const CHUNK_BYTES = 16 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Half-precision conversion.
// ---------------------------------------------------------------------------------------------

/** Converts one float32 bit pattern to float16 bits, rounding to nearest, ties to even. */
function f32BitsToF16Bits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const magnitude = bits & 0x7fffffff;

  if (magnitude >= 0x7f800000) {
    if (magnitude === 0x7f800000) return sign | 0x7c00;
    // Keep the top 10 payload bits. A payload whose top bits are all zero would turn into
    // infinity, so it gets the quiet bit instead.
    const payload = (magnitude >>> 13) & 0x3ff;
    return sign | 0x7c00 | (payload === 0 ? 0x200 : payload);
  }
  // 65520 is halfway between the largest finite half (65504) and the next step. The tie rounds
  // to the even neighbour, which is infinity, so everything from 65520 up overflows.
  if (magnitude >= 0x477ff000) return sign | 0x7c00;

  if (magnitude < 0x38800000) {
    // Below the smallest normal half (2^-14): the result is a subnormal in units of 2^-24.
    // Values up to 2^-25 round to zero, the tie at exactly 2^-25 included.
    if (magnitude <= 0x33000000) return sign;
    const exponent = magnitude >>> 23;
    const mantissa = (magnitude & 0x7fffff) | 0x800000;
    const shift = 126 - exponent;
    let result = mantissa >>> shift;
    const remainder = mantissa & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (remainder > half || (remainder === half && (result & 1) === 1)) result += 1;
    return sign | result;
  }

  // Normal range: rebias the exponent from 127 to 15 and drop 13 mantissa bits. A carry out of
  // the mantissa correctly increments the exponent.
  let result = (magnitude - 0x38000000) >>> 13;
  const remainder = magnitude & 0x1fff;
  if (remainder > 0x1000 || (remainder === 0x1000 && (result & 1) === 1)) result += 1;
  return sign | result;
}

/** Converts float16 bits to float32 bits exactly, keeping NaN payloads. */
function f16BitsToF32Bits(half: number): number {
  const sign = (half & 0x8000) << 16;
  const exponent = (half >>> 10) & 0x1f;
  let mantissa = half & 0x3ff;

  if (exponent === 0x1f) return (sign | 0x7f800000 | (mantissa << 13)) >>> 0;
  if (exponent !== 0) return (sign | ((exponent + 112) << 23) | (mantissa << 13)) >>> 0;
  if (mantissa === 0) return sign >>> 0;

  // Subnormal half: shift the mantissa up until its leading one becomes the implicit bit.
  let normalizedExponent = 1;
  while ((mantissa & 0x400) === 0) {
    mantissa <<= 1;
    normalizedExponent -= 1;
  }
  return (sign | ((normalizedExponent + 112) << 23) | ((mantissa & 0x3ff) << 13)) >>> 0;
}

let f16ToF32BitsTable: Uint32Array | null = null;

function f16Table(): Uint32Array {
  if (f16ToF32BitsTable === null) {
    f16ToF32BitsTable = new Uint32Array(65536);
    for (let half = 0; half < 65536; half++) f16ToF32BitsTable[half] = f16BitsToF32Bits(half);
  }
  return f16ToF32BitsTable;
}

function checkOutputLength(what: string, required: number, available: number): void {
  if (available < required) {
    throw new RangeError(
      `${what}: output has room for ${available} elements but ${required} are required`,
    );
  }
}

/** Converts float32 values to float16 bit patterns, rounding to nearest, ties to even. */
export function f32ToF16(
  source: Float32Array,
  out: Uint16Array = new Uint16Array(source.length),
): Uint16Array {
  checkOutputLength("f32ToF16", source.length, out.length);
  const bits = new Uint32Array(source.buffer, source.byteOffset, source.length);
  for (let i = 0; i < bits.length; i++) out[i] = f32BitsToF16Bits(bits[i]);
  return out;
}

/** Converts float16 bit patterns to float32 values. The conversion is exact. */
export function f16ToF32(
  source: Uint16Array,
  out: Float32Array = new Float32Array(source.length),
): Float32Array {
  checkOutputLength("f16ToF32", source.length, out.length);
  const table = f16Table();
  // Writing bit patterns through an integer view keeps NaN payloads intact.
  const outBits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < source.length; i++) outBits[i] = table[source[i]];
  return out;
}

/** Converts float32 values to bfloat16 bit patterns, rounding to nearest, ties to even. */
export function f32ToBf16(
  source: Float32Array,
  out: Uint16Array = new Uint16Array(source.length),
): Uint16Array {
  checkOutputLength("f32ToBf16", source.length, out.length);
  const bits = new Uint32Array(source.buffer, source.byteOffset, source.length);
  for (let i = 0; i < bits.length; i++) {
    const value = bits[i];
    if ((value & 0x7fffffff) > 0x7f800000) {
      // Rounding a NaN could carry it into infinity, so NaNs are truncated. A payload that lived
      // only in the dropped bits gets the quiet bit, so the result stays NaN.
      const truncated = value >>> 16;
      out[i] = (truncated & 0x7f) === 0 ? truncated | 0x40 : truncated;
    } else {
      out[i] = (value + 0x7fff + ((value >>> 16) & 1)) >>> 16;
    }
  }
  return out;
}

/** Converts bfloat16 bit patterns to float32 values. The conversion is exact. */
export function bf16ToF32(
  source: Uint16Array,
  out: Float32Array = new Float32Array(source.length),
): Float32Array {
  checkOutputLength("bf16ToF32", source.length, out.length);
  const outBits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < source.length; i++) outBits[i] = source[i] << 16;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Header parsing and validation.
// ---------------------------------------------------------------------------------------------

const CORRUPT_ADVICE = "the file is truncated or corrupt, re-download it";
const FOREIGN_ADVICE = "the file is not a safetensors file or it is corrupt";

function describeJsonValue(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return `a ${typeof value}`;
}

function formatShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

function isNonNegativeSafeInteger(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

interface ParsedHeader {
  metadata: Record<string, string>;
  tensors: TensorInfo[];
}

/**
 * Parses and validates a header. `dataStart` is the absolute position of the data section and
 * `fileSize` the size of the whole file. Every tensor must lie inside the data section, match its
 * shape and dtype in size, and not overlap another tensor.
 */
function parseHeader(
  path: string,
  headerBytes: Uint8Array,
  dataStart: number,
  fileSize: number,
): ParsedHeader {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
  } catch {
    throw new SafetensorsError(`${path}: header is not valid UTF-8; ${FOREIGN_ADVICE}`);
  }

  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new SafetensorsError(`${path}: header is not valid JSON (${reason}); ${FOREIGN_ADVICE}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new SafetensorsError(
      `${path}: header must be a JSON object but is ${
        describeJsonValue(parsed)
      }; ${FOREIGN_ADVICE}`,
    );
  }

  const entries = parsed as Record<string, unknown>;
  const metadata = parseMetadata(path, entries["__metadata__"]);
  const dataByteLength = fileSize - dataStart;
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(entries)) {
    if (name === "__metadata__") continue;
    tensors.push(parseTensorEntry(path, name, entry, dataStart, dataByteLength, fileSize));
  }

  tensors.sort((a, b) =>
    a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]
  );
  checkNoOverlap(path, tensors);
  return { metadata, tensors };
}

function parseMetadata(path: string, value: unknown): Record<string, string> {
  if (value === undefined) return {};
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new SafetensorsError(
      `${path}: "__metadata__" must be an object of strings but is ${describeJsonValue(value)}`,
    );
  }
  const metadata: Record<string, string> = {};
  for (const [key, item] of Object.entries(value)) {
    if (typeof item !== "string") {
      throw new SafetensorsError(
        `${path}: "__metadata__" value for key "${key}" must be a string but is ` +
          describeJsonValue(item),
      );
    }
    metadata[key] = item;
  }
  return metadata;
}

function parseTensorEntry(
  path: string,
  name: string,
  entry: unknown,
  dataStart: number,
  dataByteLength: number,
  fileSize: number,
): TensorInfo {
  const where = `${path}: tensor "${name}"`;
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
    throw new SafetensorsError(
      `${where} must be an object with dtype, shape and data_offsets but is ` +
        describeJsonValue(entry),
    );
  }
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;

  if (!isDtype(dtype)) {
    throw new SafetensorsError(
      `${where} has unknown dtype ${JSON.stringify(dtype)}; supported dtypes are ` +
        Object.keys(DTYPE_BYTES).join(", "),
    );
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegativeSafeInteger)) {
    throw new SafetensorsError(
      `${where} has invalid shape ${JSON.stringify(shape)}; expected an array of ` +
        `non-negative integers`,
    );
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeSafeInteger)
  ) {
    throw new SafetensorsError(
      `${where} has invalid data_offsets ${JSON.stringify(offsets)}; expected ` +
        `[begin, end] with non-negative integers`,
    );
  }

  const [begin, end] = offsets as number[];
  if (begin > end) {
    throw new SafetensorsError(
      `${where} has reversed data_offsets [${begin}, ${end}]; the end must not be before ` +
        `the begin; ${CORRUPT_ADVICE}`,
    );
  }
  if (end > dataByteLength) {
    throw new SafetensorsError(
      `${where} has data_offsets [${begin}, ${end}] but the data section is only ` +
        `${dataByteLength} bytes (file size ${fileSize}); ${CORRUPT_ADVICE}`,
    );
  }

  // BigInt because a corrupt shape can overflow the exactly representable number range.
  const elementCount = shape.reduce((product: bigint, dim: number) => product * BigInt(dim), 1n);
  const expectedBytes = elementCount * BigInt(DTYPE_BYTES[dtype]);
  if (expectedBytes !== BigInt(end - begin)) {
    throw new SafetensorsError(
      `${where} has data_offsets [${begin}, ${end}] but shape ${formatShape(shape)} of ` +
        `${dtype} needs ${expectedBytes} bytes; ${CORRUPT_ADVICE}`,
    );
  }

  return {
    name,
    dtype,
    shape: Object.freeze([...shape]),
    elementCount: Number(elementCount),
    byteLength: end - begin,
    dataOffsets: Object.freeze([begin, end]) as readonly [number, number],
    filePosition: dataStart + begin,
  };
}

/** Rejects overlapping byte ranges. `tensors` must be sorted by begin offset. */
function checkNoOverlap(path: string, tensors: readonly TensorInfo[]): void {
  let furthest: TensorInfo | null = null;
  for (const tensor of tensors) {
    if (tensor.byteLength === 0) continue;
    if (furthest !== null && tensor.dataOffsets[0] < furthest.dataOffsets[1]) {
      const [begin, end] = tensor.dataOffsets;
      const [otherBegin, otherEnd] = furthest.dataOffsets;
      throw new SafetensorsError(
        `${path}: tensor "${tensor.name}" has data_offsets [${begin}, ${end}] which overlap ` +
          `tensor "${furthest.name}" at [${otherBegin}, ${otherEnd}]; ${CORRUPT_ADVICE}`,
      );
    }
    if (furthest === null || tensor.dataOffsets[1] > furthest.dataOffsets[1]) furthest = tensor;
  }
}

// ---------------------------------------------------------------------------------------------
// Reading one file.
// ---------------------------------------------------------------------------------------------

interface ByteSpan {
  position: number;
  byteLength: number;
  elementCount: number;
}

/** An open safetensors file whose header has been validated. Close it with `close()`. */
export class SafetensorsFile {
  readonly path: string;
  readonly fileSize: number;
  /** Length of the JSON header in bytes, padding included. */
  readonly headerByteLength: number;
  /** Absolute file position of the data section. */
  readonly dataStart: number;
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensor infos in the order of their data in the file. */
  readonly tensors: ReadonlyMap<string, TensorInfo>;

  #file: Deno.FsFile | null;
  #onRead: ((position: number, length: number) => void) | undefined;
  // Seek and read are two calls, so concurrent reads on one handle are serialized.
  #pending: Promise<unknown> = Promise.resolve();

  private constructor(
    path: string,
    file: Deno.FsFile,
    fileSize: number,
    headerByteLength: number,
    header: ParsedHeader,
    onRead: ((position: number, length: number) => void) | undefined,
  ) {
    this.path = path;
    this.#file = file;
    this.fileSize = fileSize;
    this.headerByteLength = headerByteLength;
    this.dataStart = 8 + headerByteLength;
    this.metadata = Object.freeze(header.metadata);
    this.tensors = new Map(header.tensors.map((info) => [info.name, info]));
    this.#onRead = onRead;
  }

  /** Opens `path` and validates its header. Reads only the length prefix and the header. */
  static async open(path: string, options: OpenOptions = {}): Promise<SafetensorsFile> {
    requireLittleEndian();
    const maxHeaderBytes = options.maxHeaderBytes ?? MAX_HEADER_BYTES;
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      throw new SafetensorsError(`${path}: cannot open file: ${reason}`, { cause: error });
    }

    try {
      const fileSize = (await file.stat()).size;
      const read = (position: number, destination: Uint8Array) =>
        readFully(path, file, fileSize, position, destination, options.onRead);

      if (fileSize < 8) {
        throw new SafetensorsError(
          `${path}: file is ${fileSize} bytes, shorter than the 8-byte header length; ` +
            CORRUPT_ADVICE,
        );
      }
      const prefix = new Uint8Array(8);
      await read(0, prefix);
      const declaredLength = new DataView(prefix.buffer).getBigUint64(0, true);
      if (declaredLength > BigInt(maxHeaderBytes)) {
        throw new SafetensorsError(
          `${path}: header length ${declaredLength} exceeds the limit of ${maxHeaderBytes} ` +
            `bytes; ${FOREIGN_ADVICE}`,
        );
      }
      const headerByteLength = Number(declaredLength);
      if (8 + headerByteLength > fileSize) {
        throw new SafetensorsError(
          `${path}: header length ${headerByteLength} runs past the end of the ` +
            `${fileSize}-byte file; ${CORRUPT_ADVICE}`,
        );
      }

      const headerBytes = new Uint8Array(headerByteLength);
      await read(8, headerBytes);
      const header = parseHeader(path, headerBytes, 8 + headerByteLength, fileSize);
      return new SafetensorsFile(path, file, fileSize, headerByteLength, header, options.onRead);
    } catch (error) {
      file.close();
      throw error;
    }
  }

  /** Tensor names in the order of their data in the file. */
  get names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (info === undefined) {
      throw new SafetensorsError(`${this.path}: tensor "${name}" not found`);
    }
    return info;
  }

  /**
   * Reads the stored bytes of a tensor, or of a row range of it, unconverted. The result owns a
   * fresh buffer starting at offset 0, so `new Uint16Array(bytes.buffer)` views F16 data.
   */
  async readRaw(name: string, rows: RowRange = {}): Promise<Uint8Array> {
    const span = this.#span(this.info(name), rows);
    const bytes = new Uint8Array(span.byteLength);
    await this.#readChunked(span.position, bytes);
    return bytes;
  }

  /**
   * Reads a floating-point tensor (or a row range of it) as float32. F32 is copied as stored,
   * F16 and BF16 are widened exactly, F64 is rounded to the nearest float32. Other dtypes are
   * rejected: use `readInt32` or `readRaw` for them.
   */
  async readTensor(name: string, options: ReadTensorOptions = {}): Promise<Float32Array> {
    const info = this.info(name);
    if (!FLOAT_DTYPES.has(info.dtype)) {
      throw new SafetensorsError(
        `${this.path}: tensor "${name}" has dtype ${info.dtype}, which readTensor does not ` +
          `convert to float32; use readInt32 or readRaw`,
      );
    }
    const span = this.#span(info, options);
    const out = options.out ?? new Float32Array(span.elementCount);
    if (out.length < span.elementCount) {
      throw new SafetensorsError(
        `${this.path}: tensor "${name}" needs ${span.elementCount} elements but the output ` +
          `array has room for ${out.length}`,
      );
    }
    const result = out.length === span.elementCount ? out : out.subarray(0, span.elementCount);

    if (info.dtype === "F32") {
      await this.#readChunked(
        span.position,
        new Uint8Array(result.buffer, result.byteOffset, result.byteLength),
      );
      return result;
    }

    await this.#readConverted(span, DTYPE_BYTES[info.dtype], (scratch, count, offset) => {
      const destination = result.subarray(offset, offset + count);
      if (info.dtype === "F16") f16ToF32(new Uint16Array(scratch, 0, count), destination);
      else if (info.dtype === "BF16") bf16ToF32(new Uint16Array(scratch, 0, count), destination);
      else destination.set(new Float64Array(scratch, 0, count));
    });
    return result;
  }

  /** Reads rows `[rowStart, rowEnd)` of a floating-point tensor as float32. */
  readRange(name: string, rowStart: number, rowEnd: number): Promise<Float32Array> {
    return this.readTensor(name, { rowStart, rowEnd });
  }

  /**
   * Reads an integer or BOOL tensor (or a row range of it) as int32. I64, U32 and U64 values
   * outside the int32 range are rejected with the tensor name, index and value.
   */
  async readInt32(name: string, rows: RowRange = {}): Promise<Int32Array> {
    const info = this.info(name);
    const span = this.#span(info, rows);
    const out = new Int32Array(span.elementCount);
    const elementBytes = DTYPE_BYTES[info.dtype];

    if (info.dtype === "I32") {
      await this.#readChunked(span.position, new Uint8Array(out.buffer));
      return out;
    }

    const rangeError = (index: number, value: bigint | number) =>
      new SafetensorsError(
        `${this.path}: tensor "${name}" element ${index} is ${value}, outside the int32 range`,
      );
    const firstRow = rows.rowStart ?? 0;
    const rowOffset = firstRow * (info.shape.length === 0 ? 0 : rowElementCount(info.shape));

    let widen: (scratch: ArrayBuffer, count: number, offset: number) => void;
    switch (info.dtype) {
      case "BOOL":
      case "U8":
        widen = (scratch, count, offset) => out.set(new Uint8Array(scratch, 0, count), offset);
        break;
      case "I8":
        widen = (scratch, count, offset) => out.set(new Int8Array(scratch, 0, count), offset);
        break;
      case "U16":
        widen = (scratch, count, offset) => out.set(new Uint16Array(scratch, 0, count), offset);
        break;
      case "I16":
        widen = (scratch, count, offset) => out.set(new Int16Array(scratch, 0, count), offset);
        break;
      case "U32":
        widen = (scratch, count, offset) => {
          const values = new Int32Array(scratch, 0, count);
          for (let i = 0; i < count; i++) {
            if (values[i] < 0) {
              throw rangeError(rowOffset + offset + i, new Uint32Array(scratch)[i]);
            }
            out[offset + i] = values[i];
          }
        };
        break;
      case "I64":
      case "U64":
        widen = (scratch, count, offset) => {
          // Little-endian pairs of 32-bit words: a value fits in int32 exactly when its high
          // word is the sign extension of its low word.
          const words = new Int32Array(scratch, 0, count * 2);
          const unsigned = info.dtype === "U64";
          for (let i = 0; i < count; i++) {
            const low = words[2 * i];
            const high = words[2 * i + 1];
            if (high !== (low >> 31) || (unsigned && low < 0)) {
              const value = unsigned
                ? new BigUint64Array(scratch)[i]
                : new BigInt64Array(scratch)[i];
              throw rangeError(rowOffset + offset + i, value);
            }
            out[offset + i] = low;
          }
        };
        break;
      default:
        throw new SafetensorsError(
          `${this.path}: tensor "${name}" has dtype ${info.dtype}, which readInt32 does not ` +
            `convert; use readTensor or readRaw`,
        );
    }
    await this.#readConverted(span, elementBytes, widen);
    return out;
  }

  /** Closes the file handle. Later reads fail. Closing twice is allowed. */
  close(): void {
    this.#file?.close();
    this.#file = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #span(info: TensorInfo, rows: RowRange): ByteSpan {
    if (rows.rowStart === undefined && rows.rowEnd === undefined) {
      return {
        position: info.filePosition,
        byteLength: info.byteLength,
        elementCount: info.elementCount,
      };
    }
    if (info.shape.length === 0) {
      throw new SafetensorsError(
        `${this.path}: tensor "${info.name}" is a scalar, so it has no rows to select`,
      );
    }
    const rowCount = info.shape[0];
    const rowStart = rows.rowStart ?? 0;
    const rowEnd = rows.rowEnd ?? rowCount;
    if (
      !Number.isInteger(rowStart) || !Number.isInteger(rowEnd) || rowStart < 0 ||
      rowStart > rowEnd || rowEnd > rowCount
    ) {
      throw new SafetensorsError(
        `${this.path}: invalid row range [${rowStart}, ${rowEnd}) for tensor "${info.name}" ` +
          `with shape ${formatShape(info.shape)}; expected 0 <= rowStart <= rowEnd <= ${rowCount}`,
      );
    }
    const rowElements = rowElementCount(info.shape);
    const elementBytes = DTYPE_BYTES[info.dtype];
    return {
      position: info.filePosition + rowStart * rowElements * elementBytes,
      byteLength: (rowEnd - rowStart) * rowElements * elementBytes,
      elementCount: (rowEnd - rowStart) * rowElements,
    };
  }

  /** Fills `destination` from `position` in steps of at most `CHUNK_BYTES`. */
  async #readChunked(position: number, destination: Uint8Array): Promise<void> {
    for (let done = 0; done < destination.length; done += CHUNK_BYTES) {
      const end = Math.min(done + CHUNK_BYTES, destination.length);
      await this.#readAt(position + done, destination.subarray(done, end));
    }
  }

  /**
   * Reads `span` through one scratch buffer of at most `CHUNK_BYTES`, calling `convert` with the
   * element count and the output element offset of each step.
   */
  async #readConverted(
    span: ByteSpan,
    elementBytes: number,
    convert: (scratch: ArrayBuffer, count: number, offset: number) => void,
  ): Promise<void> {
    const elementsPerChunk = Math.floor(CHUNK_BYTES / elementBytes);
    const scratch = new ArrayBuffer(Math.min(span.byteLength, elementsPerChunk * elementBytes));
    for (let offset = 0; offset < span.elementCount; offset += elementsPerChunk) {
      const count = Math.min(elementsPerChunk, span.elementCount - offset);
      await this.#readAt(
        span.position + offset * elementBytes,
        new Uint8Array(scratch, 0, count * elementBytes),
      );
      convert(scratch, count, offset);
    }
  }

  #readAt(position: number, destination: Uint8Array): Promise<void> {
    const result = this.#pending.then(() => {
      if (this.#file === null) {
        throw new SafetensorsError(`${this.path}: file is closed`);
      }
      return readFully(this.path, this.#file, this.fileSize, position, destination, this.#onRead);
    });
    this.#pending = result.catch(() => {});
    return result;
  }
}

function rowElementCount(shape: readonly number[]): number {
  return shape.slice(1).reduce((product, dim) => product * dim, 1);
}

/**
 * Reads exactly `destination.length` bytes at `position`. Requests that end past `fileSize` are
 * rejected before any read, and a file that shrank after opening raises an error.
 */
async function readFully(
  path: string,
  file: Deno.FsFile,
  fileSize: number,
  position: number,
  destination: Uint8Array,
  onRead: ((position: number, length: number) => void) | undefined,
): Promise<void> {
  if (position < 0 || position + destination.length > fileSize) {
    throw new SafetensorsError(
      `${path}: read of ${destination.length} bytes at position ${position} would pass the ` +
        `end of the ${fileSize}-byte file`,
    );
  }
  if (destination.length === 0) return;
  onRead?.(position, destination.length);
  await file.seek(position, Deno.SeekMode.Start);
  let filled = 0;
  while (filled < destination.length) {
    const count = await file.read(destination.subarray(filled));
    if (count === null) {
      throw new SafetensorsError(
        `${path}: unexpected end of file at byte ${position + filled}; the file changed ` +
          `while it was open`,
      );
    }
    filled += count;
  }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: one file or shards listed by an index.
// ---------------------------------------------------------------------------------------------

export const SINGLE_FILE_NAME = "model.safetensors";
export const INDEX_FILE_NAME = "model.safetensors.index.json";

/** A tensor of a checkpoint together with the file that stores it. */
export interface CheckpointTensorInfo extends TensorInfo {
  readonly file: SafetensorsFile;
}

/** One tensor produced by `Checkpoint.iterateTensors`. */
export interface LoadedTensor<T> {
  info: CheckpointTensorInfo;
  data: T;
}

/**
 * A checkpoint stored as one `model.safetensors` or as shards listed in
 * `model.safetensors.index.json`, with one name lookup over all files.
 */
export class Checkpoint {
  /** Directory or file the checkpoint was opened from. */
  readonly path: string;
  /** Index file path for sharded checkpoints, otherwise null. */
  readonly indexPath: string | null;
  /** The index's `metadata` object, or the single file's `__metadata__`. */
  readonly metadata: Readonly<Record<string, unknown>>;
  readonly files: readonly SafetensorsFile[];
  readonly #tensors: ReadonlyMap<string, CheckpointTensorInfo>;

  private constructor(
    path: string,
    indexPath: string | null,
    metadata: Record<string, unknown>,
    files: SafetensorsFile[],
  ) {
    this.path = path;
    this.indexPath = indexPath;
    this.metadata = Object.freeze(metadata);
    this.files = Object.freeze(files);
    const tensors = new Map<string, CheckpointTensorInfo>();
    for (const file of files) {
      for (const info of file.tensors.values()) tensors.set(info.name, { ...info, file });
    }
    this.#tensors = tensors;
  }

  /**
   * Opens a checkpoint. `path` may be a directory holding `model.safetensors` (preferred) or
   * `model.safetensors.index.json`, a `.safetensors` file, or an index file.
   */
  static async open(path: string, options: OpenOptions = {}): Promise<Checkpoint> {
    const stat = await statOrNull(path);
    if (stat === null) {
      throw new SafetensorsError(`${path}: checkpoint not found`);
    }
    if (stat.isFile) {
      if (path.endsWith(".json")) return await Checkpoint.#openIndex(path, path, options);
      const file = await SafetensorsFile.open(path, options);
      return new Checkpoint(path, null, { ...file.metadata }, [file]);
    }

    const singlePath = join(path, SINGLE_FILE_NAME);
    if ((await statOrNull(singlePath))?.isFile) {
      const file = await SafetensorsFile.open(singlePath, options);
      return new Checkpoint(path, null, { ...file.metadata }, [file]);
    }
    const indexPath = join(path, INDEX_FILE_NAME);
    if ((await statOrNull(indexPath))?.isFile) {
      return await Checkpoint.#openIndex(path, indexPath, options);
    }
    throw new SafetensorsError(
      `${path}: no checkpoint found; expected ${SINGLE_FILE_NAME} or ${INDEX_FILE_NAME} in ` +
        `this directory`,
    );
  }

  static async #openIndex(
    path: string,
    indexPath: string,
    options: OpenOptions,
  ): Promise<Checkpoint> {
    const index = await readIndex(indexPath);
    const directory = dirname(indexPath);

    const shardNames = [...new Set(Object.values(index.weightMap))];
    const missing: string[] = [];
    for (const shard of shardNames) {
      if (!(await statOrNull(join(directory, shard)))?.isFile) missing.push(shard);
    }
    if (missing.length > 0) {
      const list = missing.map((shard) => `"${shard}"`).join(", ");
      throw new SafetensorsError(
        `${indexPath}: shard file${missing.length > 1 ? "s" : ""} ${list} listed in the index ` +
          `not found in ${directory}; download the missing shards or re-export the checkpoint`,
      );
    }

    const files: SafetensorsFile[] = [];
    try {
      for (const shard of shardNames) {
        files.push(await SafetensorsFile.open(join(directory, shard), options));
      }
      checkIndexMatchesShards(indexPath, index.weightMap, shardNames, files);
    } catch (error) {
      for (const file of files) file.close();
      throw error;
    }
    return new Checkpoint(path, indexPath, index.metadata, files);
  }

  /** Tensor names, grouped by file and in data order within each file. */
  get names(): string[] {
    return [...this.#tensors.keys()];
  }

  has(name: string): boolean {
    return this.#tensors.has(name);
  }

  info(name: string): CheckpointTensorInfo {
    const info = this.#tensors.get(name);
    if (info === undefined) {
      throw new SafetensorsError(`${this.path}: tensor "${name}" not found in the checkpoint`);
    }
    return info;
  }

  readTensor(name: string, options?: ReadTensorOptions): Promise<Float32Array> {
    return this.info(name).file.readTensor(name, options);
  }

  readRange(name: string, rowStart: number, rowEnd: number): Promise<Float32Array> {
    return this.info(name).file.readRange(name, rowStart, rowEnd);
  }

  readRaw(name: string, rows?: RowRange): Promise<Uint8Array> {
    return this.info(name).file.readRaw(name, rows);
  }

  readInt32(name: string, rows?: RowRange): Promise<Int32Array> {
    return this.info(name).file.readInt32(name, rows);
  }

  /**
   * Yields tensors as float32 one at a time. Each tensor is read only when the consumer requests
   * the next one, so at most one tensor is in flight beyond what the consumer keeps. Defaults to
   * all tensors in storage order.
   */
  async *iterateTensors(
    names: Iterable<string> = this.names,
  ): AsyncGenerator<LoadedTensor<Float32Array>> {
    for (const name of names) {
      const info = this.info(name);
      yield { info, data: await info.file.readTensor(name) };
    }
  }

  /** Yields the stored bytes of tensors one at a time, like `iterateTensors`. */
  async *iterateRaw(
    names: Iterable<string> = this.names,
  ): AsyncGenerator<LoadedTensor<Uint8Array>> {
    for (const name of names) {
      const info = this.info(name);
      yield { info, data: await info.file.readRaw(name) };
    }
  }

  [Symbol.asyncIterator](): AsyncGenerator<LoadedTensor<Float32Array>> {
    return this.iterateTensors();
  }

  close(): void {
    for (const file of this.files) file.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

interface IndexFile {
  metadata: Record<string, unknown>;
  weightMap: Record<string, string>;
}

async function readIndex(indexPath: string): Promise<IndexFile> {
  const size = (await Deno.stat(indexPath)).size;
  if (size > MAX_HEADER_BYTES) {
    throw new SafetensorsError(
      `${indexPath}: index file is ${size} bytes, over the limit of ${MAX_HEADER_BYTES}`,
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(await Deno.readTextFile(indexPath));
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new SafetensorsError(`${indexPath}: index is not valid JSON (${reason})`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new SafetensorsError(
      `${indexPath}: index must be a JSON object but is ${describeJsonValue(parsed)}`,
    );
  }

  const { metadata = {}, weight_map: weightMap } = parsed as Record<string, unknown>;
  if (typeof metadata !== "object" || metadata === null || Array.isArray(metadata)) {
    throw new SafetensorsError(
      `${indexPath}: "metadata" must be an object but is ${describeJsonValue(metadata)}`,
    );
  }
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new SafetensorsError(
      `${indexPath}: "weight_map" must be an object mapping tensor names to shard files but ` +
        `is ${describeJsonValue(weightMap)}`,
    );
  }
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== "string" || shard === "") {
      throw new SafetensorsError(
        `${indexPath}: "weight_map" entry for tensor "${name}" must be a shard file name but ` +
          `is ${JSON.stringify(shard)}`,
      );
    }
    // Shards live next to the index, so a path that leaves that directory is corrupt or hostile.
    if (isAbsolute(shard) || shard.split(/[\\/]/).includes("..")) {
      throw new SafetensorsError(
        `${indexPath}: shard "${shard}" for tensor "${name}" must be a path relative to the ` +
          `index directory without ".."`,
      );
    }
  }
  return {
    metadata: metadata as Record<string, unknown>,
    weightMap: weightMap as Record<string, string>,
  };
}

/** Requires every indexed tensor to be in its shard and every shard tensor to be indexed there. */
function checkIndexMatchesShards(
  indexPath: string,
  weightMap: Record<string, string>,
  shardNames: readonly string[],
  files: readonly SafetensorsFile[],
): void {
  for (const [name, shard] of Object.entries(weightMap)) {
    if (!files[shardNames.indexOf(shard)].has(name)) {
      throw new SafetensorsError(
        `${indexPath}: the index places tensor "${name}" in shard "${shard}", but that shard ` +
          `does not contain it; re-download the checkpoint`,
      );
    }
  }
  for (let i = 0; i < files.length; i++) {
    for (const name of files[i].tensors.keys()) {
      if (weightMap[name] !== shardNames[i]) {
        const listed = Object.hasOwn(weightMap, name)
          ? `the index places it in shard "${weightMap[name]}"`
          : "the index does not list it";
        throw new SafetensorsError(
          `${indexPath}: shard "${shardNames[i]}" contains tensor "${name}", but ${listed}; ` +
            `the index and shards do not match, re-download the checkpoint`,
        );
      }
    }
  }
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

/** Opens a checkpoint, like `Checkpoint.open`. */
export function openCheckpoint(path: string, options?: OpenOptions): Promise<Checkpoint> {
  return Checkpoint.open(path, options);
}

/**
 * Loads every tensor of a checkpoint as float32, reading tensor by tensor so that peak memory
 * stays close to the size of the result. Integer tensors are rejected. Open the checkpoint with
 * `openCheckpoint` to read them with `readInt32`.
 */
export async function loadSafetensorsDir(
  path: string,
  options?: OpenOptions,
): Promise<Map<string, Float32Array>> {
  const checkpoint = await Checkpoint.open(path, options);
  try {
    const tensors = new Map<string, Float32Array>();
    for await (const { info, data } of checkpoint.iterateTensors()) tensors.set(info.name, data);
    return tensors;
  } finally {
    checkpoint.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Writing.
// ---------------------------------------------------------------------------------------------

export type TensorData =
  | Float32Array
  | Float64Array
  | Uint16Array
  | Int16Array
  | Uint8Array
  | Int8Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array;

/** A tensor to write. `data` may be a function so that large tensors are produced on demand. */
export interface TensorToWrite {
  name: string;
  dtype: Dtype;
  shape: readonly number[];
  /**
   * Values in row-major order. A `Uint8Array` is taken as the stored bytes of any dtype. A
   * `Float32Array` is rounded (to nearest, ties to even) for F16 and BF16. Otherwise the array
   * type must match the dtype: `Uint16Array` contains F16, BF16 or U16 bits, `Int32Array` I32, and
   * so on.
   */
  data: TensorData | (() => TensorData | Promise<TensorData>);
}

const NATIVE_DTYPES = new Map<unknown, readonly Dtype[]>([
  [Float32Array, ["F32"]],
  [Float64Array, ["F64"]],
  [Uint16Array, ["F16", "BF16", "U16"]],
  [Int16Array, ["I16"]],
  [Int8Array, ["I8"]],
  [Int32Array, ["I32"]],
  [Uint32Array, ["U32"]],
  [BigInt64Array, ["I64"]],
  [BigUint64Array, ["U64"]],
]);

interface PlannedTensor {
  tensor: TensorToWrite;
  elementCount: number;
  begin: number;
  end: number;
}

/**
 * Writes tensors to a safetensors file atomically (see `io/atomic.ts`): the header first, then
 * each tensor in turn, so memory use stays at one tensor plus a conversion chunk. Header keys are
 * sorted by name. Data is laid out by descending element size and then by name, which keeps every
 * tensor aligned to its element size because the header is padded with spaces to a multiple of 8.
 */
export async function writeSafetensors(
  path: string,
  tensors: Iterable<TensorToWrite>,
  metadata: Record<string, string> = {},
): Promise<void> {
  requireLittleEndian();
  const plan = planLayout(path, [...tensors]);
  const header = encodeHeader(path, plan, metadata);

  await withAtomicFile(path, async (file) => {
    await writeAll(file, header);
    for (const planned of plan) {
      const { tensor } = planned;
      const data = typeof tensor.data === "function" ? await tensor.data() : tensor.data;
      checkDataMatches(path, tensor, data, planned.elementCount);
      await writeTensorData(file, tensor.dtype, data);
    }
  });
}

function planLayout(path: string, tensors: TensorToWrite[]): PlannedTensor[] {
  const names = new Set<string>();
  const plan: PlannedTensor[] = [];
  for (const tensor of tensors) {
    const where = `${path}: tensor "${tensor.name}"`;
    if (tensor.name === "__metadata__") {
      throw new SafetensorsError(`${where}: the name "__metadata__" is reserved for metadata`);
    }
    if (names.has(tensor.name)) {
      throw new SafetensorsError(`${where} is given more than once`);
    }
    names.add(tensor.name);
    if (!isDtype(tensor.dtype)) {
      throw new SafetensorsError(`${where} has unknown dtype ${JSON.stringify(tensor.dtype)}`);
    }
    if (!Array.isArray(tensor.shape) || !tensor.shape.every(isNonNegativeSafeInteger)) {
      throw new SafetensorsError(
        `${where} has invalid shape ${JSON.stringify(tensor.shape)}; expected an array of ` +
          `non-negative integers`,
      );
    }
    const elementCount = tensor.shape.reduce((product, dim) => product * dim, 1);
    if (!Number.isSafeInteger(elementCount * DTYPE_BYTES[tensor.dtype])) {
      throw new SafetensorsError(`${where} with shape ${formatShape(tensor.shape)} is too large`);
    }
    if (typeof tensor.data !== "function") {
      checkDataMatches(path, tensor, tensor.data, elementCount);
    }
    plan.push({ tensor, elementCount, begin: 0, end: 0 });
  }

  plan.sort((a, b) =>
    DTYPE_BYTES[b.tensor.dtype] - DTYPE_BYTES[a.tensor.dtype] ||
    compareStrings(a.tensor.name, b.tensor.name)
  );
  let offset = 0;
  for (const planned of plan) {
    planned.begin = offset;
    offset += planned.elementCount * DTYPE_BYTES[planned.tensor.dtype];
    planned.end = offset;
  }
  return plan;
}

/** Compares by UTF-16 code unit, unlike `localeCompare`, so the order is the same everywhere. */
function compareStrings(a: string, b: string): number {
  if (a < b) return -1;
  if (a > b) return 1;
  return 0;
}

/** Builds the 8-byte length prefix and the space-padded JSON header with sorted keys. */
function encodeHeader(
  path: string,
  plan: readonly PlannedTensor[],
  metadata: Record<string, string>,
): Uint8Array {
  // JSON.stringify orders integer-like keys ("0", "1") before others, so the object text is
  // assembled by hand to get a plain sorted order.
  const parts: string[] = [];
  const metadataKeys = Object.keys(metadata).sort(compareStrings);
  if (metadataKeys.length > 0) {
    const items = metadataKeys.map((key) => {
      if (typeof metadata[key] !== "string") {
        throw new SafetensorsError(
          `${path}: metadata value for key "${key}" must be a string but is ` +
            describeJsonValue(metadata[key]),
        );
      }
      return `${JSON.stringify(key)}:${JSON.stringify(metadata[key])}`;
    });
    parts.push(`"__metadata__":{${items.join(",")}}`);
  }
  const byName = [...plan].sort((a, b) => compareStrings(a.tensor.name, b.tensor.name));
  for (const { tensor, begin, end } of byName) {
    const entry = { dtype: tensor.dtype, shape: tensor.shape, data_offsets: [begin, end] };
    parts.push(`${JSON.stringify(tensor.name)}:${JSON.stringify(entry)}`);
  }

  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const paddedLength = Math.ceil(json.length / 8) * 8;
  const bytes = new Uint8Array(8 + paddedLength).fill(0x20, 8 + json.length);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(paddedLength), true);
  bytes.set(json, 8);
  return bytes;
}

function checkDataMatches(
  path: string,
  tensor: TensorToWrite,
  data: TensorData,
  elementCount: number,
): void {
  const where = `${path}: tensor "${tensor.name}"`;
  if (data instanceof Uint8Array) {
    const byteLength = elementCount * DTYPE_BYTES[tensor.dtype];
    if (data.length !== byteLength) {
      throw new SafetensorsError(
        `${where} has ${data.length} bytes of data but shape ${formatShape(tensor.shape)} of ` +
          `${tensor.dtype} needs ${byteLength}`,
      );
    }
    return;
  }
  const converts = data instanceof Float32Array &&
    (tensor.dtype === "F16" || tensor.dtype === "BF16");
  const native = NATIVE_DTYPES.get(data.constructor)?.includes(tensor.dtype) ?? false;
  if (!converts && !native) {
    throw new SafetensorsError(
      `${where} has dtype ${tensor.dtype} but its data is a ${data.constructor.name}; pass the ` +
        `matching typed array, a Float32Array for F16 or BF16, or the raw bytes as a Uint8Array`,
    );
  }
  if (data.length !== elementCount) {
    throw new SafetensorsError(
      `${where} has ${data.length} elements of data but shape ${formatShape(tensor.shape)} ` +
        `needs ${elementCount}`,
    );
  }
}

async function writeTensorData(file: Deno.FsFile, dtype: Dtype, data: TensorData): Promise<void> {
  if (data instanceof Float32Array && (dtype === "F16" || dtype === "BF16")) {
    const convert = dtype === "F16" ? f32ToF16 : f32ToBf16;
    const chunkElements = CHUNK_BYTES / 2;
    const scratch = new Uint16Array(Math.min(data.length, chunkElements));
    for (let start = 0; start < data.length; start += chunkElements) {
      const source = data.subarray(start, Math.min(start + chunkElements, data.length));
      const converted = convert(source, scratch).subarray(0, source.length);
      await writeAll(file, new Uint8Array(converted.buffer, 0, converted.byteLength));
    }
    return;
  }
  await writeAll(file, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}
