import assert from "node:assert/strict";
import { join } from "node:path";

import { atomicWriteFile, atomicWriteJson } from "../io/atomic.ts";
import {
  bf16ToF32,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  loadSafetensorsDir,
  openCheckpoint,
  SafetensorsError,
  SafetensorsFile,
  type TensorToWrite,
  writeSafetensors,
} from "../io/safetensors.ts";

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

async function withTempDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_test_" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Writes a file with an arbitrary header text (or object) and data section. */
async function writeCraftedFile(
  path: string,
  header: string | object | Uint8Array,
  data: Uint8Array = new Uint8Array(0),
  declaredHeaderLength?: bigint,
): Promise<void> {
  const json = header instanceof Uint8Array
    ? header
    : new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const bytes = new Uint8Array(8 + json.length + data.length);
  new DataView(bytes.buffer).setBigUint64(0, declaredHeaderLength ?? BigInt(json.length), true);
  bytes.set(json, 8);
  bytes.set(data, 8 + json.length);
  await Deno.writeFile(path, bytes);
}

async function withOpenFile(
  path: string,
  body: (file: SafetensorsFile) => Promise<void>,
): Promise<void> {
  const file = await SafetensorsFile.open(path);
  try {
    await body(file);
  } finally {
    file.close();
  }
}

/** Asserts element-wise identity, so NaN equals NaN and -0 differs from +0. */
function assertSameValues(actual: ArrayLike<number>, expected: ArrayLike<number>, label: string) {
  assert.equal(actual.length, expected.length, `${label}: length`);
  for (let i = 0; i < expected.length; i++) {
    assert.ok(
      Object.is(actual[i], expected[i]),
      `${label}[${i}]: expected ${Object.is(expected[i], -0) ? "-0" : expected[i]}, got ` +
        `${Object.is(actual[i], -0) ? "-0" : actual[i]}`,
    );
  }
}

function f32FromBits(bits: number): number {
  return new Float32Array(new Uint32Array([bits]).buffer)[0];
}

/** Deterministic 32-bit values (xorshift32), so failures reproduce. */
function pseudoRandomBits(count: number, seed = 0x9e3779b9): Uint32Array {
  const out = new Uint32Array(count);
  let state = seed >>> 0;
  for (let i = 0; i < count; i++) {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    out[i] = state;
  }
  return out;
}

async function listTemporaryFiles(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.name.endsWith(".tmp")) names.push(entry.name);
  }
  return names;
}

// ---------------------------------------------------------------------------------------------
// Half-precision conversion.
// ---------------------------------------------------------------------------------------------

Deno.test("f32ToF16 rounds known values", () => {
  const cases: [number, number][] = [
    [1, 0x3c00],
    [-2, 0xc000],
    [0, 0x0000],
    [-0, 0x8000],
    [65504, 0x7bff],
    [65519, 0x7bff],
    [65520, 0x7c00], // tie between 65504 and the overflow step goes to the even side: infinity
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // tie between 0 and 2^-24 goes to 0
    [1.5 * 2 ** -25, 0x0001],
    [3 * 2 ** -25, 0x0002], // 1.5 units: tie goes to the even 2
    [2 ** -14 - 2 ** -25, 0x0400], // 1023.5 units: tie rounds up into the normal range
    [1 + 2 ** -11, 0x3c00], // tie between 0x3c00 and 0x3c01 goes to even 0x3c00
    [1 + 3 * 2 ** -11, 0x3c02], // tie between 0x3c01 and 0x3c02 goes to even 0x3c02
    [2 ** -30, 0x0000],
  ];
  const converted = f32ToF16(new Float32Array(cases.map(([value]) => value)));
  cases.forEach(([value, expected], i) => {
    assert.equal(
      converted[i],
      expected,
      `f32ToF16(${value}) = 0x${converted[i].toString(16)}, expected 0x${expected.toString(16)}`,
    );
  });

  const nanBits = f32ToF16(new Float32Array([NaN, f32FromBits(0x7f800001)]));
  for (const bits of nanBits) {
    assert.equal(bits & 0x7c00, 0x7c00, "NaN keeps an all-ones exponent");
    assert.notEqual(bits & 0x3ff, 0, "NaN keeps a non-zero mantissa, so it does not become inf");
  }
});

Deno.test("f16 bit patterns round trip exactly", () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const widened = f16ToF32(all);
  const narrowed = f32ToF16(widened);
  for (let i = 0; i < 65536; i++) {
    assert.equal(narrowed[i], i, `f16 0x${i.toString(16)} changed after f32 round trip`);
  }
});

const hasFloat16Array = typeof globalThis.Float16Array === "function";

