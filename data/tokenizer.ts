// Caption tokenizers stored as Hugging Face tokenizer.json files. Encoding and decoding run in
// @huggingface/tokenizers (tokenizers.js), which reads GPT-2 style byte-level BPE natively
// and the WordLevel model of our small test models through its vocabulary-only fallback.
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
// deno-lint-ignore no-import-prefix -- pinned here because deno.json maps only imagescript
import { Tokenizer as TokenizersJs } from "@huggingface/tokenizers";

export interface Tokenizer {
  /** Returns the token ids of `text`, without special tokens. */
  encode(text: string): number[];
  /** Returns the text of `ids` without EOS and padding tokens; unknown-word tokens stay. */
  decode(ids: readonly number[]): string;
  /** One more than the largest token id: the number of embedding rows a model needs. */
  readonly vocabSize: number;
  readonly eosTokenId: number;
  readonly padTokenId: number;
}

/** GPT-2's end-of-text token; our word-level tokenizers use it for EOS and padding too. */
export const EOS_TOKEN = "<|endoftext|>";
export const UNK_TOKEN = "<|unk|>";

/** The parsed content of a Hugging Face tokenizer.json. */
export type TokenizerJson = {
  added_tokens?: { id: number; content: string; special?: boolean }[];
  model: { type?: string; vocab: Record<string, number> | unknown[]; unk_token?: string | null };
  [key: string]: unknown;
};
/** The parsed content of tokenizer_config.json (eos_token, pad_token, unk_token, ...). */
export type TokenizerConfig = Record<string, unknown>;

/** A tokenizer defined by tokenizer.json and the optional tokenizer_config.json. */
export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly eosTokenId: number;
  readonly padTokenId: number;
  private readonly engine: TokenizersJs;
  private readonly wordLevel: boolean;

  constructor(readonly tokenizerJson: TokenizerJson, readonly config: TokenizerConfig = {}) {
    const model = tokenizerJson.model;
    // tokenizers.js takes the unknown-word token of vocabulary-only models from the config.
    this.engine = new TokenizersJs(tokenizerJson, {
      unk_token: model.unk_token ?? undefined,
      ...config,
    });
    this.wordLevel = model.type === "WordLevel";
    this.vocabSize = largestId(tokenizerJson) + 1;
    this.eosTokenId = this.requireId(tokenName(config.eos_token) ?? EOS_TOKEN, "eos_token");
    const pad = tokenName(config.pad_token);
    this.padTokenId = pad === undefined ? this.eosTokenId : this.requireId(pad, "pad_token");
  }

  encode(text: string): number[] {
    const { ids, tokens } = this.engine.encode(text, { add_special_tokens: false });
    const unknown = ids.findIndex((id) => typeof id !== "number");
    if (unknown >= 0) {
      throw new Error(
        `token "${
          tokens[unknown]
        }" of "${text}" has no id and the tokenizer has no unk_token; add unk_token to tokenizer.json`,
      );
    }
    return ids;
  }

  decode(ids: readonly number[]): string {
    const kept = ids.filter((id) => id !== this.eosTokenId && id !== this.padTokenId);
    if (kept.length === 0) return ""; // tokenizers.js rejects an empty id list.
    const text = this.engine.decode(kept, { skip_special_tokens: false });
    return this.wordLevel ? attachPunctuation(text) : text;
  }

  /** Splits text into normalized words and punctuation, as encode does before the lookup. */
  words(text: string): string[] {
    return this.engine.tokenize(text);
  }

  /** Writes tokenizer.json and tokenizer_config.json into `dir`, creating it if needed. */
  save(dir: string): void {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(this.tokenizerJson, null, 2) + "\n");
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify(this.config, null, 2) + "\n");
  }

  private requireId(token: string, field: string): number {
    const id = this.engine.token_to_id(token);
    if (id === undefined) {
      throw new Error(
        `${field} "${token}" is not in the tokenizer vocabulary; set ${field} in tokenizer_config.json`,
      );
    }
    return id;
  }
}

function tokenName(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (typeof value === "object" && value !== null && "content" in value) {
    return String(value.content);
  }
  return undefined;
}

function largestId(json: TokenizerJson): number {
  const vocab = json.model.vocab;
  const modelIds = Array.isArray(vocab) ? [vocab.length - 1] : Object.values(vocab);
  const addedIds = (json.added_tokens ?? []).map((token) => token.id);
  return Math.max(-1, ...modelIds, ...addedIds);
}

