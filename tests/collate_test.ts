import assert from "node:assert/strict";
import { collate } from "../data/collate.ts";
import type { Tokenizer } from "../data/tokenizer.ts";

// One id per word (1 + word length), so expected ids are easy to write. EOS and padding are 0.
const tokenizer: Tokenizer = {
  encode: (text) => text.split(" ").filter((word) => word !== "").map((word) => 1 + word.length),
  decode: () => "",
  vocabSize: 100,
  eosTokenId: 0,
  padTokenId: 0,
};

// The tokenizer above shares id 0 between EOS and padding, as GPT-2 does. This one gives them
// distinct ids, so each can be checked on its own.
const distinctPad: Tokenizer = { ...tokenizer, eosTokenId: 99, padTokenId: 98 };

function embedding(value: number, dim = 4): Float32Array {
  return new Float32Array(dim).fill(value);
}

function row<T extends Int32Array | Float32Array>(
  array: T,
  index: number,
  seqLen: number,
): number[] {
  return Array.from(array.subarray(index * seqLen, (index + 1) * seqLen));
}

Deno.test("collate ends captions with learned EOS", () => {
  const batch = collate([{ embedding: embedding(1), caption: "a cat" }], distinctPad, {
    maxLen: 16,
  });
  assert.deepEqual(row(batch.inputIds, 0, batch.seqLen), [2, 4, 99, 98, 98, 98, 98, 98]);
  assert.deepEqual(row(batch.attentionMask, 0, batch.seqLen), [1, 1, 1, 0, 0, 0, 0, 0]);
  assert.deepEqual(Array.from(batch.lengths), [3]);
});

Deno.test("collate masks EOS that equals pad id", () => {
  // GPT-2 style: EOS and padding are both id 0, so only the mask marks the real EOS.
  const batch = collate([{ embedding: embedding(1), caption: "a b" }], tokenizer, { maxLen: 16 });
  assert.deepEqual(row(batch.inputIds, 0, batch.seqLen), [2, 2, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(row(batch.attentionMask, 0, batch.seqLen), [1, 1, 1, 0, 0, 0, 0, 0]);
});

Deno.test("collate pads and masks shorter captions", () => {
  const batch = collate(
    [
      { embedding: embedding(1), caption: "a b c d e f g h i" },
      { embedding: embedding(2), caption: "xy" },
    ],
    distinctPad,
    { maxLen: 32 },
  );
  // The longest caption is 9 words + EOS = 10 tokens, rounded up to 16.
  assert.equal(batch.seqLen, 16);
  assert.deepEqual(Array.from(batch.lengths), [10, 2]);
  assert.deepEqual(row(batch.inputIds, 1, 16), [3, 99, ...Array(14).fill(98)]);
  assert.deepEqual(row(batch.attentionMask, 1, 16), [1, 1, ...Array(14).fill(0)]);
  assert.deepEqual(row(batch.attentionMask, 0, 16), [...Array(10).fill(1), ...Array(6).fill(0)]);
});

Deno.test("collate truncation keeps EOS at maxLen", () => {
  const batch = collate(
    [{ embedding: embedding(1), caption: "a b c d e f g h i j" }],
    distinctPad,
    { maxLen: 6 },
  );
  assert.equal(batch.seqLen, 6);
  assert.deepEqual(row(batch.inputIds, 0, 6), [2, 2, 2, 2, 2, 99]);
  assert.deepEqual(row(batch.attentionMask, 0, 6), [1, 1, 1, 1, 1, 1]);
  assert.deepEqual(Array.from(batch.lengths), [6]);
});

Deno.test("collate padMultiple rounding capped at maxLen", () => {
  const sample = { embedding: embedding(1), caption: "a b c d e" }; // 6 tokens with EOS
  assert.equal(collate([sample], tokenizer, { maxLen: 40 }).seqLen, 8);
  assert.equal(collate([sample], tokenizer, { maxLen: 40, padMultiple: 4 }).seqLen, 8);
  assert.equal(collate([sample], tokenizer, { maxLen: 40, padMultiple: 1 }).seqLen, 6);
  assert.equal(collate([sample], tokenizer, { maxLen: 7 }).seqLen, 7);
});

Deno.test("collate one-sample batch", () => {
  const batch = collate([{ embedding: embedding(0.5, 3), caption: "hello" }], tokenizer, {
    maxLen: 8,
  });
  assert.equal(batch.batchSize, 1);
  assert.equal(batch.embedDim, 3);
  assert.deepEqual(Array.from(batch.imgEmb), [0.5, 0.5, 0.5]);
  assert.equal(batch.inputIds.length, batch.seqLen);
  assert.equal(batch.attentionMask.length, batch.seqLen);
});

Deno.test("collate embeddings row-major", () => {
  const batch = collate(
    [{ embedding: embedding(1, 2), caption: "a" }, { embedding: embedding(2, 2), caption: "b" }],
    tokenizer,
    { maxLen: 8 },
  );
  assert.deepEqual(Array.from(batch.imgEmb), [1, 1, 2, 2]);
});

Deno.test("collate rejects invalid input", () => {
  assert.throws(() => collate([], tokenizer, { maxLen: 8 }), /at least one sample/);
  assert.throws(
    () => collate([{ embedding: embedding(1), caption: "a" }], tokenizer, { maxLen: 0 }),
    /invalid maxLen 0/,
  );
  assert.throws(
    () =>
      collate(
        [{ embedding: embedding(1, 2), caption: "a" }, {
          embedding: embedding(1, 3),
          caption: "b",
        }],
        tokenizer,
        { maxLen: 8 },
      ),
    /embedding size mismatch: sample 1 has 3 values but sample 0 has 2/,
  );
});
