import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadDefaultDataset } from "../data/dataset.ts";
import { buildWordLevelTokenizer, EOS_TOKEN, loadTokenizer, UNK_TOKEN } from "../data/tokenizer.ts";

const CAPTIONS = ["A cat sits on the mat.", "A dog sits on a rug.", "The cat, the dog!"];

function withTempDir(run: (dir: string) => void): () => void {
  return () => {
    const dir = mkdtempSync(join(tmpdir(), "tokenizer-test-"));
    try {
      run(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

Deno.test("build orders vocab by count then text", () => {
  const tokenizer = buildWordLevelTokenizer(CAPTIONS);
  const vocab = tokenizer.tokenizerJson.model.vocab as Record<string, number>;
  // Counts: "a" and "the" 3 each, ".", "cat", "dog", "on", "sits" 2 each, the rest 1.
  // Ties are in code-point order.
  assert.deepEqual(Object.entries(vocab).sort((x, y) => x[1] - y[1]).map(([word]) => word), [
    EOS_TOKEN,
    UNK_TOKEN,
    "a",
    "the",
    ".",
    "cat",
    "dog",
    "on",
    "sits",
    "!",
    ",",
    "mat",
    "rug",
  ]);
  assert.equal(tokenizer.vocabSize, 13);
});

Deno.test("build minCount drops rare words", () => {
  const tokenizer = buildWordLevelTokenizer(CAPTIONS, { minCount: 2 });
  const vocab = tokenizer.tokenizerJson.model.vocab as Record<string, number>;
  assert.deepEqual(Object.keys(vocab), [
    EOS_TOKEN,
    UNK_TOKEN,
    "a",
    "the",
    ".",
    "cat",
    "dog",
    "on",
    "sits",
  ]);
  assert.equal(tokenizer.vocabSize, 9);
});

Deno.test("special token ids", () => {
  const tokenizer = buildWordLevelTokenizer(CAPTIONS);
  assert.equal(tokenizer.eosTokenId, 0);
  assert.equal(tokenizer.padTokenId, 0);
  assert.equal(tokenizer.encode(UNK_TOKEN)[0], 1);
});

Deno.test("encode lowercases and splits punctuation", () => {
  const tokenizer = buildWordLevelTokenizer(CAPTIONS);
  assert.deepEqual(tokenizer.words("The CAT, sits."), ["the", "cat", ",", "sits", "."]);
  assert.deepEqual(tokenizer.encode("The CAT, sits."), [3, 5, 10, 8, 4]);
});

Deno.test("encode unknown word gives unk", () => {
  const tokenizer = buildWordLevelTokenizer(CAPTIONS);
  assert.deepEqual(tokenizer.encode("a zebra sits"), [2, 1, 8]);
});

Deno.test("decode attaches punctuation", () => {
  const tokenizer = buildWordLevelTokenizer([...CAPTIONS, "a (red) t-shirt: it's here; ok"]);
  const ids = tokenizer.encode("A (red) t-shirt: it's on the mat, ok!");
  assert.equal(tokenizer.decode(ids), "a (red) t-shirt: it's on the mat, ok!");
});

Deno.test("decode drops EOS and padding", () => {
  const tokenizer = buildWordLevelTokenizer(CAPTIONS);
  const ids = [...tokenizer.encode("a cat sits."), tokenizer.eosTokenId, tokenizer.padTokenId];
  assert.equal(tokenizer.decode(ids), "a cat sits.");
  assert.equal(tokenizer.decode([tokenizer.eosTokenId]), "");
  assert.equal(tokenizer.decode([]), "");
  assert.equal(tokenizer.decode(tokenizer.encode("a zebra")), `a ${UNK_TOKEN}`);
});

Deno.test(
  "tokenizer.json round trip",
  withTempDir((dir) => {
    const built = buildWordLevelTokenizer(CAPTIONS);
    built.save(dir);
    const json = JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8"));
    assert.equal(json.model.type, "WordLevel");
    assert.equal(json.model.unk_token, UNK_TOKEN);
    assert.deepEqual(json.model.vocab, built.tokenizerJson.model.vocab);
    assert.deepEqual(json.normalizer, { type: "Lowercase" });
    assert.equal(json.pre_tokenizer.type, "Split");
    const config = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8"));
    assert.equal(config.eos_token, EOS_TOKEN);

    const loaded = loadTokenizer(dir);
    assert.equal(loaded.vocabSize, built.vocabSize);
    assert.equal(loaded.eosTokenId, built.eosTokenId);
    assert.equal(loaded.padTokenId, built.padTokenId);
    for (const text of [...CAPTIONS, "An unseen caption!"]) {
      assert.deepEqual(loaded.encode(text), built.encode(text));
    }
    // Without tokenizer_config.json the unk token still comes from the model section.
    rmSync(join(dir, "tokenizer_config.json"));
    assert.deepEqual(loadTokenizer(join(dir, "tokenizer.json")).encode("a zebra"), [2, 1]);
  }),
);

Deno.test(
  "loadTokenizer missing file error",
  withTempDir((dir) => {
    assert.throws(() => loadTokenizer(dir), {
      message: new RegExp(`^tokenizer file ${join(dir, "tokenizer.json")} not found`),
    });
  }),
);

// GPT-2's byte-to-character table: printable bytes map to themselves, others above U+0100.
function byteLevelAlphabet(): string[] {
  const printable = (b: number) =>
    (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  let shifted = 0;
  return Array.from(
    { length: 256 },
    (_, b) => String.fromCodePoint(printable(b) ? b : 256 + shifted++),
  );
}

Deno.test(
  "loadTokenizer reads GPT-2 style BPE",
  withTempDir((dir) => {
    const alphabet = byteLevelAlphabet();
    const vocab: Record<string, number> = {};
    alphabet.forEach((char, id) => (vocab[char] = id));
    const merges = ["Ġ c", "Ġc a", "Ġca t", "a t"];
    merges.forEach((merge, index) => (vocab[merge.replace(" ", "")] = 256 + index));
    vocab[EOS_TOKEN] = 260;
    const byteLevel = {
      type: "ByteLevel",
      add_prefix_space: false,
      trim_offsets: true,
      use_regex: true,
    };
    writeFileSync(
      join(dir, "tokenizer.json"),
      JSON.stringify({
        version: "1.0",
        truncation: null,
        padding: null,
        added_tokens: [{
          id: 260,
          content: EOS_TOKEN,
          single_word: false,
          lstrip: false,
          rstrip: false,
          normalized: true,
          special: true,
        }],
        normalizer: null,
        pre_tokenizer: byteLevel,
        post_processor: byteLevel,
        decoder: byteLevel,
        model: {
          type: "BPE",
          dropout: null,
          unk_token: null,
          continuing_subword_prefix: "",
          end_of_word_suffix: "",
          fuse_unk: false,
          byte_fallback: false,
          vocab,
          merges,
        },
      }),
    );
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ eos_token: EOS_TOKEN }));

    const tokenizer = loadTokenizer(dir);
    // Ids 0-255 are the byte characters in byte order, so "a" is 97 and "Ġ" (a space) is 32.
    // " cat" merges fully (id 258), and " sat" only merges "at" (id 259).
    assert.deepEqual(tokenizer.encode("a cat sat"), [97, 258, 32, 115, 259]);
    assert.equal(tokenizer.eosTokenId, 260);
    assert.equal(tokenizer.padTokenId, 260);
    assert.equal(tokenizer.vocabSize, 261);
    const text = "Ünïcode cat, 42!";
    assert.equal(tokenizer.decode([...tokenizer.encode(text), 260]), text);
  }),
);

Deno.test("shipped train captions vocab size", async () => {
  const dataset = await loadDefaultDataset();
  const tokenizer = buildWordLevelTokenizer(dataset.captions("train"), { minCount: 2 });
  assert.equal(tokenizer.vocabSize, 589);
});
