import { HttpApiBuilder } from "@effect/platform"
import { CheckpointerApi } from "@checkpointer/core"
import { Effect } from "effect"

export const HealthHandlers = HttpApiBuilder.group(
  CheckpointerApi,
  "health",
  (handlers) =>
    handlers
      .handle("healthz", () => Effect.succeed("ok"))
      .handle("readyz", () => Effect.succeed("ok"))
)
