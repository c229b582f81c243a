// PTB-style caption tokenization, applied to every caption before the metrics score it.

/**
 * Tokenizes one caption the way the COCO caption evaluation prepares captions: lowercase,
 * Penn Treebank (PTB) token boundaries, and punctuation tokens removed.
 *
 * The COCO tooling (pycocoevalcap) runs the Java Stanford PTBTokenizer from CoreNLP 3.4.1
 * with `-preserveLines -lowerCase` and then drops the tokens '' ' `` ` -LRB- -RRB- -LCB- -RCB-
 * . ? ! , : - -- ... ;. This function is a rule-based reimplementation, not a port. It agrees
 * with that pipeline on plain captions: words, hyphenated words, numbers, contractions and
 * ordinary punctuation. It differs in these cases:
 *
 * - Brackets ( ) [ ] { } < > are dropped. The Java tokenizer turns them into bracket tokens
 *   such as -LRB- and -LCB-, and `-lowerCase` then lowercases those to -lrb- and -lcb-. COCO's
 *   removal list contains only the uppercase forms, so the Java pipeline keeps them as words.
 * - A run of marks such as "!!", "?!" or "-----" is dropped. The Java lexer returns such a
 *   run as one token, which COCO's list of single marks does not remove.
 * - A period stays on letter-period acronyms ("u.s.", "a.m.") and on a short list of
 *   abbreviations (mr. mrs. ms. dr. st. mt. jr. sr. vs. etc. prof. ave.). Elsewhere it is
 *   split off and dropped. The Java lexer lists many more abbreviations, keeps the period on
 *   a single letter ("b."), and decides on the original case because it lowercases only
 *   after tokenizing, so "St. Louis" and "st. louis" can come out differently there.
 * - Words joined by a slash stay one token ("and/or"). Older CoreNLP releases escape slashes
 *   and asterisks as "\/" and "\*" by default and later ones do not. This tokenizer never does.
 * - Other symbols ($ % & # @ * + = ~ ^ _ and any other character that is not a letter, digit
 *   or mark) become one-character tokens and are kept, as the Java pipeline keeps the
 *   symbols it recognizes. Characters the Java lexer does not recognize, such as most emoji, are
 *   deleted there and kept here.
 * - Apostrophes inside a word that are not a contraction stay in the word ("o'clock",
 *   "rock'n'roll"). The Java lexer has word lists for these and may split some of them.
 * - No spelling normalization, currency mapping (the Java lexer turns £ into #), URL, e-mail,
 *   phone number, date or fraction rules. Signed numbers lose their sign ("-5" -> "5").
 *
 * NOTE: The CoreNLP behaviour described here comes from reading PTBLexer.flex and
 * PTBTokenizer.java of CoreNLP releases from before and after 3.4.1, not 3.4.1 itself,
 * and nothing here was run against the 3.4.1 jar.
 */
export function tokenizeCaption(caption: string): string[] {
  const text = normalizeCharacters(caption.toLowerCase());
  const tokens: string[] = [];

  for (const match of text.matchAll(TOKEN_PATTERN)) {
    const token = match[0];
    if (isDroppedPunctuation(token)) continue;
    if (token.startsWith("'") && token.length > 1) {
      // A stand-alone contraction such as "'s" in already tokenized text.
      tokens.push(token);
      continue;
    }
    pushWordTokens(token, tokens);
  }
  return tokens;
}

/** Splits a caption that is already tokenized on runs of whitespace, as Python's str.split(). */
export function splitTokens(caption: string): string[] {
  const tokens = caption.split(WHITESPACE_RUN);
  if (tokens.length > 0 && tokens[0] === "") tokens.shift();
  if (tokens.length > 0 && tokens[tokens.length - 1] === "") tokens.pop();
  return tokens;
}

const WHITESPACE_RUN = /\s+/u;

// Abbreviations that keep their period, a small subset of the CoreNLP lists that is common
// in captions.
const ABBREVIATIONS = "mrs|mr|ms|dr|st|mt|jr|sr|vs|etc|prof|ave";

