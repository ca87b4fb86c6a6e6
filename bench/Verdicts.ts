import { formatRatio } from "./Stats.ts"

/** Where the report's sentences change their verdict. */
export const verdictThresholds = {
  /** Two durations whose ratio is within this of 1 are "about as fast as" each other. */
  sameDuration: 0.05,
  /** (pusher CPU + registry CPU) / wall time at or below which the two sides took turns. */
  maxTurnTakingOverlap: 1.1,
  /** Share of the builder's extra CPU over curl's from which sha256 is "most of" it. */
  mostOf: 0.5,
  /** Share of a small image's build/push time from which the fixed cost per image weighs on its ratio. */
  fixedCostWeighs: 0.25,
  /** One-minute load average the benchmark causes by itself (about one busy CPU). */
  ownLoad: 1
} as const

/** How a duration compares with a reference: "2.10× slower than", "1.30× faster than" or "about as fast as". */
export const comparedDuration = (seconds: number, reference: number) => {
  const ratio = seconds / reference
  if (!Number.isFinite(ratio) || ratio <= 0) return "not comparable with"
  if (Math.abs(ratio - 1) <= verdictThresholds.sameDuration) return "about as fast as"
  return ratio > 1 ? `${formatRatio(ratio)} slower than` : `${formatRatio(1 / ratio)} faster than`
}

/** Whether a pusher and the registry took turns or worked at the same time, from their overlap. */
export const overlapVerdict = (overlap: number) =>
  overlap <= verdictThresholds.maxTurnTakingOverlap
    ? "took turns with the registry"
    : "worked at the same time as the registry part of the time"

/** How much of a (positive) whole a part is: "most of" or "less than half of". */
export const shareWord = (part: number, whole: number) =>
  part / whole >= verdictThresholds.mostOf ? "most of" : "less than half of"
