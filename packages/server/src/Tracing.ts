import { tracingConfig } from "@checkpointer/core"
import { Effect, Layer, Option } from "effect"

/**
 * Traces exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set. The
 * exporter is imported only then (a chunk of its own in the bundle): without it nothing more is loaded or kept.
 */
export const TracingLive = Layer.unwrapEffect(
  Effect.gen(function*() {
    const settings = yield* tracingConfig
    if (Option.isNone(settings.url)) return Layer.empty
    const url = settings.url.value
    const { otlpTracerLayer } = yield* Effect.promise(() => import("./OtlpExport.ts"))
    yield* Effect.logInfo("traces are exported over OTLP").pipe(
      Effect.annotateLogs({ service: "Tracing", url: new URL(url).origin, protocol: settings.protocol })
    )
    return otlpTracerLayer(url, settings)
  })
)
