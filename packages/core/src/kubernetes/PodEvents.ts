import { CoreV1Api } from "@kubernetes/client-node"
import { Duration, Effect, Option } from "effect"
import { nodeName } from "../config/Config.ts"
import type { ContainerRef } from "../domain/Domain.ts"
import { callApi, KubernetesApi, whenFound } from "./KubernetesApi.ts"

export interface PodEvent {
  readonly type: "Normal" | "Warning"
  /** UpperCamelCase, as `kubectl get events` shows it: Checkpointed, CheckpointFailed. */
  readonly reason: string
  readonly message: string
}

/** Kubernetes truncates event messages it makes itself at 1 KiB (kubelet, controllers); so does this. */
const messageLimit = 1024
const eventTimeout = Duration.seconds(5)

/**
 * Kubernetes Events on the pods Checkpointer works on, so that `kubectl describe pod` and `kubectl get events` tell
 * what happened. Best effort: an event that cannot be written is logged, never fails the checkpoint.
 */
export class PodEvents extends Effect.Service<PodEvents>()("checkpointer/PodEvents", {
  effect: Effect.gen(function*() {
    const { kubeConfig } = yield* KubernetesApi
    const node = yield* nodeName
    const core = kubeConfig.makeApiClient(CoreV1Api)

    const record = Effect.fn("PodEvents.record")(function*(container: ContainerRef, event: PodEvent) {
      const { namespace, pod: name } = container
      // The uid ties the event to this pod (kubectl describe selects by it); a deleted pod keeps its name only.
      const pod = yield* whenFound(
        callApi(`get pod ${namespace}/${name}`, () => core.readNamespacedPod({ namespace, name }))
      )
      const uid = Option.flatMap(pod, (found) => Option.fromNullable(found.metadata?.uid))
      const now = new Date()
      yield* callApi(`record event ${event.reason} on pod ${namespace}/${name}`, () =>
        core.createNamespacedEvent({
          namespace,
          body: {
            metadata: { generateName: `${name}.` },
            involvedObject: {
              apiVersion: "v1",
              kind: "Pod",
              namespace,
              name,
              ...(Option.isSome(uid) ? { uid: uid.value } : {}),
              fieldPath: `spec.containers{${container.container}}`
            },
            type: event.type,
            reason: event.reason,
            message: event.message.slice(0, messageLimit),
            count: 1,
            firstTimestamp: now,
            lastTimestamp: now,
            source: { component: "checkpointer", host: node },
            reportingComponent: "checkpointer",
            reportingInstance: node
          }
        }))
    }, (effect, _container, event) =>
      effect.pipe(
        Effect.timeout(eventTimeout),
        Effect.catchAll((error) =>
          Effect.logWarning("could not record a Kubernetes event").pipe(
            Effect.annotateLogs({ reason: event.reason, error: error.message })
          )
        )
      ))

    return { record } as const
  }),
  dependencies: [KubernetesApi.Default]
}) {}
