import { Attach, AuthenticationV1Api, AuthorizationV1Api, CoreV1Api, KubeConfig, Watch } from "@kubernetes/client-node"
import type { V1Pod, V1ResourceAttributes, V1UserInfo } from "@kubernetes/client-node"
import { transportReason } from "./Errors.ts"
import { Data, Deferred, Duration, Effect, Option, Schedule, Stream } from "effect"
import { PassThrough, Writable } from "node:stream"

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
  if (!(cause instanceof Error)) return String(cause)
  const reason = cause.message.split("\n")[0] ?? "unknown error"
  // fetch reports "fetch failed" and keeps the network reason (ECONNREFUSED, a TLS error) in its cause.
  return cause.cause instanceof Error ? `${reason}: ${transportReason({ message: reason, cause: cause.cause })}` : reason
}

const apiTimeout = Duration.seconds(30)

/** What streaming into a container needs of the `ws` WebSocket that @kubernetes/client-node attaches with. */
interface AttachSocket {
  readonly bufferedAmount: number
  close(): void
  on(event: "close", listener: () => void): unknown
  on(event: "message", listener: (data: unknown) => void): unknown
}

/** Bytes allowed in flight towards an attached container before writing waits (the WebSocket's buffer included). */
const attachHighWaterMark = 1024 * 1024

const discardingWritable = () => new Writable({ write: (_chunk, _encoding, callback) => callback() })

/** The message of a failure Status on the attach error channel (stream 3), if `data` is one. */
const attachFailure = (data: unknown): string | undefined => {
  if (!Buffer.isBuffer(data) || data.length < 2 || data[0] !== 3) return undefined
  try {
    const status = JSON.parse(data.subarray(1).toString("utf8")) as { status?: unknown; message?: unknown }
    return status.status === "Failure" ? String(status.message ?? "attach failed") : undefined
  } catch {
    return undefined
  }
}

/** The WebSocket client rejects a refused attach with an ErrorEvent, not an Error. */
const attachError = (cause: unknown): Error =>
  cause instanceof Error
    ? cause
    : new Error(
      typeof cause === "object" && cause !== null && "message" in cause ? String(cause.message) : String(cause)
    )

const watchStatusOf = (error: unknown): number | undefined =>
  typeof error === "object" && error !== null && "statusCode" in error && typeof error.statusCode === "number"
    ? error.statusCode
    : undefined

const notFaked = (method: string) => () => Effect.dieMessage(`Cluster.${method} is not part of this fake`)