Deno.test({
  name: "f16 conversion matches Float16Array",
  ignore: !hasFloat16Array,
  fn() {
    // The built-in Float16Array (ECMAScript 2025) rounds to nearest, ties to even, so it is an
    // independent reference for both directions. NaN payloads are not compared.
    const all = new Uint16Array(65536).map((_, i) => i);
    const reference = new Float16Array(all.buffer);
    const widened = f16ToF32(all);
    for (let i = 0; i < 65536; i++) {
      if (Number.isNaN(reference[i])) {
        assert.ok(Number.isNaN(widened[i]), `f16 0x${i.toString(16)} should widen to NaN`);
      } else {
        assert.ok(Object.is(widened[i], reference[i]), `f16 0x${i.toString(16)} widened wrongly`);
      }
    }

    // Random bit patterns cover all exponents. The extra values cluster around the f16 range.
    const bits = pseudoRandomBits(200_000);
    const values = new Float32Array(bits.buffer);
    const nearRange = new Float32Array(100_000).map((_, i) => (i - 50_000) * 1.3107 + 1e-6 * i);
    for (const sample of [values, nearRange]) {
      const ours = f32ToF16(sample);
      const theirs = new Uint16Array(new Float16Array(sample).buffer);
      for (let i = 0; i < sample.length; i++) {
        if (Number.isNaN(sample[i])) continue;
        assert.equal(
          ours[i],
          theirs[i],
          `f32ToF16(${sample[i]}) = 0x${ours[i].toString(16)}, Float16Array gives ` +
            `0x${theirs[i].toString(16)}`,
        );
      }
    }
  },
});

Deno.test("f32ToBf16 rounds ties to even", () => {
  const cases: [number, number][] = [
    [0x3f800000, 0x3f80], // 1.0
    [0x3f808000, 0x3f80], // tie, lower neighbour is even
    [0x3f818000, 0x3f82], // tie, upper neighbour is even
    [0x3f808001, 0x3f81], // just above the tie
    [0x3f807fff, 0x3f80], // just below the tie
    [0x7f7fffff, 0x7f80], // largest float rounds up to infinity
    [0x7f800000, 0x7f80], // infinity
    [0xff800000, 0xff80], // -infinity
    [0x80000000, 0x8000], // -0
    [0x00010000, 0x0001], // bf16 subnormal
    [0x00008000, 0x0000], // tie at half the smallest subnormal goes to 0
  ];
  const converted = f32ToBf16(
    new Float32Array(new Uint32Array(cases.map(([bits]) => bits)).buffer),
  );
  cases.forEach(([input, expected], i) => {
    assert.equal(
      converted[i],
      expected,
      `f32ToBf16(0x${input.toString(16)}) = 0x${converted[i].toString(16)}, ` +
        `expected 0x${expected.toString(16)}`,
    );
  });

  // A NaN whose payload sits only in the dropped low bits must stay NaN, not round to inf.
  const nan = f32ToBf16(new Float32Array([f32FromBits(0x7f800001), f32FromBits(0xffffffff)]));
  assert.ok(Number.isNaN(bf16ToF32(nan)[0]), "low-payload NaN stays NaN");
  assert.ok(Number.isNaN(bf16ToF32(nan)[1]), "all-ones NaN stays NaN");
});

Deno.test("bf16ToF32 is exact for all patterns", () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const widened = bf16ToF32(all);
  const widenedBits = new Uint32Array(widened.buffer);
  for (let i = 0; i < 65536; i++) {
    assert.equal(widenedBits[i], i << 16 >>> 0, `bf16 0x${i.toString(16)} widened wrongly`);
  }
  const narrowed = f32ToBf16(widened);
  for (let i = 0; i < 65536; i++) {
    assert.equal(narrowed[i], i, `bf16 0x${i.toString(16)} changed after f32 round trip`);
  }
});

// ---------------------------------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------------------------------

const SPECIAL_VALUES = new Float32Array([
  0,
  -0,
  1,
  -1.5,
  Infinity,
  -Infinity,
  NaN,
  2 ** -24, // smallest f16 subnormal
  2 ** -149, // smallest f32 subnormal
  2 ** -130, // bf16 subnormal
  65504,
  3.14159,
  -1e-3,
  1e20,
]);

Deno.test("round trip F32 F16 BF16 special values", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "special.safetensors");
    await writeSafetensors(path, [
      { name: "f32", dtype: "F32", shape: [2, 7], data: SPECIAL_VALUES },
      { name: "f16", dtype: "F16", shape: [14], data: SPECIAL_VALUES },
      { name: "bf16", dtype: "BF16", shape: [7, 2], data: SPECIAL_VALUES },
      { name: "f16_bits", dtype: "F16", shape: [14], data: f32ToF16(SPECIAL_VALUES) },
    ]);

    await withOpenFile(path, async (file) => {
      // F32 is stored as is: exact, including subnormals, -0 and NaN.
      assertSameValues(await file.readTensor("f32"), SPECIAL_VALUES, "F32");

      // F16 and BF16 are compared with the conversion helpers (checked above) and, for key
      // values, with hand-derived results.
      const f16 = await file.readTensor("f16");
      assertSameValues(f16, f16ToF32(f32ToF16(SPECIAL_VALUES)), "F16");
      assert.ok(Object.is(f16[1], -0), "F16 keeps -0");
      assert.equal(f16[7], 2 ** -24, "F16 keeps its smallest subnormal exactly");
      assert.equal(f16[8], 0, "F16 flushes 2^-149 to 0");
      assert.equal(f16[10], 65504, "F16 keeps its largest finite value");
      assert.equal(f16[13], Infinity, "F16 overflows 1e20 to inf");
      assert.ok(Number.isNaN(f16[6]), "F16 keeps NaN");
      assert.ok(Math.abs(f16[11] - 3.14159) <= 3.14159 * 2 ** -11, "F16 relative error <= 2^-11");

      const bf16 = await file.readTensor("bf16");
      assertSameValues(bf16, bf16ToF32(f32ToBf16(SPECIAL_VALUES)), "BF16");
      assert.ok(Object.is(bf16[1], -0), "BF16 keeps -0");
      assert.equal(bf16[9], 2 ** -130, "BF16 keeps a subnormal that fits exactly");
      assert.equal(bf16[4], Infinity, "BF16 keeps inf");
      assert.ok(Number.isNaN(bf16[6]), "BF16 keeps NaN");
      assert.ok(Math.abs(bf16[12] + 1e-3) <= 1e-3 * 2 ** -8, "BF16 relative error <= 2^-8");

      // Raw reads return the stored 16-bit patterns for upload without conversion.
      const raw = await file.readRaw("f16");
      assert.deepEqual(new Uint16Array(raw.buffer), f32ToF16(SPECIAL_VALUES), "raw F16 bits");
      assertSameValues(await file.readTensor("f16_bits"), f16, "F16 written from Uint16Array");

      assert.deepEqual(file.info("bf16").shape, [7, 2], "BF16 shape");
      assert.equal(file.info("f32").byteLength, 14 * 4, "F32 byte length");
    });
  });
});

