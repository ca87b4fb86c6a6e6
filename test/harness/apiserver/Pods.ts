import { Effect, FiberMap, FiberSet, Option, Ref } from "effect"
import { randomBytes } from "node:crypto"
import type { IncomingMessage } from "node:http"
import type { ContainerStreams, PodHandle, PodRunner } from "../PodRuntime.ts"
import type { Events } from "./Events.ts"
import type { Faults } from "./Faults.ts"
import { schedule } from "./Nodes.ts"
import { isWatchQuery, watchPods } from "./PodWatch.ts"
import { asRecord, asStringMap, readJson } from "./RequestBody.ts"
import type { Pod, PodContainer, PodSpec, PodStatus } from "./Resources.ts"
import { asListItem, keyOf } from "./Resources.ts"
import type { Handler, Route } from "./Router.ts"
import { reply } from "./Router.ts"
import type { Secrets } from "./Secrets.ts"
import { podMatcher } from "./Selectors.ts"
import type { ApiFailure } from "./Status.ts"
import { alreadyExists, badRequest, invalid, methodNotAllowed, notFound } from "./Status.ts"
import type { NewObjectMeta, Store } from "./Store.ts"
import { bumped, changed, nextMeta, sortedPods, storePod, timestamp, withoutPod } from "./Store.ts"

export interface AddPodOptions {
  readonly namespace: string
  readonly name: string
  readonly nodeName: string
  readonly podIP?: string
  readonly hostIP?: string
  readonly labels?: Readonly<Record<string, string>>
  readonly annotations?: Readonly<Record<string, string>>
  readonly containers: ReadonlyArray<{ readonly name: string; readonly image?: string }>
}

/** The image shown for pods registered with `addPod` (no agent pulls it). */
const staticPodImage = "registry.k8s.io/pause:3.10"

const generateNameSuffix = () => {
  const alphabet = "bcdfghjklmnpqrstvwxz2456789"
  return Array.from(randomBytes(5), (byte) => alphabet[byte % alphabet.length]).join("")
}

/** Runs (in the server's scope) for every pod created through the API: the place for a node agent to start it. */
type OnPodCreated = (pod: Pod) => Effect.Effect<void>

/**
 * Pods: created through the API (scheduled, then run by the pod runner) or registered by the harness; deleted
 * gracefully (the runner's run is interrupted, then the pod goes); listed, read and watched.
 */
