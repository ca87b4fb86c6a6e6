import type { TracingSettings } from "@checkpointer/core"
import * as OtlpSerialization from "@effect/opentelemetry/OtlpSerialization"
import * as OtlpTracer from "@effect/opentelemetry/OtlpTracer"
import { NodeHttpClient } from "@effect/platform-node"
import { Duration, Layer, Redacted } from "effect"

/** Spans exported over OTLP/HTTP to `url` in batches. Loaded only when tracing is configured (see Tracing.ts). */
export const otlpTracerLayer = (url: string, settings: TracingSettings) =>
  OtlpTracer.layer({
    url,
    resource: { serviceName: settings.serviceName, attributes: { "k8s.node.name": settings.node } },
    headers: Redacted.value(settings.headers),
    exportInterval: Duration.millis(settings.exportDelayMillis)
  }).pipe(
    Layer.provide(
      settings.protocol === "http/json" ? OtlpSerialization.layerJson : OtlpSerialization.layerProtobuf
    ),
    Layer.provide(NodeHttpClient.layerUndici)
  )