Deno.test("scalar and zero-size tensors", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "edge.safetensors");
    await writeSafetensors(path, [
      { name: "scalar", dtype: "F32", shape: [], data: new Float32Array([42.5]) },
      { name: "empty_rows", dtype: "F32", shape: [0, 5], data: new Float32Array(0) },
      { name: "empty_cols", dtype: "F16", shape: [3, 0], data: new Float32Array(0) },
      { name: "after", dtype: "F32", shape: [2], data: new Float32Array([1, 2]) },
    ]);

    await withOpenFile(path, async (file) => {
      assert.deepEqual(file.info("scalar").shape, [], "scalar shape");
      assert.equal(file.info("scalar").elementCount, 1, "scalar element count");
      assertSameValues(await file.readTensor("scalar"), [42.5], "scalar value");

      const [begin, end] = file.info("empty_rows").dataOffsets;
      assert.equal(begin, end, "zero-size tensor has an empty byte range");
      assert.equal((await file.readTensor("empty_rows")).length, 0, "[0, 5] reads no values");
      assert.equal((await file.readTensor("empty_cols")).length, 0, "[3, 0] reads no values");
      assert.equal((await file.readRange("empty_cols", 1, 3)).length, 0, "row slice of [3, 0]");
      assertSameValues(await file.readTensor("after"), [1, 2], "tensor after empty ones");
      await assert.rejects(
        () => file.readRange("scalar", 0, 1),
        /tensor "scalar" is a scalar, so it has no rows/,
      );
    });
  });
});

Deno.test("metadata and header layout", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "layout.safetensors");
    const tensors: TensorToWrite[] = [
      { name: "b", dtype: "F16", shape: [3], data: new Float32Array([1, 2, 3]) },
      { name: "a", dtype: "F32", shape: [1], data: new Float32Array([4]) },
      { name: "10", dtype: "I64", shape: [1], data: new BigInt64Array([5n]) },
      { name: "9", dtype: "U8", shape: [3], data: new Uint8Array([6, 7, 8]) },
    ];
    const metadata = { format: "pt", "z-last": "x", "a-first": '"quoted" ünïcode' };
    await writeSafetensors(path, tensors, metadata);

    await withOpenFile(path, async (file) => {
      assert.deepEqual({ ...file.metadata }, metadata, "metadata round trip");
      assert.equal(file.dataStart % 8, 0, "header is padded so data starts at a multiple of 8");
      for (const info of file.tensors.values()) {
        const elementBytes = info.byteLength / info.elementCount;
        assert.equal(info.filePosition % elementBytes, 0, `"${info.name}" is naturally aligned`);
      }
      assert.deepEqual([...await file.readInt32("10")], [5], "I64 value");
      assert.deepEqual([...await file.readRaw("9")], [6, 7, 8], "U8 values");
      assertSameValues(await file.readTensor("b"), [1, 2, 3], "F16 values (exact)");
    });

    const bytes = await Deno.readFile(path);
    const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(headerLength % 8, 0, "header length is a multiple of 8");
    const header = new TextDecoder().decode(bytes.subarray(8, 8 + headerLength));
    assert.match(header, /^\{.*\} *$/, "header is one JSON object padded with spaces");
    const keyOrder = ["__metadata__", "10", "9", "a", "b"].map((key) =>
      header.indexOf(`"${key}":`)
    );
    assert.deepEqual(
      keyOrder,
      [...keyOrder].sort((x, y) => x - y),
      "keys are in sorted order: __metadata__ first, then names by code unit",
    );
    const metadataText = header.slice(0, header.indexOf("}"));
    assert.ok(
      metadataText.indexOf("a-first") < metadataText.indexOf("format") &&
        metadataText.indexOf("format") < metadataText.indexOf("z-last"),
      "metadata keys are sorted",
    );

    const again = join(dir, "again.safetensors");
    await writeSafetensors(again, [...tensors].reverse(), metadata);
    assert.deepEqual(await Deno.readFile(again), bytes, "output does not depend on input order");
  });
});