/** For fakes of Cluster in tests that run no pods: these methods die if called. */
export const podRunningNotFaked = {
  createPod: notFaked("createPod"),
  requestPodDeletion: notFaked("requestPodDeletion"),
  waitForPod: notFaked("waitForPod"),
  podLogTail: notFaked("podLogTail"),
  attachStdin: notFaked("attachStdin"),
  reviewToken: notFaked("reviewToken"),
  reviewAccess: notFaked("reviewAccess")
} as const

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
    const authentication = kubeConfig.makeApiClient(AuthenticationV1Api)
    const authorization = kubeConfig.makeApiClient(AuthorizationV1Api)

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

    /** Reads and deletes are idempotent: retried with backoff when the API server could not be reached or was busy. */
    const retried = <A>(effect: Effect.Effect<A, KubernetesApiError>) =>
      effect.pipe(
        Effect.retry({
          schedule: Schedule.exponential("200 millis").pipe(Schedule.intersect(Schedule.recurs(3))),
          while: (error) => error.status === undefined || error.status === 429 || error.status >= 500
        })
      )

    const whenFound = <A>(effect: Effect.Effect<A, KubernetesApiError>): Effect.Effect<Option.Option<A>, KubernetesApiError> =>
      effect.pipe(
        Effect.map(Option.some),
        Effect.catchIf((error) => error.status === 404, () => Effect.succeed(Option.none<A>()))
      )

    const getPod = Effect.fn("Cluster.getPod")(function*(namespace: string, name: string) {
      return yield* whenFound(
        retried(call(`get pod ${namespace}/${name}`, () => core.readNamespacedPod({ namespace, name })))
      )
    })

    /** Deletes the pod and waits until the API server no longer has it (its containers are gone). */
    const deletePod = Effect.fn("Cluster.deletePod")(function*(namespace: string, name: string, timeout: Duration.Duration) {
      const deleted = yield* whenFound(
        retried(call(`delete pod ${namespace}/${name}`, () => core.deleteNamespacedPod({ namespace, name })))
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
      const list = yield* retried(call(`list Checkpointer pods on node ${node}`, () =>
        core.listPodForAllNamespaces({
          labelSelector: "app.kubernetes.io/name=checkpointer",
          fieldSelector: `spec.nodeName=${node}`
        })))
      return list.items.filter((pod) => pod.status?.phase === "Running" && (pod.status.podIP ?? "") !== "")
    })

    const watcher = new Watch(kubeConfig)
    const attacher = new Attach(kubeConfig)

    const createPod = Effect.fn("Cluster.createPod")(function*(namespace: string, pod: V1Pod) {
      const name = pod.metadata?.name ?? `${pod.metadata?.generateName ?? ""}*`
      return yield* call(`create pod ${namespace}/${name}`, () => core.createNamespacedPod({ namespace, body: pod }))
    })

    /** Asks for the pod's deletion and returns without waiting for it to go; a pod already gone is fine. */
    const requestPodDeletion = Effect.fn("Cluster.requestPodDeletion")(function*(namespace: string, name: string) {
      yield* whenFound(
        retried(call(`delete pod ${namespace}/${name}`, () => core.deleteNamespacedPod({ namespace, name })))
      )
    })

    const podGone = (namespace: string, name: string) =>
      new KubernetesApiError({ status: 404, message: `pod ${namespace}/${name} no longer exists` })

    /** One watch from the pod's current state: the pod once `until` holds, or None if the watch ended before. */
    const watchOnce = (namespace: string, name: string, until: (pod: V1Pod) => boolean) =>
      Effect.gen(function*() {
        const current = yield* getPod(namespace, name)
        if (Option.isNone(current)) return yield* podGone(namespace, name)
        if (until(current.value)) return current
        return yield* Effect.async<Option.Option<V1Pod>, KubernetesApiError>((resume) => {
          let finished = false
          let controller: AbortController | undefined
          const finish = (outcome: Effect.Effect<Option.Option<V1Pod>, KubernetesApiError>) => {
            if (finished) return
            finished = true
            controller?.abort()
            resume(outcome)
          }
          const query = {
            fieldSelector: `metadata.name=${name}`,
            resourceVersion: current.value.metadata?.resourceVersion
          }
          const failed = (status: number | undefined, reason: string, cause: unknown) =>
            Effect.fail(new KubernetesApiError({ status, message: `watch pod ${namespace}/${name}: ${reason}`, cause }))
          watcher.watch(`/api/v1/namespaces/${namespace}/pods`, query, (type: string, pod: V1Pod) => {
            if (type === "DELETED") finish(Effect.fail(podGone(namespace, name)))
            else if (type === "ERROR") finish(Effect.succeedNone)
            else if (until(pod)) finish(Effect.succeedSome(pod))
          }, (error: unknown) => {
            const status = watchStatusOf(error)
            finish(
              status !== undefined && status < 500 && status !== 410
                ? failed(status, String(status), error)
                : Effect.succeedNone
            )
          }).then(
            (started) => {
              controller = started
              if (finished) started.abort()
            },
            (cause) => finish(failed(undefined, reasonOf(cause), cause))
          )
          return Effect.sync(() => {
            finished = true
            controller?.abort()
          })
        })
      })

    /** Waits until `until` holds for the pod (its current state, then changes through watches); fails if it goes. */
    const waitForPod = Effect.fn("Cluster.waitForPod")(function*(
      namespace: string,
      name: string,
      until: (pod: V1Pod) => boolean
    ) {
      const next: Effect.Effect<V1Pod, KubernetesApiError> = watchOnce(namespace, name, until).pipe(
        Effect.flatMap(Option.match({
          onSome: Effect.succeed,
          onNone: () => Effect.zipRight(Effect.sleep("250 millis"), Effect.suspend(() => next))
        }))
      )
      return yield* next
    })

    /** The last `lines` lines of a container's log. */
    const podLogTail = Effect.fn("Cluster.podLogTail")(function*(
      namespace: string,
      name: string,
      container: string,
      lines: number
    ) {
      return yield* call(
        `read the log of pod ${namespace}/${name}`,
        () => core.readNamespacedPodLog({ namespace, name, container, tailLines: lines })
      )
    })

    /**
     * Attaches to a container's stdin (pod attach over WebSocket), writes `input` as fast as the connection takes it,
     * then closes stdin. Fails if the connection closes first.
     */
    const attachStdin = <E>(namespace: string, name: string, container: string, input: Stream.Stream<Uint8Array, E>) =>
      Effect.gen(function*() {
        const stdin = new PassThrough()
        const closed = yield* Deferred.make<never, KubernetesApiError>()
        const socket: AttachSocket = yield* Effect.acquireRelease(
          call(
            `attach to pod ${namespace}/${name}`,
            () =>
              attacher.attach(namespace, name, container, discardingWritable(), discardingWritable(), stdin, false)
                .catch((cause: unknown) => Promise.reject(attachError(cause)))
          ),
          (socket) => Effect.sync(() => socket.close())
        )
        let failure: string | undefined
        socket.on("message", (data) => {
          failure = attachFailure(data) ?? failure
        })
        socket.on("close", () =>
          Deferred.unsafeDone(
            closed,
            Effect.fail(new KubernetesApiError({
              status: undefined,
              message: `attach to pod ${namespace}/${name}: the connection closed before stdin was complete${
                failure === undefined ? "" : ` (${failure})`
              }`
            }))
          ))
        const inFlight = () => stdin.writableLength + stdin.readableLength + socket.bufferedAmount
        const drained: Effect.Effect<void> = Effect.suspend(() =>
          inFlight() <= attachHighWaterMark ? Effect.void : Effect.zipRight(Effect.sleep("2 millis"), drained)
        )
        const ended = Effect.async<void>((resume) => {
          if (stdin.readableEnded) return resume(Effect.void)
          stdin.once("end", () => resume(Effect.void))
        })
        const write = (chunk: Uint8Array) => Effect.zipRight(Effect.sync(() => stdin.write(chunk)), drained)
        const send = Stream.runForEach(input, write).pipe(
          Effect.zipRight(Effect.suspend(() => {
            stdin.end()
            return ended
          }))
        )
        yield* Effect.raceFirst(send, Deferred.await(closed))
      }).pipe(Effect.scoped, Effect.withSpan("Cluster.attachStdin", { attributes: { namespace, name, container } }))

    /** TokenReview: who the bearer of `token` is, or None when the API server does not know the token. */
    const reviewToken = Effect.fn("Cluster.reviewToken")(function*(token: string) {
      const review = yield* retried(call("token review", () =>
        authentication.createTokenReview({ body: { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token } } })))
      return review.status?.authenticated === true && review.status.user !== undefined
        ? Option.some(review.status.user)
        : Option.none()
    })

    /** SubjectAccessReview: whether `user` may do what `access` says. */
    const reviewAccess = Effect.fn("Cluster.reviewAccess")(function*(user: V1UserInfo, access: V1ResourceAttributes) {
      const review = yield* retried(call("access review", () =>
        authorization.createSubjectAccessReview({
          body: {
            apiVersion: "authorization.k8s.io/v1",
            kind: "SubjectAccessReview",
            spec: {
              resourceAttributes: access,
              ...(user.username === undefined ? {} : { user: user.username }),
              ...(user.uid === undefined ? {} : { uid: user.uid }),
              ...(user.groups === undefined ? {} : { groups: user.groups }),
              ...(user.extra === undefined ? {} : { extra: user.extra })
            }
          }
        })))
      return review.status?.allowed === true
    })

    return {
      reviewToken,
      reviewAccess,
      getPod,
      deletePod,
      checkpointerPodsOn,
      createPod,
      requestPodDeletion,
      waitForPod,
      podLogTail,
      attachStdin
    } as const
  })
}) {}
