// Seeded pseudo-random numbers, so shuffles and synthetic data repeat exactly across runs.

/** Returns a mulberry32 generator: uniform floats in [0, 1) from a 32-bit seed. */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Mixes several integers into one 32-bit seed (for example a run seed and an epoch). */
export function mixSeeds(...values: number[]): number {
  let hash = 0x811c9dc5;
  for (const value of values) {
    // FNV-1a over the value's 4 bytes, then a murmur3 finalizer to spread nearby inputs.
    for (let shift = 0; shift < 32; shift += 8) {
      hash = Math.imul(hash ^ ((value >>> shift) & 0xff), 0x01000193);
    }
  }
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  return (hash ^ (hash >>> 16)) >>> 0;
}

/** Returns a shuffled copy of `items` (Fisher-Yates). The same seed gives the same order. */
export function shuffle<T>(items: readonly T[], seed: number): T[] {
  const next = mulberry32(seed);
  const result = items.slice();
  for (let i = result.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [result[i], result[j]] = [result[j], result[i]];
  }
  return result;
}
