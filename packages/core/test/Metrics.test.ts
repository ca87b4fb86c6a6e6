import { Metrics } from "@checkpointer/core"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Metric, MetricBoundaries } from "effect"

const snapshotOf = (prefix: string) =>
  Metric.snapshot.pipe(
    Effect.map((pairs) => Metrics.renderPrometheus(pairs.filter((pair) => pair.metricKey.name.startsWith(prefix))))
  )

/** `name{labels}` -> value, from Prometheus text. */
const samples = (text: string) =>
  new Map(
    text.split("\n").filter((line) => line !== "" && !line.startsWith("#")).map((line) => {
      const at = line.lastIndexOf(" ")
      return [line.slice(0, at), line.slice(at + 1)] as const
    })
  )

describe("Metrics", () => {
  it.effect("renders counters, gauges and histograms in the Prometheus text format", () =>
    Effect.gen(function*() {
      const counter = Metric.counter("render_test_total", { description: "A counter\nwith two lines." })
      yield* Metric.increment(Metric.tagged(Metric.tagged(counter, "outcome", "succeeded"), "builder", "native"))
      yield* Metric.incrementBy(Metric.tagged(counter, "outcome", "say \"hi\"\\"), 2)
      yield* Metric.set(Metric.gauge("render_test_gauge"), 3)
      const histogram = Metric.histogram("render_test_seconds", MetricBoundaries.fromIterable([0.5, 1]), "Durations.")
      for (const value of [0.2, 0.7, 5]) yield* Metric.update(Metric.tagged(histogram, "phase", "kubelet"), value)

      expect(yield* snapshotOf("render_test")).toBe(
        [
          "# TYPE render_test_gauge gauge",
          "render_test_gauge 3",
          "# HELP render_test_seconds Durations.",
          "# TYPE render_test_seconds histogram",
          "render_test_seconds_bucket{phase=\"kubelet\",le=\"0.5\"} 1",
          "render_test_seconds_bucket{phase=\"kubelet\",le=\"1\"} 2",
          "render_test_seconds_bucket{phase=\"kubelet\",le=\"+Inf\"} 3",
          "render_test_seconds_sum{phase=\"kubelet\"} 5.9",
          "render_test_seconds_count{phase=\"kubelet\"} 3",
          "# HELP render_test_total A counter\\nwith two lines.",
          "# TYPE render_test_total counter",
          "render_test_total{builder=\"native\",outcome=\"succeeded\"} 1",
          "render_test_total{outcome=\"say \\\"hi\\\"\\\\\"} 2",
          ""
        ].join("\n")
      )
    }))

  it.effect("counts checkpoints by outcome, queued and in-flight ones, and times phases", () =>
    Effect.gen(function*() {
      const before = samples(yield* snapshotOf("checkpoint"))
      const value = (text: string, key: string) => Number(samples(text).get(key) ?? 0) - Number(before.get(key) ?? 0)
      const gate = yield* Effect.makeSemaphore(1)
      const release = yield* Deferred.make<void>()
      const run = (work: Effect.Effect<void, { readonly _tag: string }>) =>
        work.pipe(
          Metrics.observePhase("kubelet"),
          Metrics.running,
          gate.withPermits(1),
          Metrics.observeCheckpoint("test")
        )

      const first = yield* Effect.fork(run(Deferred.await(release)))
      const second = yield* Effect.fork(run(Effect.fail({ _tag: "ContainerMissing" })))
      yield* Effect.yieldNow()
      const during = yield* snapshotOf("checkpoint")
      expect(value(during, "checkpoints_in_flight")).toBe(1)
      expect(value(during, "checkpoints_queued")).toBe(1)

      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(first)
      yield* Fiber.await(second)
      const third = yield* Effect.fork(run(Effect.never))
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(third)
      yield* Effect.exit(run(Effect.fail({ _tag: "PhaseFailed" })))

      const after = yield* snapshotOf("checkpoint")
      expect(value(after, "checkpoints_in_flight")).toBe(0)
      expect(value(after, "checkpoints_queued")).toBe(0)
      expect(value(after, "checkpoints_total{builder=\"test\",outcome=\"succeeded\"}")).toBe(1)
      expect(value(after, "checkpoints_total{builder=\"test\",outcome=\"not_found\"}")).toBe(1)
      expect(value(after, "checkpoints_total{builder=\"test\",outcome=\"interrupted\"}")).toBe(1)
      expect(value(after, "checkpoints_total{builder=\"test\",outcome=\"failed\"}")).toBe(1)
      // The interrupted run is not timed; the three others are (two of them failed).
      expect(value(after, "checkpoint_phase_duration_seconds_count{phase=\"kubelet\"}")).toBe(3)
    }))
})
