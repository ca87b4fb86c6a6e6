import { CheckpointerApi, Metrics, NotReady, Readiness } from "@checkpointer/core"
import { HttpApiBuilder } from "@effect/platform"
import { Effect } from "effect"

/** /healthz: the process answers; /readyz: it can take checkpoints (503 says why not); /metrics: Prometheus text. */
export const HealthHandlers = HttpApiBuilder.group(
  CheckpointerApi,
  "health",
  (handlers) =>
    Effect.gen(function*() {
      const readiness = yield* Readiness
      return handlers
        .handle("healthz", () => Effect.succeed("ok"))
        .handle("readyz", () =>
          readiness.check().pipe(
            Effect.as("ok"),
            Effect.catchTag("NotReadyYet", (error) => new NotReady({ message: error.message }))
          ))
        .handle("metrics", () => Metrics.prometheusText)
    })
)