Deno.test("integer and boolean dtypes", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "ints.safetensors");
    await writeSafetensors(path, [
      { name: "i32", dtype: "I32", shape: [3], data: new Int32Array([-5, 0, 2147483647]) },
      {
        name: "i64_fits",
        dtype: "I64",
        shape: [2],
        data: new BigInt64Array([-(2n ** 31n), 2n ** 31n - 1n]),
      },
      { name: "i64_big", dtype: "I64", shape: [3], data: new BigInt64Array([1n, 2n, 2n ** 31n]) },
      { name: "u32_big", dtype: "U32", shape: [2], data: new Uint32Array([7, 2 ** 31]) },
      { name: "u64_big", dtype: "U64", shape: [1], data: new BigUint64Array([2n ** 63n]) },
      { name: "u8", dtype: "U8", shape: [2, 2], data: new Uint8Array([0, 1, 254, 255]) },
      { name: "mask", dtype: "BOOL", shape: [3], data: new Uint8Array([1, 0, 1]) },
      { name: "i16", dtype: "I16", shape: [2], data: new Int16Array([-300, 300]) },
    ]);

    await withOpenFile(path, async (file) => {
      assert.deepEqual([...await file.readInt32("i32")], [-5, 0, 2147483647], "I32");
      assert.deepEqual([...await file.readInt32("i64_fits")], [-(2 ** 31), 2 ** 31 - 1], "I64");
      await assert.rejects(
        () => file.readInt32("i64_big"),
        /tensor "i64_big" element 2 is 2147483648, outside the int32 range/,
      );
      await assert.rejects(() => file.readInt32("u32_big"), /element 1 is 2147483648/);
      await assert.rejects(() => file.readInt32("u64_big"), /element 0 is 9223372036854775808/);
      assert.deepEqual([...await file.readRaw("u8")], [0, 1, 254, 255], "U8 raw");
      assert.deepEqual([...await file.readInt32("u8", { rowStart: 1 })], [254, 255], "U8 rows");
      assert.deepEqual([...await file.readRaw("mask")], [1, 0, 1], "BOOL raw");
      assert.deepEqual([...await file.readInt32("mask")], [1, 0, 1], "BOOL as int32");
      assert.deepEqual([...await file.readInt32("i16")], [-300, 300], "I16 widened");
      await assert.rejects(() => file.readTensor("i32"), /dtype I32.*use readInt32 or readRaw/);
    });
  });
});

