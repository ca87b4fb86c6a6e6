import {
  callApi,
  idempotent,
  KubernetesApi,
  KubernetesApiError,
  kubernetesReason,
  reasonOf,
  whenFound
} from "@checkpointer/core"
import { Attach, CoreV1Api, Watch } from "@kubernetes/client-node"
import type { V1Pod } from "@kubernetes/client-node"
import { Deferred, Effect, Option, Stream } from "effect"
import { PassThrough, Writable } from "node:stream"

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
const attachError = (cause: unknown): Error => cause instanceof Error ? cause : new Error(reasonOf(cause))

const watchStatusOf = (error: unknown): number | undefined =>
  typeof error === "object" && error !== null && "statusCode" in error && typeof error.statusCode === "number"
    ? error.statusCode
    : undefined

/** The life of the pods that build images: create, watch, logs, stdin over attach, delete. */
export class KanikoPods extends Effect.Service<KanikoPods>()("checkpointer/KanikoPods", {
  effect: Effect.gen(function*() {
    const { kubeConfig } = yield* KubernetesApi
    const core = kubeConfig.makeApiClient(CoreV1Api)
    const watcher = new Watch(kubeConfig)
    const attacher = new Attach(kubeConfig)

    const getPod = Effect.fn("KanikoPods.getPod")(function*(namespace: string, name: string) {
      return yield* whenFound(
        idempotent(callApi(`get pod ${namespace}/${name}`, () => core.readNamespacedPod({ namespace, name })))
      )
    })

    const createPod = Effect.fn("KanikoPods.createPod")(function*(namespace: string, pod: V1Pod) {
      const name = pod.metadata?.name ?? `${pod.metadata?.generateName ?? ""}*`
      return yield* callApi(`create pod ${namespace}/${name}`, () => core.createNamespacedPod({ namespace, body: pod }))
    })

    /** Asks for the pod's deletion and returns without waiting for it to go; a pod already gone is fine. */
    const requestPodDeletion = Effect.fn("KanikoPods.requestPodDeletion")(function*(namespace: string, name: string) {
      yield* whenFound(
        idempotent(callApi(`delete pod ${namespace}/${name}`, () => core.deleteNamespacedPod({ namespace, name })))
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
            (cause) => finish(failed(undefined, kubernetesReason(cause), cause))
          )
          return Effect.sync(() => {
            finished = true
            controller?.abort()
          })
        })
      })

    /** Waits until `until` holds for the pod (its current state, then changes through watches); fails if it goes. */
    const waitForPod = Effect.fn("KanikoPods.waitForPod")(function*(
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
    const podLogTail = Effect.fn("KanikoPods.podLogTail")(function*(
      namespace: string,
      name: string,
      container: string,
      lines: number
    ) {
      return yield* callApi(
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
          callApi(
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
            Effect.fail(
              new KubernetesApiError({
                status: undefined,
                message: `attach to pod ${namespace}/${name}: the connection closed before stdin was complete${
                  failure === undefined ? "" : ` (${failure})`
                }`
              })
            )
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
      }).pipe(Effect.scoped, Effect.withSpan("KanikoPods.attachStdin", { attributes: { namespace, name, container } }))

    return { getPod, createPod, requestPodDeletion, waitForPod, podLogTail, attachStdin } as const
  }),
  dependencies: [KubernetesApi.Default]
}) {}
