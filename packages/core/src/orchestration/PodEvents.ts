import { Duration, Effect, Queue } from "effect"
import { nodeName } from "../config/Config.ts"
import type { ContainerRef } from "../domain/Domain.ts"
import { Cluster, podUid } from "../kubernetes/Cluster.ts"

export interface PodEvent {
  readonly type: "Normal" | "Warning"
  /** UpperCamelCase: Checkpointed, CheckpointFailed, Restored. */
  readonly reason: string
  readonly message: string
}

/** The container an event is about; without the pod's `uid` it is read from the API server before writing. */
export interface PodEventTarget extends ContainerRef {
  readonly uid?: string | undefined
}

/** Kubernetes truncates event messages it makes itself at 1 KiB (kubelet, controllers); so does this. */
const messageLimit = 1024
const eventTimeout = Duration.seconds(5)
/** Events waiting to be written; more are dropped (and counted in the log) rather than held in memory. */
const backlog = 64

/**
 * Kubernetes Events on the pods Checkpointer works on, so that `kubectl describe pod` and `kubectl get events` tell
 * the story. Fire and forget: `record` only queues; one fiber writes them one at a time through Cluster's API client
 * (reading the pod's uid first unless it is given). An event that cannot be written is logged; it never fails or
 * slows a checkpoint or a restore.
 */
export class PodEvents extends Effect.Service<PodEvents>()("checkpointer/PodEvents", {
  scoped: Effect.gen(function*() {
    const cluster = yield* Cluster
    const node = yield* nodeName
    const queue = yield* Queue.dropping<{ readonly target: PodEventTarget; readonly event: PodEvent }>(backlog)

    const write = ({ event, target }: { readonly target: PodEventTarget; readonly event: PodEvent }) =>
      Effect.gen(function*() {
        const uid = target.uid ?? podUid(yield* cluster.getPod(target.namespace, target.pod))
        yield* cluster.recordPodEvent({
          namespace: target.namespace,
          pod: target.pod,
          uid,
          container: target.container,
          ...event,
          message: event.message.slice(0, messageLimit),
          node
        })
      }).pipe(
        Effect.timeout(eventTimeout),
        Effect.catchAll((error) =>
          Effect.logWarning("could not record a Kubernetes event").pipe(
            Effect.annotateLogs({
              reason: event.reason,
              pod: `${target.namespace}/${target.pod}`,
              error: error.message
            })
          )
        )
      )

    yield* Queue.take(queue).pipe(
      Effect.flatMap(write),
      Effect.forever,
      Effect.annotateLogs({ service: "PodEvents" }),
      Effect.forkScoped
    )

    const record = (target: PodEventTarget, event: PodEvent) =>
      Queue.offer(queue, { target, event }).pipe(
        Effect.flatMap((queued) =>
          queued ? Effect.void : Effect.logWarning("too many Kubernetes events waiting: one dropped").pipe(
            Effect.annotateLogs({ service: "PodEvents", reason: event.reason })
          )
        )
      )

    return { record } as const
  })
}) {}