Deno.test("readRange returns row slices", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "rows.safetensors");
    const values = new Float32Array(4 * 3 * 2).map((_, i) => i);
    await writeSafetensors(path, [
      { name: "f32", dtype: "F32", shape: [4, 3, 2], data: values },
      { name: "bf16", dtype: "BF16", shape: [4, 6], data: values },
      { name: "vector", dtype: "F32", shape: [5], data: new Float32Array([0, 1, 2, 3, 4]) },
    ]);

    await withOpenFile(path, async (file) => {
      assertSameValues(await file.readRange("f32", 1, 3), values.subarray(6, 18), "F32 rows 1..3");
      assertSameValues(await file.readRange("bf16", 3, 4), values.subarray(18, 24), "BF16 row 3");
      assertSameValues(await file.readRange("vector", 2, 4), [2, 3], "1-D slice");
      assert.equal((await file.readRange("f32", 2, 2)).length, 0, "empty row range");
      const raw = await file.readRaw("bf16", { rowStart: 0, rowEnd: 1 });
      assert.equal(raw.length, 6 * 2, "raw BF16 row is 6 elements of 2 bytes");

      const out = new Float32Array(10).fill(-1);
      const filled = await file.readTensor("f32", { rowStart: 0, rowEnd: 1, out });
      assertSameValues(filled, [0, 1, 2, 3, 4, 5], "row read into caller buffer");
      assert.equal(out[6], -1, "caller buffer beyond the rows is untouched");

      for (const [start, end] of [[0, 5], [3, 2], [-1, 1], [0.5, 2]]) {
        await assert.rejects(
          () => file.readRange("f32", start, end),
          /invalid row range .* expected 0 <= rowStart <= rowEnd <= 4/,
          `row range [${start}, ${end}) must be rejected`,
        );
      }
      await assert.rejects(
        () => file.readTensor("f32", { out: new Float32Array(3) }),
        /needs 24 elements but the output array has room for 3/,
      );
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Checkpoint directories.
// ---------------------------------------------------------------------------------------------

async function writeShardedCheckpoint(dir: string): Promise<void> {
  await writeSafetensors(join(dir, "model-00001-of-00002.safetensors"), [
    { name: "wte.weight", dtype: "F32", shape: [4, 2], data: new Float32Array(8).fill(1) },
    { name: "h.0.ln_1.weight", dtype: "F16", shape: [2], data: new Float32Array([0.5, 2]) },
  ]);
  await writeSafetensors(join(dir, "model-00002-of-00002.safetensors"), [
    { name: "h.1.ln_1.weight", dtype: "BF16", shape: [2], data: new Float32Array([3, 4]) },
    { name: "ln_f.bias", dtype: "F32", shape: [2], data: new Float32Array([5, 6]) },
  ]);
  await atomicWriteJson(join(dir, "model.safetensors.index.json"), {
    metadata: { total_size: 48 },
    weight_map: {
      "wte.weight": "model-00001-of-00002.safetensors",
      "h.0.ln_1.weight": "model-00001-of-00002.safetensors",
      "h.1.ln_1.weight": "model-00002-of-00002.safetensors",
      "ln_f.bias": "model-00002-of-00002.safetensors",
    },
  });
}

Deno.test("sharded checkpoint loads through index", async () => {
  await withTempDir(async (dir) => {
    await writeShardedCheckpoint(dir);

    const checkpoint = await openCheckpoint(dir);
    try {
      assert.equal(checkpoint.files.length, 2, "two shards opened");
      assert.equal(checkpoint.indexPath, join(dir, "model.safetensors.index.json"), "index path");
      assert.deepEqual(checkpoint.metadata, { total_size: 48 }, "index metadata");
      assert.deepEqual(
        [...checkpoint.names].sort(),
        ["h.0.ln_1.weight", "h.1.ln_1.weight", "ln_f.bias", "wte.weight"],
        "unified tensor names",
      );
      assert.ok(checkpoint.info("ln_f.bias").file.path.endsWith("00002.safetensors"), "lookup");
      assertSameValues(await checkpoint.readTensor("h.1.ln_1.weight"), [3, 4], "BF16 shard read");
      assertSameValues(await checkpoint.readRange("wte.weight", 3, 4), [1, 1], "row read");

      const streamed: string[] = [];
      for await (const { info, data } of checkpoint) {
        streamed.push(info.name);
        assert.equal(data.length, info.elementCount, `"${info.name}" streamed in full`);
      }
      assert.deepEqual(streamed, checkpoint.names, "iteration follows storage order");
    } finally {
      checkpoint.close();
    }

    const loaded = await loadSafetensorsDir(dir);
    assertSameValues(loaded.get("h.0.ln_1.weight")!, [0.5, 2], "loadSafetensorsDir F16");
    assertSameValues(loaded.get("ln_f.bias")!, [5, 6], "loadSafetensorsDir F32");

    const viaIndexFile = await openCheckpoint(join(dir, "model.safetensors.index.json"));
    assert.equal(viaIndexFile.names.length, 4, "opening the index file directly");
    viaIndexFile.close();
  });
});

Deno.test("single-file checkpoint directory", async () => {
  await withTempDir(async (dir) => {
    await writeSafetensors(
      join(dir, "model.safetensors"),
      [{ name: "w", dtype: "F32", shape: [1], data: new Float32Array([7]) }],
      { step: "12" },
    );
    const checkpoint = await openCheckpoint(dir);
    try {
      assert.equal(checkpoint.indexPath, null, "no index for a single file");
      assert.deepEqual(checkpoint.metadata, { step: "12" }, "file metadata");
      assertSameValues(await checkpoint.readTensor("w"), [7], "value");
      assert.throws(() => checkpoint.info("missing"), /tensor "missing" not found/);
    } finally {
      checkpoint.close();
    }
  });
});

Deno.test("checkpoint index mismatches rejected", async (t) => {
  await t.step("missing shard", async () => {
    await withTempDir(async (dir) => {
      await writeShardedCheckpoint(dir);
      await Deno.remove(join(dir, "model-00002-of-00002.safetensors"));
      await assert.rejects(
        () => openCheckpoint(dir),
        (error: Error) => {
          assert.ok(error instanceof SafetensorsError, "error type");
          assert.match(error.message, /model\.safetensors\.index\.json/, "names the index file");
          assert.match(error.message, /"model-00002-of-00002\.safetensors"/, "names the shard");
          assert.match(error.message, /not found/, "says what is wrong");
          return true;
        },
      );
    });
  });

  await t.step("tensor absent from its shard", async () => {
    await withTempDir(async (dir) => {
      await writeShardedCheckpoint(dir);
      const indexPath = join(dir, "model.safetensors.index.json");
      const index = JSON.parse(await Deno.readTextFile(indexPath));
      index.weight_map["ghost.weight"] = "model-00001-of-00002.safetensors";
      await atomicWriteJson(indexPath, index);
      await assert.rejects(
        () => openCheckpoint(dir),
        /places tensor "ghost\.weight" in shard "model-00001-of-00002\.safetensors", but that shard does not contain it/,
      );
    });
  });

  await t.step("shard tensor missing from index", async () => {
    await withTempDir(async (dir) => {
      await writeShardedCheckpoint(dir);
      const indexPath = join(dir, "model.safetensors.index.json");
      const index = JSON.parse(await Deno.readTextFile(indexPath));
      delete index.weight_map["ln_f.bias"];
      await atomicWriteJson(indexPath, index);
      await assert.rejects(
        () => openCheckpoint(dir),
        /contains tensor "ln_f\.bias", but the index does not list it/,
      );
    });
  });

  await t.step("shard path escaping the directory", async () => {
    await withTempDir(async (dir) => {
      await atomicWriteJson(join(dir, "model.safetensors.index.json"), {
        weight_map: { w: "../elsewhere.safetensors" },
      });
      await assert.rejects(() => openCheckpoint(dir), /must be a path relative to the index/);
    });
  });

  await t.step("empty directory", async () => {
    await withTempDir(async (dir) => {
      await assert.rejects(
        () => openCheckpoint(dir),
        /no checkpoint found; expected model\.safetensors or model\.safetensors\.index\.json/,
      );
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Malformed files.
// ---------------------------------------------------------------------------------------------

const F32_4 = { dtype: "F32", shape: [4] };

interface MalformedCase {
  name: string;
  header: string | object | Uint8Array;
  dataBytes: number;
  declaredHeaderLength?: bigint;
  expected: RegExp;
}

const MALFORMED_CASES: MalformedCase[] = [
  {
    name: "header length too large",
    header: {},
    dataBytes: 0,
    declaredHeaderLength: 2n ** 40n,
    expected: /header length 1099511627776 exceeds the limit of 100000000 bytes/,
  },
  {
    name: "header length beyond file end",
    header: {},
    dataBytes: 0,
    declaredHeaderLength: 1000n,
    expected: /header length 1000 runs past the end of the 10-byte file; .*truncated or corrupt/,
  },
  {
    name: "header not JSON",
    header: "{not json",
    dataBytes: 0,
    expected: /header is not valid JSON/,
  },
  {
    name: "header is a JSON array",
    header: "[1, 2]",
    dataBytes: 0,
    expected: /header must be a JSON object but is an array/,
  },
  {
    name: "header is invalid UTF-8",
    header: new Uint8Array([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x7b, 0x7d, 0x7d]), // {"\xff":{}}
    dataBytes: 0,
    expected: /header is not valid UTF-8/,
  },
  {
    name: "offsets outside the file",
    header: { w: { ...F32_4, data_offsets: [0, 16] } },
    dataBytes: 8,
    expected:
      /tensor "w" has data_offsets \[0, 16\] but the data section is only 8 bytes .*truncated or corrupt, re-download it/,
  },
  {
    name: "reversed offsets",
    header: { w: { ...F32_4, data_offsets: [16, 0] } },
    dataBytes: 16,
    expected: /tensor "w" has reversed data_offsets \[16, 0\]/,
  },
  {
    name: "overlapping tensors",
    header: {
      a: { ...F32_4, data_offsets: [0, 16] },
      b: { ...F32_4, data_offsets: [8, 24] },
    },
    dataBytes: 24,
    expected: /tensor "b" has data_offsets \[8, 24\] which overlap tensor "a" at \[0, 16\]/,
  },
  {
    name: "byte length differs from shape",
    header: { "wte.weight": { dtype: "F32", shape: [10, 20], data_offsets: [0, 100] } },
    dataBytes: 100,
    expected: new RegExp(
      'bad\\.safetensors: tensor "wte\\.weight" has data_offsets \\[0, 100\\] but shape ' +
        "\\[10, 20\\] of F32 needs 800 bytes; the file is truncated or corrupt, re-download it",
    ),
  },
  {
    name: "unknown dtype",
    header: { w: { dtype: "F33", shape: [4], data_offsets: [0, 16] } },
    dataBytes: 16,
    expected: /tensor "w" has unknown dtype "F33"; supported dtypes are BOOL, U8/,
  },
  {
    name: "negative dimension",
    header: { w: { dtype: "F32", shape: [-4], data_offsets: [0, 16] } },
    dataBytes: 16,
    expected: /tensor "w" has invalid shape \[-4\]/,
  },
  {
    name: "missing data_offsets",
    header: { w: { dtype: "F32", shape: [4] } },
    dataBytes: 16,
    expected: /tensor "w" has invalid data_offsets undefined/,
  },
  {
    name: "non-string metadata value",
    header: { __metadata__: { step: 3 } },
    dataBytes: 0,
    expected: /"__metadata__" value for key "step" must be a string but is a number/,
  },
];

Deno.test("malformed files rejected", async (t) => {
  await withTempDir(async (dir) => {
    const path = join(dir, "bad.safetensors");
    for (const testCase of MALFORMED_CASES) {
      await t.step(testCase.name, async () => {
        await writeCraftedFile(
          path,
          testCase.header,
          new Uint8Array(testCase.dataBytes),
          testCase.declaredHeaderLength,
        );
        await assert.rejects(
          () => SafetensorsFile.open(path),
          (error: Error) => {
            assert.ok(error instanceof SafetensorsError, `error type is ${error.name}`);
            assert.ok(error.message.startsWith(path + ": "), `message names the file: ${error}`);
            assert.match(error.message, testCase.expected);
            return true;
          },
        );
      });
    }

    await t.step("file shorter than the length prefix", async () => {
      await Deno.writeFile(path, new Uint8Array(5));
      await assert.rejects(() => SafetensorsFile.open(path), /file is 5 bytes, shorter than/);
    });

    await t.step("truncated data section", async () => {
      await writeSafetensors(path, [
        { name: "a", dtype: "F32", shape: [8], data: new Float32Array(8) },
        { name: "b", dtype: "F32", shape: [8], data: new Float32Array(8) },
      ]);
      await Deno.truncate(path, (await Deno.stat(path)).size - 10);
      await assert.rejects(
        () => SafetensorsFile.open(path),
        /tensor "b" has data_offsets \[32, 64\] but the data section is only 54 bytes/,
      );
    });

    await t.step("missing file", async () => {
      await assert.rejects(
        () => SafetensorsFile.open(join(dir, "absent.safetensors")),
        /absent\.safetensors: cannot open file/,
      );
    });
  });
});

Deno.test("reads stay inside the header and tensor", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "reads.safetensors");
    await writeSafetensors(path, [
      { name: "a", dtype: "F32", shape: [4, 4], data: new Float32Array(16).fill(1) },
      { name: "b", dtype: "F16", shape: [8], data: new Float32Array(8).fill(2) },
    ]);

    const reads: [number, number][] = [];
    const onRead = (position: number, length: number) => reads.push([position, length]);
    const file = await SafetensorsFile.open(path, { onRead });
    try {
      const headerEnd = file.dataStart;
      assert.deepEqual(
        reads,
        [[0, 8], [8, headerEnd - 8]],
        "open reads the prefix and header only",
      );

      reads.length = 0;
      await file.readRange("a", 1, 3);
      const a = file.info("a");
      assert.deepEqual(reads, [[a.filePosition + 16, 32]], "row read fetches exactly rows 1..3");

      reads.length = 0;
      await file.readTensor("b");
      const b = file.info("b");
      assert.deepEqual(reads, [[b.filePosition, 16]], "F16 read fetches exactly its bytes");
      assert.equal(b.filePosition + 16, file.fileSize, "b is the last tensor in the file");
    } finally {
      file.close();
    }

    // A truncated file is rejected from its header alone: no read touches the data section.
    await Deno.truncate(path, (await Deno.stat(path)).size - 1);
    reads.length = 0;
    await assert.rejects(() => SafetensorsFile.open(path, { onRead }), /data_offsets/);
    const headerLength = Number(
      new DataView((await Deno.readFile(path)).buffer).getBigUint64(0, true),
    );
    assert.deepEqual(reads, [[0, 8], [8, headerLength]], "failed open read only prefix and header");
  });
});

Deno.test("closed file rejects reads", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "closed.safetensors");
    await writeSafetensors(path, [{
      name: "w",
      dtype: "F32",
      shape: [1],
      data: new Float32Array(1),
    }]);
    const file = await SafetensorsFile.open(path);
    file.close();
    file.close();
    await assert.rejects(() => file.readTensor("w"), /closed\.safetensors: file is closed/);
  });
});

