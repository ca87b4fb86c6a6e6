/** What one measured run of a pipeline reports. */
export interface Sample {
  /** Wall time of what the pipeline's row says is timed. */
  readonly seconds: number
  /** Parts of `seconds` (e.g. kubelet, build/push), in seconds. */
  readonly phases: Readonly<Record<string, number>>
  /** Peak RSS (VmHWM) of the process that pushed, in bytes, if it is one of ours. */
  readonly peakRss?: number
  /** RSS of that process when the run began (its peak was reset to this value), in bytes. */
  readonly startRss?: number
  /** Bytes of the layer that reached the registry. */
  readonly pushedBytes?: number
  /** Media type of that layer. */
  readonly pushedMediaType?: string
  /** CPU seconds used during the run by the pushing side (see Pipeline.clientCpu) and by the registry. */
  readonly cpu?: { readonly client: number; readonly registry: number }
}

export interface Summary {
  readonly median: number
  readonly min: number
  readonly max: number
  readonly count: number
}

export const summarize = (values: ReadonlyArray<number>): Summary => {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  const median = sorted.length === 0
    ? Number.NaN
    : sorted.length % 2 === 1
    ? sorted[middle]!
    : (sorted[middle - 1]! + sorted[middle]!) / 2
  return { median, min: sorted[0] ?? Number.NaN, max: sorted[sorted.length - 1] ?? Number.NaN, count: sorted.length }
}

export const phaseSummary = (samples: ReadonlyArray<Sample>, phase: string): Summary | undefined => {
  const values = samples.flatMap((sample) => sample.phases[phase] === undefined ? [] : [sample.phases[phase]])
  return values.length === 0 ? undefined : summarize(values)
}

export const maxOf = (values: ReadonlyArray<number | undefined>): number | undefined => {
  const present = values.filter((value): value is number => value !== undefined)
  return present.length === 0 ? undefined : Math.max(...present)
}

export const MiB = 1024 * 1024

export const formatSeconds = (value: number): string =>
  Number.isNaN(value) ? "–" : value < 10 ? value.toFixed(3) : value.toFixed(2)

export const formatRange = (summary: Summary): string => `${formatSeconds(summary.min)}–${formatSeconds(summary.max)}`

export const formatMiB = (bytes: number | undefined): string =>
  bytes === undefined ? "–" : bytes >= 100 * MiB ? (bytes / MiB).toFixed(0) : (bytes / MiB).toFixed(1)

export const formatRatio = (value: number): string => Number.isFinite(value) ? `${value.toFixed(2)}×` : "–"

/** The p-th percentile (0..100) by nearest rank; NaN for no values. */
export const percentile = (values: ReadonlyArray<number>, p: number): number => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted.length === 0 ? Number.NaN : sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)]!
}
