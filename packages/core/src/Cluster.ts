import { CoreV1Api, KubeConfig } from "@kubernetes/client-node"
import type { V1Pod } from "@kubernetes/client-node"
import { Data, Duration, Effect, Option, Schedule } from "effect"

export class KubernetesApiError extends Data.TaggedError("KubernetesApiError")<{
  readonly status: number | undefined
  readonly message: string
  readonly cause?: unknown
}> {}

const statusOf = (cause: unknown): number | undefined =>
  typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "number"
    ? cause.code
    : undefined

const reasonOf = (cause: unknown): string => {
  if (typeof cause === "object" && cause !== null && "body" in cause && typeof cause.body === "string") {
    try {
      const status = JSON.parse(cause.body) as { message?: unknown }
      if (typeof status.message === "string") return status.message
    } catch {
      // not a Kubernetes Status body
    }
  }
  return cause instanceof Error ? cause.message.split("\n")[0] ?? "unknown error" : String(cause)
}

const apiTimeout = Duration.seconds(30)

/** The Kubernetes API as Checkpointer uses it (in-cluster config, or KUBECONFIG outside a cluster). */
export class Cluster extends Effect.Service<Cluster>()("checkpointer/Cluster", {
  effect: Effect.gen(function*() {
    const kubeConfig = yield* Effect.try({
      try: () => {
        const config = new KubeConfig()
        config.loadFromDefault()
        return config
      },
      catch: (cause) => new KubernetesApiError({ status: undefined, message: `cannot load kubeconfig: ${reasonOf(cause)}`, cause })
    })
    const core = kubeConfig.makeApiClient(CoreV1Api)

    const call = <A>(action: string, request: () => Promise<A>) =>
      Effect.tryPromise({
        try: request,
        catch: (cause) => {
          const status = statusOf(cause)
          return new KubernetesApiError({
            status,
            message: `${action}: ${status === undefined ? "" : `${status} `}${reasonOf(cause)}`,
            cause
          })
        }
      }).pipe(
        Effect.timeoutFail({
          duration: apiTimeout,
          onTimeout: () =>
            new KubernetesApiError({ status: undefined, message: `${action}: no answer within ${Duration.format(apiTimeout)}` })
        })
      )

    const whenFound = <A>(effect: Effect.Effect<A, KubernetesApiError>): Effect.Effect<Option.Option<A>, KubernetesApiError> =>
      effect.pipe(
        Effect.map(Option.some),
        Effect.catchIf((error) => error.status === 404, () => Effect.succeed(Option.none<A>()))
      )

    const getPod = Effect.fn("Cluster.getPod")(function*(namespace: string, name: string) {
      return yield* whenFound(call(`get pod ${namespace}/${name}`, () => core.readNamespacedPod({ namespace, name })))
    })

    /** Deletes the pod and waits until the API server no longer has it (its containers are gone). */
    const deletePod = Effect.fn("Cluster.deletePod")(function*(namespace: string, name: string, timeout: Duration.Duration) {
      const deleted = yield* whenFound(
        call(`delete pod ${namespace}/${name}`, () => core.deleteNamespacedPod({ namespace, name }))
      )
      if (Option.isNone(deleted)) return
      const uid = deleted.value.metadata?.uid
      const stillThere = getPod(namespace, name).pipe(
        Effect.map(Option.exists((pod: V1Pod) => uid === undefined || pod.metadata?.uid === uid))
      )
      yield* stillThere.pipe(
        Effect.repeat({ schedule: Schedule.spaced("250 millis"), while: (present) => present }),
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () =>
            new KubernetesApiError({
              status: undefined,
              message: `pod ${namespace}/${name} still exists ${Duration.format(timeout)} after its deletion`
            })
        })
      )
    })

    /** Running Checkpointer pods with an IP on `node` (label app.kubernetes.io/name=checkpointer), in any namespace. */
    const checkpointerPodsOn = Effect.fn("Cluster.checkpointerPodsOn")(function*(node: string) {
      const list = yield* call(`list Checkpointer pods on node ${node}`, () =>
        core.listPodForAllNamespaces({
          labelSelector: "app.kubernetes.io/name=checkpointer",
          fieldSelector: `spec.nodeName=${node}`
        }))
      return list.items.filter((pod) => pod.status?.phase === "Running" && (pod.status.podIP ?? "") !== "")
    })

    return { getPod, deletePod, checkpointerPodsOn } as const
  })
}) {}