export const makePods = (options: {
  readonly store: Store
  readonly streams: ContainerStreams
  readonly secrets: Secrets
  readonly faults: Faults
  readonly onPodCreated: OnPodCreated | undefined
  readonly events: Pick<Events, "report">
}) =>
  Effect.gen(function*() {
    const { faults, store, streams } = options
    const background = yield* FiberSet.make()
    const runner = yield* Ref.make<PodRunner | undefined>(undefined)
    const runningPods = yield* FiberMap.make<string>()
    const graceOf = yield* Ref.make<ReadonlyMap<string, number>>(new Map())

    const create = (pod: {
      readonly metadata: NewObjectMeta & { readonly namespace: string }
      readonly spec: PodSpec
      readonly status: (at: string) => PodStatus
    }) =>
      store.change((current, at) => {
        if (current.pods.has(keyOf(pod.metadata.namespace, pod.metadata.name))) {
          return Effect.fail(alreadyExists("pods", pod.metadata.name))
        }
        const [resourceVersion, metadata] = nextMeta(current, pod.metadata, at)
        const created: Pod = {
          apiVersion: "v1",
          kind: "Pod",
          metadata: { ...metadata, namespace: pod.metadata.namespace },
          spec: pod.spec,
          status: pod.status(at)
        }
        return changed(created, [{ type: "ADDED", object: created }], storePod(current, created, resourceVersion))
      })

    const updateStatus = (namespace: string, name: string, update: (status: PodStatus) => PodStatus) =>
      store.change((current) => {
        const stored = current.pods.get(keyOf(namespace, name))
        if (stored === undefined) return Effect.fail(notFound("pods", name))
        const resourceVersion = current.resourceVersion + 1
        const updated: Pod = { ...bumped(stored, resourceVersion), status: update(stored.status) }
        const next = storePod(current, updated, resourceVersion)
        return changed(updated, [{ type: "MODIFIED", object: updated, previous: stored }], next)
      })

    const handleOf = (pod: Pod): PodHandle => ({
      pod,
      setStatus: (update) => Effect.ignore(updateStatus(pod.metadata.namespace, pod.metadata.name, update)),
      stdin: (container) => streams.stdinOf(pod, container),
      graceSeconds: Effect.map(
        Ref.get(graceOf),
        (all) => all.get(pod.metadata.uid) ?? pod.spec.terminationGracePeriodSeconds ?? 30
      ),
      log: (container, text) => Effect.sync(() => streams.appendLog(streams.ioOf(pod, container), text)),
      secret: (name) => options.secrets.decoded(pod.metadata.namespace, name),
      report: (type, reason, message) => Effect.asVoid(options.events.report(pod.metadata, { type, reason, message }))
    })

    const createFrom = (namespace: string, body: Record<string, unknown>) =>
      Effect.gen(function*() {
        const metadata = asRecord(body["metadata"])
        const spec = asRecord(body["spec"])
        if (typeof metadata["namespace"] === "string" && metadata["namespace"] !== namespace) {
          return yield* badRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
          )
        }
        const generateName = typeof metadata["generateName"] === "string" ? metadata["generateName"] : undefined
        const name = typeof metadata["name"] === "string" && metadata["name"].length > 0
          ? metadata["name"]
          : generateName === undefined
          ? undefined
          : generateName + generateNameSuffix()
        const containers = Array.isArray(spec["containers"]) ? spec["containers"].map(asRecord) : []
        const missing = name === undefined
          ? "metadata.name: Required value"
          : containers.length === 0 || containers.some((c) => typeof c["name"] !== "string")
          ? "spec.containers: Required value"
          : undefined
        if (name === undefined || missing !== undefined) {
          return yield* invalid(`Pod "${name ?? ""}" is invalid: ${missing}`, { name: name ?? "", kind: "Pod" })
        }
        const labels = asStringMap(metadata["labels"])
        const annotations = asStringMap(metadata["annotations"])
        const nodeName = typeof spec["nodeName"] === "string"
          ? spec["nodeName"]
          : schedule((yield* store.state).nodes, asStringMap(spec["nodeSelector"]) ?? {})
        const created = yield* create({
          metadata: {
            name,
            namespace,
            ...(generateName === undefined ? {} : { generateName }),
            ...(labels === undefined ? {} : { labels }),
            ...(annotations === undefined ? {} : { annotations })
          },
          spec: {
            restartPolicy: "Always",
            terminationGracePeriodSeconds: 30,
            dnsPolicy: "ClusterFirst",
            schedulerName: "default-scheduler",
            ...spec,
            ...(nodeName === undefined ? {} : { nodeName }),
            containers: containers as unknown as ReadonlyArray<PodContainer>
          },
          status: () => ({ phase: "Pending", qosClass: "BestEffort" })
        })
        if (options.onPodCreated !== undefined) yield* FiberSet.run(background, options.onPodCreated(created))
        const current = yield* Ref.get(runner)
        if (current !== undefined && current.accepts(created)) {
          yield* FiberMap.run(
            runningPods,
            created.metadata.uid,
            current.run(handleOf(created)).pipe(Effect.ensuring(streams.markExited(created)))
          )
        }
        return created
      })

    /** A Running pod bound to a node that no runner runs (a process outside the harness's runtime). */
    const add = (pod: AddPodOptions) =>
      Effect.gen(function*() {
        const current = yield* store.state
        const hostIP = pod.hostIP ?? current.nodes.get(pod.nodeName)?.status.addresses[0]?.address
        const podIP = pod.podIP ?? `10.244.0.${(current.pods.size % 250) + 2}`
        return yield* create({
          metadata: {
            name: pod.name,
            namespace: pod.namespace,
            ...(pod.labels === undefined ? {} : { labels: pod.labels }),
            ...(pod.annotations === undefined ? {} : { annotations: pod.annotations })
          },
          spec: {
            nodeName: pod.nodeName,
            containers: pod.containers.map((container) => ({ image: staticPodImage, ...container })),
            restartPolicy: "Always",
            terminationGracePeriodSeconds: 30
          },
          status: (at) => ({
            phase: "Running",
            ...(hostIP === undefined ? {} : { hostIP, hostIPs: [{ ip: hostIP }] }),
            podIP,
            podIPs: [{ ip: podIP }],
            startTime: at,
            qosClass: "BestEffort",
            conditions: ["PodScheduled", "Initialized", "ContainersReady", "Ready"].map((type) => ({
              type,
              status: "True",
              lastTransitionTime: at
            })),
            containerStatuses: pod.containers.map((container) => ({
              name: container.name,
              image: container.image ?? staticPodImage,
              imageID: "",
              ready: true,
              started: true,
              restartCount: 0,
              state: { running: { startedAt: at } }
            }))
          })
        })
      })

    /**
     * The node agent's part of a graceful delete: its run is interrupted (its finalizers stop and remove the
     * containers within the grace period), then the pod goes.
     */
    const terminate = (pod: Pod, graceSeconds: number) =>
      Ref.update(graceOf, (all) => new Map(all).set(pod.metadata.uid, graceSeconds)).pipe(
        Effect.zipRight(FiberMap.remove(runningPods, pod.metadata.uid)),
        Effect.zipRight(streams.forget(pod)),
        Effect.zipRight(store.change((current) => {
          const stored = current.pods.get(keyOf(pod.metadata.namespace, pod.metadata.name))
          if (stored === undefined || stored.metadata.uid !== pod.metadata.uid) return changed(undefined, [], current)
          const resourceVersion = current.resourceVersion + 1
          const gone = bumped(stored, resourceVersion)
          return changed(undefined, [{ type: "DELETED", object: gone }], withoutPod(current, stored, resourceVersion))
        })),
        Effect.catchAll((error) =>
          Effect.logWarning(`node agent could not remove the pod ${pod.metadata.name}: ${String(error)}`)
        )
      )

    const remove = (namespace: string, name: string, gracePeriodSeconds: number | undefined) =>
      Effect.gen(function*() {
        type Deletion = readonly [pod: Pod, grace: number, started: boolean]
        const [deleted, grace, started] = yield* store.change<Deletion, ApiFailure>((current, at) => {
          const stored = current.pods.get(keyOf(namespace, name))
          if (stored === undefined) return Effect.fail(notFound("pods", name))
          const grace = gracePeriodSeconds ?? stored.spec.terminationGracePeriodSeconds ?? 30
          if (stored.metadata.deletionTimestamp !== undefined) {
            return changed([stored, grace, false] as const, [], current)
          }
          const resourceVersion = current.resourceVersion + 1
          const deadline = timestamp(Date.parse(at) + grace * 1000)
          const marked = bumped(stored, resourceVersion, {
            deletionTimestamp: deadline,
            deletionGracePeriodSeconds: grace
          })
          if (grace === 0) {
            // A forced delete: the object goes at once, the containers are killed afterwards.
            const next = withoutPod(current, stored, resourceVersion)
            return changed([marked, grace, true] as const, [{ type: "DELETED", object: marked }], next)
          }
          const next = storePod(current, marked, resourceVersion)
          return changed([marked, grace, true] as const, [{ type: "MODIFIED", object: marked, previous: stored }], next)
        })
        if (started) yield* FiberSet.run(background, terminate(deleted, grace))
        return deleted
      })

    const gracePeriodOf = (url: URL, request: IncomingMessage) =>
      Effect.map(readJson(request), (body) => {
        const query = url.searchParams.get("gracePeriodSeconds")
        const fromBody = body["gracePeriodSeconds"]
        if (query !== null && /^\d+$/.test(query)) return Number.parseInt(query, 10)
        return typeof fromBody === "number" && fromBody >= 0 ? fromBody : undefined
      })

    /** A pod list, or a watch of it (`/api/v1/watch/...` or `?watch=true`). */
    const listOrWatch = (namespace: string | undefined): Handler => ({ onStreamStarted, response, url, watchPath }) =>
      watchPath || isWatchQuery(url)
        ? Effect.as(watchPods(store, namespace, url, response, onStreamStarted), "streamed" as const)
        : Effect.gen(function*() {
          const matches = yield* podMatcher(namespace, url.searchParams)
          const current = yield* store.state
          return reply(200)({
            kind: "PodList",
            apiVersion: "v1",
            metadata: { resourceVersion: String(current.resourceVersion) },
            items: sortedPods(current).filter(matches).map(asListItem)
          })
        })

    const routes: ReadonlyArray<Route> = [
      { path: "api/v1/pods", methods: { GET: listOrWatch(undefined) } },
      {
        path: "api/v1/namespaces/*/pods",
        methods: {
          GET: (request) => listOrWatch(request.params[0])(request),
          POST: ({ incoming, params: [namespace], watchPath }) =>
            watchPath
              ? Effect.fail(methodNotAllowed())
              : faults.checkPodCreation.pipe(
                Effect.zipRight(readJson(incoming)),
                Effect.flatMap((body) => createFrom(namespace!, body)),
                Effect.map(reply(201))
              )
        }
      },
      {
        path: "api/v1/namespaces/*/pods/*",
        methods: {
          GET: ({ params: [namespace, name] }) =>
            Effect.flatMap(store.state, (current) => {
              const pod = current.pods.get(keyOf(namespace!, name!))
              return pod === undefined ? Effect.fail(notFound("pods", name!)) : Effect.succeed(reply(200)(pod))
            }),
          DELETE: ({ incoming, params: [namespace, name], url }) =>
            gracePeriodOf(url, incoming).pipe(
              Effect.flatMap((grace) => remove(namespace!, name!, grace)),
              Effect.map(reply(200))
            )
        }
      }
    ]

    return {
      add,
      create: createFrom,
      remove,
      updateStatus,
      find: (namespace: string, name: string) =>
        Effect.map(store.state, (current) => Option.fromNullable(current.pods.get(keyOf(namespace, name)))),
      all: Effect.map(store.state, sortedPods),
      events: Effect.map(store.state, (current) => current.events),
      setRunner: (next: PodRunner | undefined) => Ref.set(runner, next),
      routes
    } as const
  })
