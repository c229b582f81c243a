// Token ids from tokenizer.json through @huggingface/tokenizers equal the Python tokenizers'
// ids on every caption of the shipped data and on edge-case strings.

import { loadTokenizer } from "../data/tokenizer.ts";
import { assert } from "./testing.ts";

for (const name of ["tokenizer-bpe-tiny", "tokenizer-qwen2-tiny"]) {
  Deno.test(`tokenizer ${name} ids equal Python`, async () => {
    const dir = new URL(`./fixtures/hf/${name}`, import.meta.url).pathname;
    const tokenizer = loadTokenizer(dir);
    const reference = JSON.parse(await Deno.readTextFile(`${dir}/token_ids.json`));
    let checked = 0;
    const mismatches: string[] = [];
    for (const entry of Object.values(reference.captions) as { texts: string[]; ids: number[][] }[]) {
      entry.texts.forEach((text, i) => {
        const ids = tokenizer.encode(text);
        if (ids.join(",") !== entry.ids[i].join(",")) mismatches.push(`"${text}": ${ids} vs ${entry.ids[i]}`);
        checked++;
      });
    }
    for (const { text, ids } of reference.extra as { text: string; ids: number[] }[]) {
      const actual = tokenizer.encode(text);
      if (actual.join(",") !== ids.join(",")) mismatches.push(`edge case ${JSON.stringify(text)}: ${actual} vs ${ids}`);
    }
    console.log(`  ${checked} captions and ${reference.extra.length} edge cases compared`);
    assert(checked === 860, `expected the 860 shipped captions, found ${checked}`);
    assert(mismatches.length === 0, `${mismatches.length} captions differ, first: ${mismatches[0]}`);
  });
}
