import assert from "node:assert/strict";
import { batchCount, batches } from "../data/batches.ts";
import { mixSeeds, mulberry32, shuffle } from "../util/random.ts";

const ITEMS = Array.from({ length: 10 }, (_, i) => i);

Deno.test("batches cover every item once", () => {
  const all = [...batches(ITEMS, 3, 7, 0)];
  assert.deepEqual(all.map((batch) => batch.length), [3, 3, 3, 1]);
  assert.deepEqual(all.flat().sort((a, b) => a - b), ITEMS);
});

Deno.test("batches repeat for same seed and epoch", () => {
  assert.deepEqual([...batches(ITEMS, 4, 7, 2)], [...batches(ITEMS, 4, 7, 2)]);
});

Deno.test("batches differ across epochs", () => {
  assert.notDeepEqual([...batches(ITEMS, 10, 7, 0)], [...batches(ITEMS, 10, 7, 1)]);
});

Deno.test("batches dropLast skips partial batch", () => {
  const all = [...batches(ITEMS, 3, 7, 0, { dropLast: true })];
  assert.deepEqual(all.map((batch) => batch.length), [3, 3, 3]);
  assert.equal(batchCount(10, 3, { dropLast: true }), 3);
  assert.equal(batchCount(10, 3), 4);
});

Deno.test("batches rejects invalid batchSize", () => {
  assert.throws(() => [...batches(ITEMS, 0, 1, 0)], /invalid batchSize 0/);
});

Deno.test("mulberry32 repeats and stays in range", () => {
  const a = mulberry32(42);
  const b = mulberry32(42);
  for (let i = 0; i < 1000; i++) {
    const value = a();
    assert.equal(value, b());
    assert.ok(value >= 0 && value < 1);
  }
});

Deno.test("shuffle leaves input unchanged", () => {
  const input = ITEMS.slice();
  const output = shuffle(input, 3);
  assert.deepEqual(input, ITEMS);
  assert.deepEqual(output.slice().sort((a, b) => a - b), ITEMS);
  assert.notDeepEqual(output, ITEMS);
});

Deno.test("mixSeeds separates nearby inputs", () => {
  const seeds = new Set(
    [0, 1, 2, 3].flatMap((seed) => [0, 1, 2, 3].map((epoch) => mixSeeds(seed, epoch))),
  );
  assert.equal(seeds.size, 16);
});