// ---------------------------------------------------------------------------------------------
// Writing.
// ---------------------------------------------------------------------------------------------

Deno.test("writeSafetensors rejects invalid tensors", async (t) => {
  await withTempDir(async (dir) => {
    const path = join(dir, "out.safetensors");
    await writeSafetensors(path, [{
      name: "old",
      dtype: "F32",
      shape: [1],
      data: new Float32Array([1]),
    }]);
    const original = await Deno.readFile(path);

    const cases: [string, TensorToWrite[], RegExp][] = [
      [
        "element count mismatch",
        [{ name: "w", dtype: "F32", shape: [2, 2], data: new Float32Array(3) }],
        /tensor "w" has 3 elements of data but shape \[2, 2\] needs 4/,
      ],
      [
        "byte count mismatch",
        [{ name: "w", dtype: "F16", shape: [2], data: new Uint8Array(3) }],
        /tensor "w" has 3 bytes of data but shape \[2\] of F16 needs 4/,
      ],
      [
        "array type mismatch",
        [{ name: "w", dtype: "I32", shape: [1], data: new Float32Array(1) }],
        /tensor "w" has dtype I32 but its data is a Float32Array/,
      ],
      [
        "duplicate name",
        [
          { name: "w", dtype: "F32", shape: [1], data: new Float32Array(1) },
          { name: "w", dtype: "F32", shape: [1], data: new Float32Array(1) },
        ],
        /tensor "w" is given more than once/,
      ],
      [
        "reserved name",
        [{ name: "__metadata__", dtype: "F32", shape: [1], data: new Float32Array(1) }],
        /"__metadata__" is reserved/,
      ],
      [
        "producer returns wrong length",
        [{ name: "lazy", dtype: "F32", shape: [4], data: () => new Float32Array(2) }],
        /tensor "lazy" has 2 elements of data but shape \[4\] needs 4/,
      ],
    ];
    for (const [name, tensors, expected] of cases) {
      await t.step(name, async () => {
        await assert.rejects(() => writeSafetensors(path, tensors), expected);
        assert.deepEqual(await Deno.readFile(path), original, "target keeps its old content");
        assert.deepEqual(await listTemporaryFiles(dir), [], "no temporary file is left behind");
      });
    }
  });
});

