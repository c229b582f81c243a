// Epoch iteration: a fresh seeded shuffle per epoch, cut into consecutive batches.
import { mixSeeds, shuffle } from "../util/random.ts";

export interface BatchOptions {
  /** Leave out the last batch when it is smaller than batchSize (default false). */
  dropLast?: boolean;
}

/**
 * Yields the items of one epoch in batches. The order depends only on (seed, epoch), so a
 * resumed run gets the same batches and each epoch a different order.
 */
export function* batches<T>(
  items: readonly T[],
  batchSize: number,
  seed: number,
  epoch: number,
  options: BatchOptions = {},
): Generator<T[]> {
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new RangeError(`invalid batchSize ${batchSize}: use an integer >= 1`);
  }
  const order = shuffle(items, mixSeeds(seed, epoch));
  for (let start = 0; start < order.length; start += batchSize) {
    const batch = order.slice(start, start + batchSize);
    if (options.dropLast && batch.length < batchSize) return;
    yield batch;
  }
}

/** Returns the number of batches that `batches` yields for `count` items. */
export function batchCount(count: number, batchSize: number, options: BatchOptions = {}): number {
  return options.dropLast ? Math.floor(count / batchSize) : Math.ceil(count / batchSize);
}