const WORD_CHARACTER = String.raw`[\p{L}\p{N}\p{M}]`;

// Alternatives in priority order. Each match is one candidate token. Whitespace never
// matches, so it only separates tokens.
const TOKEN_PATTERN = new RegExp(
  [
    // Acronym of single letters joined by periods: "u.s.", "a.m", "e.g.".
    String.raw`\p{L}(?:\.\p{L})+\.?(?!${WORD_CHARACTER})`,
    // Abbreviation that keeps its period.
    String.raw`(?:${ABBREVIATIONS})\.(?!${WORD_CHARACTER})`,
    // Number with decimal, thousands or time separators: "3.5", "1,000", "10:30".
    String.raw`\p{N}+(?:[.,:]\p{N}+)+`,
    // Stand-alone contraction suffix, as in already tokenized "dog 's".
    String.raw`'(?:s|m|d|re|ve|ll)(?!${WORD_CHARACTER})`,
    // Word, with inner hyphens, underscores, slashes and apostrophes kept: "t-shirt",
    // "and/or", "don't". Contractions are split off afterwards.
    String.raw`${WORD_CHARACTER}+(?:['\-_/]${WORD_CHARACTER}+)*`,
    // Any other single character, punctuation or symbol.
    String.raw`\S`,
  ].join("|"),
  "gu",
);

// Characters rewritten before matching, so that Unicode quotes, dashes and the ellipsis
// behave like their ASCII forms, as the PTB lexer's normalization does.
const CHARACTER_REPLACEMENTS: ReadonlyArray<[RegExp, string]> = [
  [/[\u2018\u2019\u201A\u201B\u2032]/gu, "'"],
  [/[\u201C\u201D\u201E\u201F\u2033\u00AB\u00BB]/gu, '"'],
  [/[\u2010\u2011]/gu, "-"],
  // Dashes between words separate them, unlike a hyphen inside a word.
  [/[\u2012-\u2015\u2212]/gu, " -- "],
  [/\u2026/gu, " ... "],
  // Zero-width characters and the byte order mark carry no text.
  [/[\u200B-\u200F\u2060\uFEFF]/gu, ""],
];

function normalizeCharacters(text: string): string {
  let result = text;
  for (const [pattern, replacement] of CHARACTER_REPLACEMENTS) {
    result = result.replace(pattern, replacement);
  }
  return result;
}

// Marks that the COCO pipeline removes after PTB tokenization, plus the brackets and the
// characters that the PTB lexer treats as whitespace (| and \).
const DROPPED_CHARACTERS = new Set(".,;:!?'\"`-()[]{}<>|\\\u00A1\u00BF");

function isDroppedPunctuation(token: string): boolean {
  // Only one-character tokens can be punctuation, because TOKEN_PATTERN returns every
  // mark as a token of its own.
  return token.length === 1 && DROPPED_CHARACTERS.has(token);
}

/**
 * Appends a matched word to `tokens`, splitting off PTB contractions: "don't" -> "do n't",
 * "can't" -> "ca n't", "dog's" -> "dog 's", "they're" -> "they 're", "cannot" -> "can not",
 * "shouldn't've" -> "should n't 've".
 */
function pushWordTokens(word: string, tokens: string[]): void {
  if (word === "cannot") {
    tokens.push("can", "not");
    return;
  }
  if (!word.includes("'")) {
    tokens.push(word);
    return;
  }

  const suffix = CONTRACTION_SUFFIX.exec(word);
  if (suffix !== null && suffix.index > 0) {
    pushWordTokens(word.slice(0, suffix.index), tokens);
    tokens.push(suffix[0]);
    return;
  }
  tokens.push(word);
}

// "n't" takes the n from the word before it, as in PTB ("do n't", "ca n't").
const CONTRACTION_SUFFIX = /(?:n't|'(?:s|m|d|re|ve|ll))$/u;