Deno.test("writeSafetensors streams producer data", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "lazy.safetensors");
    const produced: string[] = [];
    const lazy = (name: string, value: number): TensorToWrite => ({
      name,
      dtype: "F32",
      shape: [3],
      data: async () => {
        produced.push(name);
        await Promise.resolve();
        return new Float32Array(3).fill(value);
      },
    });
    await writeSafetensors(path, [lazy("y", 2), lazy("x", 1)]);
    assert.deepEqual(produced, ["x", "y"], "producers run one at a time in data order");
    await withOpenFile(path, async (file) => {
      assertSameValues(await file.readTensor("x"), [1, 1, 1], "x");
      assertSameValues(await file.readTensor("y"), [2, 2, 2], "y");
    });
  });
});

Deno.test("atomicWriteFile and atomicWriteJson", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "config.json");
    await atomicWriteJson(path, { layers: 12, name: "gpt2" });
    assert.equal(await Deno.readTextFile(path), '{\n  "layers": 12,\n  "name": "gpt2"\n}\n');

    await Deno.chmod(path, 0o600);
    await atomicWriteFile(path, "plain text");
    assert.equal(await Deno.readTextFile(path), "plain text", "string content");
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600, "replacement keeps the file mode");

    const encoder = new TextEncoder();
    await atomicWriteFile(path, [encoder.encode("ab"), encoder.encode("cd")]);
    assert.equal(await Deno.readTextFile(path), "abcd", "chunk array");

    async function* chunks() {
      yield encoder.encode("x");
      yield encoder.encode("yz");
    }
    await atomicWriteFile(path, chunks());
    assert.equal(await Deno.readTextFile(path), "xyz", "async chunks");

    async function* failing() {
      yield encoder.encode("partial");
      throw new Error("producer failed");
    }
    await assert.rejects(() => atomicWriteFile(path, failing()), /producer failed/);
    assert.equal(await Deno.readTextFile(path), "xyz", "failed write keeps the old content");
    assert.deepEqual(await listTemporaryFiles(dir), [], "failed write removes its temporary file");
    await assert.rejects(() => atomicWriteJson(path, undefined), /cannot write undefined as JSON/);
  });
});