// tokenizers.js already joins "a cat ." to "a cat." and "cat ' s" to "cat's" in its
// clean_up_tokenization step. This also attaches brackets, colons, semicolons and hyphens.
function attachPunctuation(text: string): string {
  return text
    .replace(/ ([;:%)\]}])/g, "$1")
    .replace(/([(\[{$]) /g, "$1")
    .replace(/(\w) - (?=\w)/g, "$1-");
}

/**
 * Reads tokenizer.json (and tokenizer_config.json when present) from a folder, or from the
 * tokenizer.json path itself. Works for WordLevel and byte-level BPE (GPT-2) tokenizers.
 */
export function loadTokenizer(pathOrDir: string): HfTokenizer {
  const isDir = existsSync(pathOrDir) && statSync(pathOrDir).isDirectory();
  const file = isDir ? join(pathOrDir, "tokenizer.json") : pathOrDir;
  if (!existsSync(file)) {
    throw new Error(
      `tokenizer file ${file} not found; pass a folder with tokenizer.json or build one with buildWordLevelTokenizer`,
    );
  }
  const configFile = join(isDir ? pathOrDir : join(file, ".."), "tokenizer_config.json");
  const config = existsSync(configFile) ? JSON.parse(readFileSync(configFile, "utf8")) : {};
  return new HfTokenizer(JSON.parse(readFileSync(file, "utf8")), config);
}

export interface WordLevelOptions {
  /** Words seen fewer times than this map to <|unk|> (default 1: keep every word). */
  minCount?: number;
}

/**
 * Builds a word-level tokenizer from captions, which are lowercased and split into words and
 * punctuation runs (`\w+|[^\w\s]+` with Unicode word characters). Ids 0 and 1 are
 * <|endoftext|> and <|unk|>. Words follow by descending count, with ties in code-point order,
 * so the same captions always give the same ids.
 */
export function buildWordLevelTokenizer(
  captions: Iterable<string>,
  options: WordLevelOptions = {},
): HfTokenizer {
  const minCount = options.minCount ?? 1;
  const splitter = new HfTokenizer(
    wordLevelJson({ [EOS_TOKEN]: 0, [UNK_TOKEN]: 1 }),
    wordLevelConfig(),
  );
  const counts = new Map<string, number>();
  for (const caption of captions) {
    for (const word of splitter.words(caption)) counts.set(word, (counts.get(word) ?? 0) + 1);
  }
  const words = [...counts]
    .filter(([word, count]) => count >= minCount && word !== EOS_TOKEN && word !== UNK_TOKEN)
    .sort(([a, countA], [b, countB]) => countB - countA || compareCodePoints(a, b))
    .map(([word]) => word);
  const vocab: Record<string, number> = { [EOS_TOKEN]: 0, [UNK_TOKEN]: 1 };
  words.forEach((word, index) => (vocab[word] = index + 2));
  return new HfTokenizer(wordLevelJson(vocab), wordLevelConfig());
}

// Locale-independent order, unlike localeCompare.
function compareCodePoints(a: string, b: string): number {
  if (a < b) return -1;
  if (a > b) return 1;
  return 0;
}

function specialToken(id: number, content: string) {
  return {
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  };
}

function wordLevelJson(vocab: Record<string, number>): TokenizerJson {
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [specialToken(0, EOS_TOKEN), specialToken(1, UNK_TOKEN)],
    normalizer: { type: "Lowercase" },
    // The rule of the standard "Whitespace" pre-tokenizer, spelled as a Split so that
    // tokenizers.js 0.2.0 applies Unicode \w (its Whitespace class matches ASCII \w only).
    pre_tokenizer: {
      type: "Split",
      pattern: { Regex: "\\w+|[^\\w\\s]+" },
      behavior: "Removed",
      invert: true,
    },
    post_processor: null,
    decoder: null,
    model: { type: "WordLevel", vocab, unk_token: UNK_TOKEN },
  };
}

function wordLevelConfig(): TokenizerConfig {
  return {
    tokenizer_class: "PreTrainedTokenizerFast",
    bos_token: EOS_TOKEN,
    eos_token: EOS_TOKEN,
    pad_token: EOS_TOKEN,
    unk_token: UNK_TOKEN,
    clean_up_tokenization_spaces: true,
  };
}
