import { Cause, Clock, Context, Effect, Exit, Metric, MetricBoundaries, MetricState, Option, Ref } from "effect"
import type { MetricPair } from "effect"
import type { CheckpointPhase, RestorePhase } from "../domain/Errors.ts"
import type { BuiltImage } from "./ImageBuilder.ts"

/** How a checkpoint ended, as counted in `checkpoints_total{outcome}`. */
export type CheckpointOutcome = "succeeded" | "failed" | "not_found" | "interrupted"

export const checkpointsTotal = Metric.counter("checkpoints_total", {
  description: "Checkpoints made on this node, by outcome and image builder.",
  incremental: true
})

export const phaseDuration = Metric.histogram(
  "checkpoint_phase_duration_seconds",
  MetricBoundaries.fromIterable([0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800]),
  "Time spent in each phase of a checkpoint (kubelet, build/push, delete pod), finished or failed."
)

/** How a restore ended, as counted in `restores_total{outcome}`. */
export type RestoreOutcome =
  | "succeeded"
  | "failed"
  | "not_found"
  | "conflict"
  | "invalid"
  | "denied"
  | "interrupted"

export const restoresTotal = Metric.counter("restores_total", {
  description: "Restores served by this Checkpointer, by outcome.",
  incremental: true
})

export const restorePhaseDuration = Metric.histogram(
  "restore_phase_duration_seconds",
  MetricBoundaries.fromIterable([0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]),
  "Time spent in each phase of a restore (image, pod creation, scheduling, image pull and restore), finished or failed."
)

export const pushedBytes = Metric.histogram(
  "checkpoint_pushed_bytes",
  MetricBoundaries.exponential({ start: 1024 * 1024, factor: 4, count: 10 }),
  "Bytes of image layers pushed per checkpoint; the sum is all bytes pushed."
)

export const inFlight = Metric.gauge("checkpoints_in_flight", {
  description: "Checkpoints running on this node now."
})

export const queued = Metric.gauge("checkpoints_queued", {
  description: "Checkpoints accepted on this node and waiting for a free slot."
})

/** Set by `observeCheckpoint` for the `running` part inside it: whether the checkpoint got past its queue. */
export class CheckpointSlot
  extends Context.Tag("checkpointer/Metrics/CheckpointSlot")<CheckpointSlot, Ref.Ref<boolean>>()
{}

const outcomeOf = <A, E>(exit: Exit.Exit<A, E>): CheckpointOutcome => {
  if (Exit.isSuccess(exit)) return "succeeded"
  const failure = Cause.failureOption(exit.cause)
  if (Option.isNone(failure)) return Cause.isInterruptedOnly(exit.cause) ? "interrupted" : "failed"
  const error: unknown = failure.value
  return typeof error === "object" && error !== null && "_tag" in error && error._tag === "ContainerMissing"
    ? "not_found"
    : "failed"
}

/**
 * The part of a checkpoint that holds a slot (inside the concurrency limit): counted in `checkpoints_in_flight`
 * and no longer in `checkpoints_queued`. Use it inside `observeCheckpoint`.
 */
export const running = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R | CheckpointSlot> =>
  Effect.flatMap(CheckpointSlot, (started) =>
    Effect.uninterruptibleMask((restore) =>
      Ref.set(started, true).pipe(
        Effect.zipRight(Metric.incrementBy(queued, -1)),
        Effect.zipRight(Metric.increment(inFlight)),
        Effect.zipRight(restore(self)),
        Effect.ensuring(Metric.incrementBy(inFlight, -1))
      )
    ))

/**
 * A whole checkpoint, from acceptance to its end: counted in `checkpoints_queued` until its `running` part starts,
 * then in `checkpoints_total{outcome,builder}`; its logs carry the span `checkpoint` (milliseconds since acceptance).
 */