// The child writes 16 tensors of 1 MiB each. In "slow" mode it prints a line once the write has
// started and then sleeps 250 ms before producing each tensor, so the parent can kill it while
// the temporary file is partly written.
const CHILD_WRITER = `
const [moduleUrl, target, mode] = Deno.args;
const { writeSafetensors } = await import(moduleUrl);
const tensors = [];
for (let i = 0; i < 16; i++) {
  tensors.push({
    name: "b" + i,
    dtype: "F32",
    shape: [512, 512],
    data: async () => {
      if (mode === "slow") {
        if (i === 0) console.log("writing");
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      return new Float32Array(512 * 512).fill(i + 0.5);
    },
  });
}
await writeSafetensors(target, tensors, { version: "B" });
console.log("done");
`;

Deno.test("write killed midway leaves old file intact", async () => {
  await withTempDir(async (dir) => {
    const target = join(dir, "model.safetensors");
    const script = join(dir, "child_writer.js");
    await Deno.writeTextFile(script, CHILD_WRITER);
    const moduleUrl = new URL("../io/safetensors.ts", import.meta.url).href;

    const versionA = new Float32Array(1000).map((_, i) => i * 0.25);
    await writeSafetensors(target, [{ name: "a", dtype: "F32", shape: [1000], data: versionA }], {
      version: "A",
    });
    const bytesA = await Deno.readFile(target);

    const runChild = (mode: string) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "--quiet", "--allow-read", "--allow-write", script, moduleUrl, target, mode],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();

    const child = runChild("slow");
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let output = "";
    while (!output.includes("writing\n")) {
      const { value, done } = await lines.read();
      assert.ok(!done, `child exited before it started writing; output: ${output}`);
      output += value;
    }
    // "writing" is printed after the header went to the temporary file, so the file has data.
    const temporaryFiles = await listTemporaryFiles(dir);
    assert.equal(temporaryFiles.length, 1, "the child is writing one temporary file");
    const partialSize = (await Deno.stat(join(dir, temporaryFiles[0]))).size;
    assert.ok(partialSize > 0, "the temporary file has content before the kill");

    child.kill("SIGKILL");
    const status = await child.status;
    await lines.cancel();
    assert.equal(status.success, false, "child was killed");
    assert.equal(status.signal, "SIGKILL", "child died from SIGKILL");

    assert.deepEqual(await Deno.readFile(target), bytesA, "target still has the bytes of A");
    await withOpenFile(target, async (file) => {
      assert.deepEqual(file.names, ["a"], "target parses as A");
      assert.equal(file.metadata.version, "A", "target metadata is A");
      assertSameValues(await file.readTensor("a"), versionA, "A values (exact)");
    });
    const leftover = (await Deno.stat(join(dir, temporaryFiles[0]))).size;
    assert.ok(leftover < 16 * 512 * 512 * 4, "the killed write was incomplete");

    const finisher = runChild("fast");
    const result = await finisher.output();
    assert.ok(result.success, "second child finished");
    assert.match(new TextDecoder().decode(result.stdout), /done/);
    await withOpenFile(target, async (file) => {
      assert.equal(file.metadata.version, "B", "target is now B");
      assert.equal(file.names.length, 16, "B has 16 tensors");
      for (let i = 0; i < 16; i++) {
        const values = await file.readTensor(`b${i}`);
        assert.ok(values.every((value) => value === i + 0.5), `b${i} values (exact)`);
      }
    });
    assert.deepEqual(
      await listTemporaryFiles(dir),
      temporaryFiles,
      "the completed write leaves no temporary file of its own",
    );
  });
});
