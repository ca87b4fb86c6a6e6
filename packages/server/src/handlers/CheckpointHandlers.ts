import {
  Caller,
  Checkpointer,
  CheckpointerApi,
  CheckpointFailed,
  CheckpointInProgress,
  CheckpointNotFound,
  ContainerNotFound,
  ContainerRef,
  InvalidRequest,
  Misdirected,
  namespaceOfRecord,
  PodExists,
  Restorer,
  ResultStore,
  Unavailable
} from "@checkpointer/core"
import type {
  Access,
  CheckpointIdentifier,
  CheckpointOptions,
  Namespace,
  RestorePlan,
  RestoreRequest
} from "@checkpointer/core"
import { HttpApiBuilder } from "@effect/platform"
import { Effect, Option } from "effect"
import { RequestGate } from "../http/RequestGate.ts"

/** What the caller must be allowed before a checkpoint is made (here or on another node). */
const checkpointAccess = (namespace: Namespace, options: CheckpointOptions): ReadonlyArray<Access> => [
  { verb: "create", resource: "pods", subresource: "checkpoint", namespace },
  ...(options.deletePod ? [{ verb: "delete", resource: "pods", namespace }] : [])
]

/** What the caller must be allowed to read a result: in its container's namespace, or everywhere if it is unknown. */
const resultAccess = (namespace: Option.Option<Namespace>): ReadonlyArray<Access> => [{
  verb: "get",
  resource: "pods",
  subresource: "checkpoint",
  ...Option.match(namespace, { onNone: () => ({}), onSome: (namespace) => ({ namespace }) })
}]

/** What the caller must be allowed to restore: create the pod, and read the checkpoint it names (if it names one). */
const restoreAccess = (request: RestoreRequest, plan: RestorePlan): ReadonlyArray<Access> => [
  { verb: "create", resource: "pods", namespace: plan.namespace },
  ...(request.checkpointIdentifier === undefined ? [] : [{
    verb: "get",
    resource: "pods",
    subresource: "checkpoint",
    namespace: plan.record.metadata.namespace as Namespace
  }])
]

const refusedRoute = {
  AlreadyForwarded: (error: { readonly message: string }) => new Misdirected({ message: error.message }),
  RoutingLookupFailed: (error: { readonly message: string }) => new CheckpointFailed({ message: error.message })
}

export const CheckpointHandlers = HttpApiBuilder.group(
  CheckpointerApi,
  "checkpoint",
  (handlers) =>
    Effect.gen(function*() {
      const checkpointer = yield* Checkpointer
      const store = yield* ResultStore
      const gate = yield* RequestGate
      const restorer = yield* Restorer

      /** The namespace of the container a result belongs to, when this node has its record. */
      const namespaceOf = (identifier: CheckpointIdentifier) =>
        store.get(identifier).pipe(
          Effect.map(Option.map(namespaceOfRecord)),
          Effect.orElseSucceed(() => Option.none<Namespace>())
        )

      return handlers
        .handle("checkpoint", ({ path, payload }) =>
          Effect.gen(function*() {
            const container = new ContainerRef(path)
            yield* Effect.flatMap(Caller, (caller) => caller.authorize(checkpointAccess(path.namespace, payload)))
            return yield* gate.checkpoint(container, payload, checkpointer.checkpoint(container, payload))
          }).pipe(
            Effect.catchTags({
              ...refusedRoute,
              RouteTargetMissing: (error) => new ContainerNotFound({ message: error.message }),
              ContainerMissing: (error) => new ContainerNotFound({ message: error.message }),
              CheckpointConflict: (error) => new CheckpointInProgress({ message: error.message }),
              ShuttingDown: (error) => new Unavailable({ message: error.message }),
              PhaseFailed: (error) => new CheckpointFailed({ message: error.description }),
              CheckpointFailure: (error) => new CheckpointFailed({ message: error.message })
            })
          ))
        .handle("result", ({ urlParams: { checkpointIdentifier } }) =>
          gate.result(
            checkpointIdentifier,
            Effect.gen(function*() {
              // The namespace of a result is known only on the node that stores it.
              const namespace = yield* namespaceOf(checkpointIdentifier)
              yield* Effect.flatMap(Caller, (caller) => caller.authorize(resultAccess(namespace)))
              const restoring = yield* restorer.runningResult(checkpointIdentifier)
              return yield* Option.getOrElse(restoring, () => checkpointer.result(checkpointIdentifier))
            })
          ).pipe(
            Effect.catchTags({
              ...refusedRoute,
              RouteTargetMissing: (error) => new CheckpointNotFound({ message: error.message }),
              CheckpointUnknown: (error) => new CheckpointNotFound({ message: error.message }),
              CheckpointFailure: (error) => new CheckpointFailed({ message: error.message })
            })
          ))
        .handle("restore", ({ payload }) =>
          Effect.flatMap(Caller, (caller) =>
            restorer.restore(payload, (plan) =>
              caller.authorize(restoreAccess(payload, plan)))).pipe(
              Effect.catchTags({
                RestoreSourceMissing: (error) =>
                  new CheckpointNotFound({ message: error.message }),
                RestoreInvalid: (error) => new InvalidRequest({ message: error.message }),
                RestoreConflict: (error) => new PodExists({ message: error.message }),
                RestoreFailed: (error) => new CheckpointFailed({ message: error.description })
              })
            ))
    })
)
