import { describe, expect, it } from "vitest"
import { histogramQuantile, histogramSeries } from "../bench/PromHistogram.ts"
import { percentile } from "../bench/Stats.ts"

const exposition = [
  "# TYPE checkpoint_phase_duration_seconds histogram",
  "checkpoint_phase_duration_seconds_bucket{phase=\"kubelet\",le=\"0.5\"} 10",
  "checkpoint_phase_duration_seconds_bucket{phase=\"kubelet\",le=\"1\"} 90",
  "checkpoint_phase_duration_seconds_bucket{phase=\"kubelet\",le=\"+Inf\"} 100",
  "checkpoint_phase_duration_seconds_bucket{le=\"0.1\",phase=\"build/push\"} 4",
  "checkpoint_phase_duration_seconds_bucket{le=\"+Inf\",phase=\"build/push\"} 4",
  "checkpoint_phase_duration_seconds_count{phase=\"kubelet\"} 100",
  "other_bucket{phase=\"kubelet\",le=\"1\"} 7"
].join("\n")

describe("the soak's statistics", () => {
  it("reads histogram series by label and estimates quantiles as PromQL's histogram_quantile does", () => {
    const series = histogramSeries(exposition, "checkpoint_phase_duration_seconds", "phase")
    const kubelet = series.get("kubelet")!
    expect(kubelet.count).toBe(100)
    expect(histogramQuantile(0.05, kubelet)).toBeCloseTo(0.25)
    expect(histogramQuantile(0.5, kubelet)).toBeCloseTo(0.5 + 0.5 * (40 / 80))
    // The rank falls into +Inf: the highest finite bound.
    expect(histogramQuantile(0.99, kubelet)).toBe(1)
    expect(histogramQuantile(0.5, series.get("build/push")!)).toBeCloseTo(0.05)
    expect(series.size).toBe(2)
    expect(histogramQuantile(0.5, { buckets: [], count: 0 })).toBeNaN()
  })

  it("takes percentiles by nearest rank", () => {
    const values = Array.from({ length: 100 }, (_, i) => 100 - i)
    expect(percentile(values, 50)).toBe(50)
    expect(percentile(values, 99)).toBe(99)
    expect(percentile(values, 100)).toBe(100)
    expect(percentile([7], 1)).toBe(7)
    expect(percentile([], 50)).toBeNaN()
  })
})