export const observeCheckpoint =
  (builder: string) => <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, Exclude<R, CheckpointSlot>> =>
    Effect.gen(function*() {
      const started = yield* Ref.make(false)
      return yield* Effect.uninterruptibleMask((restore) =>
        Metric.increment(queued).pipe(
          Effect.zipRight(restore(Effect.provideService(self, CheckpointSlot, started))),
          Effect.onExit((exit) =>
            Effect.gen(function*() {
              if (!(yield* Ref.get(started))) yield* Metric.incrementBy(queued, -1)
              yield* Metric.increment(
                Metric.tagged(Metric.tagged(checkpointsTotal, "outcome", outcomeOf(exit)), "builder", builder)
              )
            })
          )
        )
      )
    }).pipe(Effect.withLogSpan("checkpoint"))

const elapsedSeconds = (startNanos: bigint) =>
  Clock.currentTimeNanos.pipe(Effect.map((now) => Number(now - startNanos) / 1e9))

/**
 * One phase of a checkpoint: its duration goes into `checkpoint_phase_duration_seconds{phase}` whether it finished
 * or failed, and a log line says how it ended with `phase` and `durationSeconds`.
 */
export const observePhase = (phase: CheckpointPhase) => observeTimed(phaseDuration, phase)

/** One phase of a restore, observed as `observePhase` does, into `restore_phase_duration_seconds{phase}`. */
export const observeRestorePhase = (phase: RestorePhase | "image pull and restore") =>
  observeTimed(restorePhaseDuration, phase)

/** Counts a restore in `restores_total{outcome}` by how it ended. */
export const countRestore = <A, E extends { readonly _tag: string }>(exit: Exit.Exit<A, E>) => {
  const failure = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : Option.none()
  const outcome: RestoreOutcome = Exit.isSuccess(exit)
    ? "succeeded"
    : Option.isNone(failure)
    ? Cause.isInterruptedOnly(exit.cause) ? "interrupted" : "failed"
    : restoreOutcomes[failure.value._tag] ?? "failed"
  return Metric.increment(Metric.tagged(restoresTotal, "outcome", outcome))
}

const restoreOutcomes: Readonly<Record<string, RestoreOutcome>> = {
  RestoreSourceMissing: "not_found",
  RestoreConflict: "conflict",
  RestoreInvalid: "invalid",
  AccessDenied: "denied"
}

const observeTimed =
  (histogram: typeof phaseDuration, phase: string) => <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.flatMap(Clock.currentTimeNanos, (start) =>
      self.pipe(
        Effect.onExit((exit) =>
          Effect.gen(function*() {
            const seconds = yield* elapsedSeconds(start)
            const annotations = { phase, durationSeconds: Math.round(seconds * 1000) / 1000 }
            if (Exit.isSuccess(exit)) {
              yield* Metric.update(histogram.pipe(Metric.tagged("phase", phase)), seconds)
              yield* Effect.logInfo("phase finished").pipe(Effect.annotateLogs(annotations))
            } else if (Cause.isInterruptedOnly(exit.cause)) {
              yield* Effect.logInfo("phase interrupted").pipe(Effect.annotateLogs(annotations))
            } else {
              yield* Metric.update(histogram.pipe(Metric.tagged("phase", phase)), seconds)
              yield* Effect.logWarning("phase failed").pipe(Effect.annotateLogs(annotations))
            }
          })
        )
      ))

/** The build/push phase: observed as `observePhase("build/push")`, and the bytes it pushed counted. */
export const observeBuild =
  (builder: string) => <E, R>(self: Effect.Effect<BuiltImage, E, R>): Effect.Effect<BuiltImage, E, R> =>
    self.pipe(
      Effect.tap((image) => Metric.update(pushedBytes.pipe(Metric.tagged("builder", builder)), image.size)),
      observePhase("build/push")
    )

const metricName = (name: string) => name.replace(/[^a-zA-Z0-9_:]/g, "_").replace(/^([0-9])/, "_$1")
const labelName = (name: string) => name.replace(/[^a-zA-Z0-9_]/g, "_").replace(/^([0-9])/, "_$1")
const labelValue = (value: string) => value.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n")
const helpText = (text: string) => text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")

