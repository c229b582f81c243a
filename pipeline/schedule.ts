// Learning-rate schedule: linear warmup from 0 to the peak, then linear decay to 0 at the last
// step (the schedule of transformers' get_linear_schedule_with_warmup).
export function learningRate(step: number, peak: number, warmupSteps: number, totalSteps: number): number {
  if (warmupSteps > 0 && step < warmupSteps) return (peak * (step + 1)) / warmupSteps;
  const remaining = Math.max(totalSteps - step, 0);
  const span = Math.max(totalSteps - warmupSteps, 1);
  return (peak * remaining) / span;
}
