// PTB-style caption tokenization: one table of input -> expected tokens per kind of case.

import assert from "node:assert/strict";

import { splitTokens, tokenizeCaption } from "../metrics/tokenize.ts";

function checkCases(cases: ReadonlyArray<[string, string]>): void {
  for (const [input, expected] of cases) {
    assert.equal(tokenizeCaption(input).join(" "), expected, `tokenizing ${JSON.stringify(input)}`);
  }
}

Deno.test("tokenizeCaption drops punctuation", () => {
  checkCases([
    ["a dog on the grass.", "a dog on the grass"],
    ["a dog, a cat; and a bird: all here!", "a dog a cat and a bird all here"],
    ["is it a dog?", "is it a dog"],
    ["what?! wow!!", "what wow"],
    ["a cat.a dog", "a cat a dog"],
  ]);
});

Deno.test("tokenizeCaption drops quotes", () => {
  checkCases([
    ['a sign that says "stop"', "a sign that says stop"],
    ["a sign that says 'stop'", "a sign that says stop"],
    ["a ``quoted'' word", "a quoted word"],
    ["a \u201Ccurly\u201D and \u2018single\u2019 quote", "a curly and single quote"],
    ["the dogs' bowls", "the dogs bowls"],
  ]);
});

Deno.test("tokenizeCaption drops brackets", () => {
  checkCases([
    ["a cat (black) on a mat", "a cat black on a mat"],
    ["a [red] {blue} <green> ball", "a red blue green ball"],
  ]);
});

Deno.test("tokenizeCaption splits contractions", () => {
  checkCases([
    ["a dog's toy", "a dog 's toy"],
    ["the dog doesn't move", "the dog does n't move"],
    ["i can't see", "i ca n't see"],
    ["it won't stop", "it wo n't stop"],
    ["they're here and we've left", "they 're here and we 've left"],
    ["i'm sure he'd go and she'll stay", "i 'm sure he 'd go and she 'll stay"],
    ["it shouldn't've been", "it should n't 've been"],
    ["you cannot park", "you can not park"],
    ["it\u2019s a cat", "it 's a cat"],
    ["the mother-in-law's car", "the mother-in-law 's car"],
  ]);
});

Deno.test("tokenizeCaption keeps tokenized contractions", () => {
  checkCases([
    ["a dog 's toy", "a dog 's toy"],
    ["the dog does n't move", "the dog does n't move"],
    ["they 're here", "they 're here"],
  ]);
});

Deno.test("tokenizeCaption keeps word-internal marks", () => {
  checkCases([
    ["a man in a t-shirt", "a man in a t-shirt"],
    ["a black-and-white photo", "a black-and-white photo"],
    ["at five o'clock", "at five o'clock"],
    ["a cat and/or a dog", "a cat and/or a dog"],
    ["1,000 people and 3.5 dogs at 10:30", "1,000 people and 3.5 dogs at 10:30"],
  ]);
});

Deno.test("tokenizeCaption handles hyphen runs", () => {
  checkCases([
    ["a dog - a cat", "a dog a cat"],
    ["a dog -- a cat", "a dog a cat"],
    ["a dog --- a cat ----- end", "a dog a cat end"],
    ["a dog\u2014a cat \u2013 a bird", "a dog a cat a bird"],
    ["-dash at start and end-", "dash at start and end"],
  ]);
});

Deno.test("tokenizeCaption handles ellipsis", () => {
  checkCases([
    ["a dog...", "a dog"],
    ["a dog ... and a cat", "a dog and a cat"],
    ["a dog\u2026 a cat", "a dog a cat"],
    ["a dog.... a cat", "a dog a cat"],
  ]);
});

Deno.test("tokenizeCaption collapses whitespace", () => {
  checkCases([
    ["  a   dog \t on\nthe   grass  ", "a dog on the grass"],
    ["a\u00A0dog", "a dog"],
    ["", ""],
    ["   ", ""],
    ["...", ""],
  ]);
});

Deno.test("tokenizeCaption lowercases", () => {
  checkCases([
    ["A Dog On The GRASS", "a dog on the grass"],
    ["CAFÉ Naïve", "café naïve"],
  ]);
});

Deno.test("tokenizeCaption keeps abbreviations", () => {
  checkCases([
    ["a u.s. flag", "a u.s. flag"],
    ["a clock at 10 a.m.", "a clock at 10 a.m."],
    ["mr. smith on main st.", "mr. smith on main st."],
    ["the first.", "the first"],
  ]);
});

Deno.test("tokenizeCaption keeps symbols", () => {
  checkCases([
    ["a 50% discount for $5", "a 50 % discount for $ 5"],
    ["rock & roll #1", "rock & roll # 1"],
  ]);
});

Deno.test("splitTokens splits on whitespace runs", () => {
  assert.deepEqual(splitTokens("a dog  on\tthe grass "), ["a", "dog", "on", "the", "grass"]);
  assert.deepEqual(splitTokens(" A Dog's."), ["A", "Dog's."]);
  assert.deepEqual(splitTokens(""), []);
  assert.deepEqual(splitTokens("   "), []);
});
