import { KubeConfig } from "@kubernetes/client-node"
import { Data, Duration, Effect, Option, Schedule } from "effect"
import { reasonOf, transportReason } from "../domain/Reason.ts"

export class KubernetesApiError extends Data.TaggedError("KubernetesApiError")<{
  readonly status: number | undefined
  readonly message: string
  readonly cause?: unknown
}> {}

const statusOf = (cause: unknown): number | undefined =>
  typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "number"
    ? cause.code
    : undefined

/** The message of a Kubernetes Status body, or the reason of any other failure of @kubernetes/client-node. */
export const kubernetesReason = (cause: unknown): string => {
  if (typeof cause === "object" && cause !== null && "body" in cause && typeof cause.body === "string") {
    try {
      const status = JSON.parse(cause.body) as { message?: unknown }
      if (typeof status.message === "string") return status.message
    } catch {
      // not a Kubernetes Status body
    }
  }
  const reason = reasonOf(cause).split("\n")[0] ?? "unknown error"
  // fetch reports "fetch failed" and keeps the network reason (ECONNREFUSED, a TLS error) in its cause.
  return cause instanceof Error && cause.cause instanceof Error ? `${reason}: ${transportReason(cause)}` : reason
}

const apiTimeout = Duration.seconds(30)

/** One call of @kubernetes/client-node, bounded in time; `action` says what it was for in the error. */
export const callApi = <A>(action: string, request: () => Promise<A>) =>
  Effect.tryPromise({
    try: request,
    catch: (cause) => {
      const status = statusOf(cause)
      return new KubernetesApiError({
        status,
        message: `${action}: ${status === undefined ? "" : `${status} `}${kubernetesReason(cause)}`,
        cause
      })
    }
  }).pipe(
    Effect.timeoutFail({
      duration: apiTimeout,
      onTimeout: () =>
        new KubernetesApiError({
          status: undefined,
          message: `${action}: no answer within ${Duration.format(apiTimeout)}`
        })
    })
  )

/** Reads and deletes are idempotent: retried with backoff when the API server could not be reached or was busy. */
export const idempotent = <A>(effect: Effect.Effect<A, KubernetesApiError>) =>
  effect.pipe(
    Effect.retry({
      schedule: Schedule.exponential("200 millis").pipe(Schedule.intersect(Schedule.recurs(3))),
      while: (error) => error.status === undefined || error.status === 429 || error.status >= 500
    })
  )

/** None when the API server answers 404. */
export const whenFound = <A>(
  effect: Effect.Effect<A, KubernetesApiError>
): Effect.Effect<Option.Option<A>, KubernetesApiError> =>
  effect.pipe(
    Effect.map(Option.some),
    Effect.catchIf((error) => error.status === 404, () => Effect.succeed(Option.none<A>()))
  )

/** The connection to the Kubernetes API: in-cluster config, or KUBECONFIG outside a cluster. */
export class KubernetesApi extends Effect.Service<KubernetesApi>()("checkpointer/KubernetesApi", {
  effect: Effect.gen(function*() {
    const kubeConfig = yield* Effect.try({
      try: () => {
        const config = new KubeConfig()
        config.loadFromDefault()
        return config
      },
      catch: (cause) =>
        new KubernetesApiError({
          status: undefined,
          message: `cannot load kubeconfig: ${kubernetesReason(cause)}`,
          cause
        })
    })
    return { kubeConfig } as const
  })
}) {}