const formatNumber = (value: number | bigint): string => {
  if (typeof value === "bigint") return value.toString()
  if (Number.isNaN(value)) return "NaN"
  if (value === Number.POSITIVE_INFINITY) return "+Inf"
  if (value === Number.NEGATIVE_INFINITY) return "-Inf"
  return String(value)
}

type Labels = ReadonlyArray<readonly [string, string]>

const formatLabels = (labels: Labels): string =>
  labels.length === 0 ? "" : `{${labels.map(([key, value]) => `${labelName(key)}="${labelValue(value)}"`).join(",")}}`

const byCodeUnits = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0)

interface Family {
  readonly type: "counter" | "gauge" | "histogram" | "summary"
  readonly help: string | undefined
  readonly lines: Array<readonly [sortKey: string, line: string]>
}

/** Metrics in the Prometheus text exposition format (version 0.0.4), families and series in a stable order. */
export const renderPrometheus = (pairs: ReadonlyArray<MetricPair.MetricPair.Untyped>): string => {
  const families = new Map<string, Family>()
  for (const { metricKey, metricState } of pairs) {
    const name = metricName(metricKey.name)
    const labels: Labels = [...metricKey.tags]
      .map((tag) => [tag.key, tag.value] as const)
      .sort(([a], [b]) => byCodeUnits(a, b))
    const seriesKey = formatLabels(labels)
    const family = (type: Family["type"]) => {
      const existing = families.get(name)
      if (existing !== undefined) return existing
      const created: Family = { type, help: Option.getOrUndefined(metricKey.description), lines: [] }
      families.set(name, created)
      return created
    }
    const sample = (target: Family, suffix: string, extra: Labels, value: number | bigint, order: number) =>
      target.lines.push([
        `${seriesKey}\u0000${String(order).padStart(6, "0")}`,
        `${name}${suffix}${formatLabels([...labels, ...extra])} ${formatNumber(value)}`
      ])
    if (MetricState.isCounterState(metricState)) {
      sample(family("counter"), "", [], metricState.count, 0)
    } else if (MetricState.isGaugeState(metricState)) {
      sample(family("gauge"), "", [], metricState.value, 0)
    } else if (MetricState.isHistogramState(metricState)) {
      const target = family("histogram")
      metricState.buckets.forEach(([boundary, count], i) =>
        sample(target, "_bucket", [["le", formatNumber(boundary)]], count, i)
      )
      sample(target, "_sum", [], metricState.sum, metricState.buckets.length)
      sample(target, "_count", [], metricState.count, metricState.buckets.length + 1)
    } else if (MetricState.isSummaryState(metricState)) {
      const target = family("summary")
      metricState.quantiles.forEach(([quantile, value], i) =>
        sample(target, "", [["quantile", formatNumber(quantile)]], Option.getOrElse(value, () => Number.NaN), i)
      )
      sample(target, "_sum", [], metricState.sum, metricState.quantiles.length)
      sample(target, "_count", [], metricState.count, metricState.quantiles.length + 1)
    } else if (MetricState.isFrequencyState(metricState)) {
      const target = family("counter")
      let i = 0
      for (const [key, count] of metricState.occurrences) sample(target, "", [["key", key]], count, i++)
    }
  }
  return [...families.entries()]
    .sort(([a], [b]) => byCodeUnits(a, b))
    .map(([name, family]) =>
      [
        ...(family.help === undefined ? [] : [`# HELP ${name} ${helpText(family.help)}`]),
        `# TYPE ${name} ${family.type}`,
        ...family.lines.sort(([a], [b]) => byCodeUnits(a, b)).map(([, line]) => line)
      ].join("\n")
    )
    .join("\n") + "\n"
}

/** Every metric of this process (Effect's metric registry) as Prometheus text; gauges appear even when never set. */
export const prometheusText: Effect.Effect<string> = Effect.gen(function*() {
  yield* Metric.value(inFlight)
  yield* Metric.value(queued)
  return renderPrometheus(yield* Metric.snapshot)
})
