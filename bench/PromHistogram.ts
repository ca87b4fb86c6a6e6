/** Cumulative buckets of one Prometheus histogram series: upper bound (le) -> count, sorted by bound. */
export interface HistogramSeries {
  readonly buckets: ReadonlyArray<readonly [number, number]>
  readonly count: number
}

const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}\s+(\S+)$/
const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g

/**
 * The series of histogram `name` in a Prometheus text exposition, keyed by the value of `by` (e.g. phase), from its
 * `_bucket` lines.
 */
export const histogramSeries = (text: string, name: string, by: string): ReadonlyMap<string, HistogramSeries> => {
  const buckets = new Map<string, Array<readonly [number, number]>>()
  for (const line of text.split("\n")) {
    const match = sample.exec(line.trim())
    if (match === null || match[1] !== `${name}_bucket`) continue
    const labels = Object.fromEntries([...match[2]!.matchAll(label)].map((pair) => [pair[1]!, pair[2]!]))
    const key = labels[by]
    if (key === undefined || labels.le === undefined) continue
    const bound = labels.le === "+Inf" ? Number.POSITIVE_INFINITY : Number(labels.le)
    buckets.set(key, [...(buckets.get(key) ?? []), [bound, Number(match[3])]])
  }
  return new Map([...buckets].map(([key, series]) => {
    const sorted = [...series].sort((a, b) => a[0] - b[0])
    return [key, { buckets: sorted, count: sorted[sorted.length - 1]?.[1] ?? 0 }]
  }))
}

/**
 * The q-quantile (0..1) as PromQL's histogram_quantile estimates it: linear within the bucket that holds the rank;
 * the highest finite bound if the rank falls into +Inf; NaN for an empty series.
 */
export const histogramQuantile = (q: number, series: HistogramSeries): number => {
  if (series.count === 0) return Number.NaN
  const rank = q * series.count
  let lowerBound = 0
  let lowerCount = 0
  for (const [bound, count] of series.buckets) {
    if (count >= rank) {
      if (!Number.isFinite(bound)) return lowerBound
      if (count === lowerCount) return bound
      return lowerBound + (bound - lowerBound) * ((rank - lowerCount) / (count - lowerCount))
    }
    lowerBound = bound
    lowerCount = count
  }
  return lowerBound
}
