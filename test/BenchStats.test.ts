import { describe, expect, it } from "vitest"
import type { ConcurrencyResult, Round } from "../bench/EndToEnd.ts"
import { histogramQuantile, histogramSeries } from "../bench/PromHistogram.ts"
import { byHandComparison, endToEndTargetRows } from "../bench/Report.ts"
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

describe("the benchmark's concurrency verdicts", () => {
  const round = (seconds: number, bytes: number): Round => ({ seconds, bytes, kubelet: [], buildPush: [] })
  const mib = 1024 * 1024
  const concurrency: ConcurrencyResult = {
    containers: 8,
    mibEach: 64,
    archiveBytes: 512 * mib,
    raw: [round(2, 512 * mib), round(2.2, 512 * mib), round(1.8, 512 * mib)],
    library: [round(2, 512 * mib), round(2.1, 512 * mib), round(2, 512 * mib)],
    http: [round(5, 512 * mib), round(5, 512 * mib), round(6, 512 * mib)],
    byHand: [round(4, 512 * mib), round(4.5, 512 * mib), round(4, 512 * mib)],
    serverIdleRss: 86 * mib,
    serverPeakRss: 130 * mib
  }

  it("compares each round's median throughput with the raw uploads' and the HTTP round with the work by hand", () => {
    const [library, http] = endToEndTargetRows({ concurrency })
    expect(library!.measured).toBe("1.00×")
    expect(library!.verdict).toBe("met")
    expect(http!.measured).toBe("0.40×")
    expect(http!.verdict).toMatch(/^missed by 58%/)
    expect(byHandComparison(concurrency).join("\n")).toContain(
      "ran at 0.80× the throughput of the same work done by hand"
    )
    expect(byHandComparison({ ...concurrency, byHand: [] })).toEqual([])
  })
})
