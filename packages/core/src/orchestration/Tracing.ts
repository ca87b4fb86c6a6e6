import { Effect } from "effect"

/** What is traced: each checkpoint (and, by the same helpers, each restore) is a span with one child per phase. */
export type TracedOperation = "checkpoint" | "restore"

/**
 * The span of one operation, named after it (`checkpoint`), with `checkpointer.identifier` on it and on every span
 * inside (phases, builder, registry and API calls), and any further attributes.
 */
export const operationSpan = (
  operation: TracedOperation,
  identifier: string,
  attributes: Readonly<Record<string, unknown>> = {}
) =>
<A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  self.pipe(
    Effect.annotateSpans({ "checkpointer.identifier": identifier }),
    Effect.withSpan(operation, {
      kind: "internal",
      attributes: { "checkpointer.identifier": identifier, "checkpointer.operation": operation, ...attributes }
    })
  )

/** The span of one phase of an operation: `checkpoint kubelet`, `restore scheduling`, with `checkpointer.phase`. */
export const phaseSpan =
  (operation: TracedOperation, phase: string) => <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.withSpan(self, `${operation} ${phase}`, { attributes: { "checkpointer.phase": phase } })
