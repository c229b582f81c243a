// Seeded parameter initialisation on the CPU; values are uploaded once when a model is built.

// n normal samples with mean 0 and the given std (Box-Muller over a mulberry32 stream).
export function randomNormal(n: number, seed: number, std: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(uniform()));
    const theta = 2 * Math.PI * uniform();
    out[i] = std * r * Math.cos(theta);
    if (i + 1 < n) out[i + 1] = std * r * Math.sin(theta);
  }
  return out;
}
