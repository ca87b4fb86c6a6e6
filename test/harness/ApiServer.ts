import type { CommandExecutor } from "@effect/platform"
import { FileSystem, Path } from "@effect/platform"
import type { PlatformError } from "@effect/platform/Error"
import { randomBytes, randomUUID } from "node:crypto"
import type { IncomingMessage, ServerResponse } from "node:http"
import type { Duplex } from "node:stream"
import { Clock, Data, Duration, Effect, FiberMap, FiberSet, Option, PubSub, Ref, Stream } from "effect"
import type { Scope } from "effect"
import type { Pki } from "./Certificates.ts"
import type { HttpsServerError } from "./HttpsServer.ts"
import { readBody, respondJson, respondText, serveHttps } from "./HttpsServer.ts"
import type { CreateFault, PodHandle, PodRunner } from "./PodRuntime.ts"
import { decodeSecretData, makeAttachServer, makeContainerStreams, tailLines } from "./PodRuntime.ts"

// ---------------------------------------------------------------------------------------------------------------------
// Wire shapes (the JSON the real API server sends; only the fields this simulation fills are typed)

export interface ObjectMeta {
  readonly name: string
  readonly namespace?: string
  readonly uid: string
  readonly resourceVersion: string
  readonly creationTimestamp: string
  readonly generateName?: string
  readonly labels?: Readonly<Record<string, string>>
  readonly annotations?: Readonly<Record<string, string>>
  readonly deletionTimestamp?: string
  readonly deletionGracePeriodSeconds?: number
}

export interface PodContainer {
  readonly name: string
  readonly image?: string
  readonly [field: string]: unknown
}

export interface PodSpec {
  readonly nodeName?: string
  readonly containers: ReadonlyArray<PodContainer>
  readonly terminationGracePeriodSeconds?: number
  readonly [field: string]: unknown
}

export interface PodStatus {
  readonly phase: "Pending" | "Running" | "Succeeded" | "Failed" | "Unknown"
  readonly podIP?: string
  readonly hostIP?: string
  readonly [field: string]: unknown
}

export interface Pod {
  readonly apiVersion: "v1"
  readonly kind: "Pod"
  readonly metadata: ObjectMeta & { readonly namespace: string }
  readonly spec: PodSpec
  readonly status: PodStatus
}

export interface Secret {
  readonly apiVersion: "v1"
  readonly kind: "Secret"
  readonly metadata: ObjectMeta & { readonly namespace: string }
  readonly type: string
  /** base64 values, as on the wire */
  readonly data: Readonly<Record<string, string>>
}

export interface Node {
  readonly apiVersion: "v1"
  readonly kind: "Node"
  readonly metadata: ObjectMeta
  readonly status: {
    readonly addresses: ReadonlyArray<{ readonly type: string; readonly address: string }>
    readonly conditions: ReadonlyArray<{ readonly type: string; readonly status: string }>
  }
}

export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED"

export interface PodEvent {
  readonly type: WatchEventType
  readonly object: Pod
  /** The pod before the change (MODIFIED only): decides what a filtered watch sees. */
  readonly previous?: Pod
  readonly resourceVersion: number
}

export interface ApiRequest {
  readonly method: string
  readonly path: string
  /** The raw query string, without "?". */
  readonly query: string
  readonly authorized: boolean
  /** undefined while pending; 200 for a watch as soon as its stream has started. */
  readonly status?: number
}

export class ApiServerError extends Data.TaggedError("ApiServerError")<{ readonly message: string }> {}

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

export interface ApiServer {
  readonly url: string
  readonly address: string
  readonly port: number
  readonly caFile: string
  /** A kubeconfig (server URL, CA, bearer-token user) for @kubernetes/client-node's KubeConfig.loadFromFile. */
  readonly kubeconfigPath: string
  readonly token: string
  /**
   * Registers a Running pod bound to `nodeName` that no node agent runs: it stands for a process outside the harness's
   * runtime (a Checkpointer process registered as its DaemonSet pod).
   */
  readonly addPod: (options: AddPodOptions) => Effect.Effect<Pod, ApiServerError>
  /** Deletes a pod as `DELETE .../pods/NAME` does (the agent stops its containers, then it goes). */
  readonly deletePod: (
    namespace: string,
    name: string,
    gracePeriodSeconds?: number
  ) => Effect.Effect<void, ApiServerError>
  /** Creates a pod as `POST /api/v1/namespaces/NS/pods` does (scheduled, then run by the node agent). */
  readonly createPod: (namespace: string, pod: unknown) => Effect.Effect<Pod, ApiServerError>
  readonly addNode: (options: {
    readonly name: string
    readonly address: string
    readonly labels?: Readonly<Record<string, string>>
  }) => Effect.Effect<Node>
  /** A caller known to the TokenReview, allowed what `allow` lists (SubjectAccessReview); `namespace` omitted = all. */
  readonly addUser: (user: {
    readonly token: string
    readonly username: string
    readonly allow: ReadonlyArray<
      { readonly verb: string; readonly resource: string; readonly subresource?: string; readonly namespace?: string }
    >
  }) => Effect.Effect<void>
  readonly addSecret: (options: {
    readonly namespace: string
    readonly name: string
    readonly type?: string
    /** plain-text values (stored base64-encoded, as `data`) */
    readonly stringData: Readonly<Record<string, string>>
  }) => Effect.Effect<Secret, ApiServerError>
  /** Replaces a pod's status (the node agent's job), publishing MODIFIED. */
  readonly updatePodStatus: (
    namespace: string,
    name: string,
    update: (status: PodStatus) => PodStatus
  ) => Effect.Effect<Pod, ApiServerError>
  readonly findPod: (namespace: string, name: string) => Effect.Effect<Option.Option<Pod>>
  readonly pods: () => Effect.Effect<ReadonlyArray<Pod>>
  readonly secrets: () => Effect.Effect<ReadonlyArray<Secret>>
  readonly events: () => Effect.Effect<ReadonlyArray<PodEvent>>
  readonly requests: () => Effect.Effect<ReadonlyArray<ApiRequest>>
  /** From now on, pods created through the API that `runner` accepts are run by it (undefined: none). */
  readonly setPodRunner: (runner: PodRunner | undefined) => Effect.Effect<void>
  /** Every pod creation is answered with this failure until it is reset with null. */
  readonly setCreateFault: (fault: CreateFault | null) => Effect.Effect<void>
  /** A container's log so far (pods created through the API). */
  readonly containerLog: (namespace: string, pod: string, container: string) => Effect.Effect<string>
}

export interface ApiServerOptions {
  readonly pki: Pki
  /** Where the kubeconfig goes. */
  readonly dir: string
  readonly address?: string
  /** Runs (in the server's scope) for every pod created through the API: the place for a node agent to start it. */
  readonly onPodCreated?: (pod: Pod) => Effect.Effect<void>
}

// ---------------------------------------------------------------------------------------------------------------------
// Statuses and selectors

const statusBody = (
  code: number,
  reason: string,
  message: string,
  details?: { readonly name?: string; readonly kind?: string }
) => ({
  kind: "Status",
  apiVersion: "v1",
  metadata: {},
  status: "Failure",
  message,
  reason,
  ...(details === undefined ? {} : { details }),
  code
})

class ApiFailure extends Data.TaggedError("ApiFailure")<{ readonly body: ReturnType<typeof statusBody> }> {}

const unknownResource = () =>
  new ApiFailure({ body: statusBody(404, "NotFound", "the server could not find the requested resource") })
const methodNotAllowed = () =>
  new ApiFailure({
    body: statusBody(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
  })
const notFound = (kind: string, name: string) =>
  new ApiFailure({ body: statusBody(404, "NotFound", `${kind} "${name}" not found`, { name, kind }) })
const badRequest = (message: string) => new ApiFailure({ body: statusBody(400, "BadRequest", message) })

type Requirement = (labels: Readonly<Record<string, string>>) => boolean

const splitTopLevel = (selector: string) => {
  const parts: Array<string> = []
  let depth = 0
  let current = ""
  for (const char of selector) {
    if (char === "(") depth++
    if (char === ")") depth--
    if (char === "," && depth === 0) {
      parts.push(current)
      current = ""
    } else {
      current += char
    }
  }
  parts.push(current)
  return parts.map((part) => part.trim()).filter((part) => part.length > 0)
}

/** Label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma-separated (AND). */
export const parseLabelSelector = (selector: string): Effect.Effect<Requirement, ApiFailure> =>
  Effect.forEach(splitTopLevel(selector), (part): Effect.Effect<Requirement, ApiFailure> => {
    const key = "([A-Za-z0-9][-A-Za-z0-9_./]*)"
    const value = "([-A-Za-z0-9_.]*)"
    let match = new RegExp(`^!\\s*${key}$`).exec(part)
    if (match) {
      const k = match[1]!
      return Effect.succeed((labels) => !(k in labels))
    }
    match = new RegExp(`^${key}\\s*(==|=|!=)\\s*${value}$`).exec(part)
    if (match) {
      const [, k, op, v] = match as unknown as [string, string, string, string]
      return Effect.succeed(op === "!=" ? (labels) => labels[k] !== v : (labels) => labels[k] === v)
    }
    match = new RegExp(`^${key}\\s+(in|notin)\\s*\\(([^)]*)\\)$`).exec(part)
    if (match) {
      const [, k, op, list] = match as unknown as [string, string, string, string]
      const values = list.split(",").map((v) => v.trim())
      return Effect.succeed(
        op === "in"
          ? (labels) => k in labels && values.includes(labels[k]!)
          : (labels) => !(k in labels) || !values.includes(labels[k]!)
      )
    }
    match = new RegExp(`^${key}$`).exec(part)
    if (match) {
      const k = match[1]!
      return Effect.succeed((labels) => k in labels)
    }
    return Effect.fail(badRequest(`unable to parse requirement: ${JSON.stringify(part)}`))
  }).pipe(Effect.map((requirements) => (labels) => requirements.every((matches) => matches(labels))))

const podFields: Record<string, (pod: Pod) => string> = {
  "metadata.name": (pod) => pod.metadata.name,
  "metadata.namespace": (pod) => pod.metadata.namespace,
  "spec.nodeName": (pod) => pod.spec.nodeName ?? "",
  "spec.restartPolicy": (pod) => String(pod.spec["restartPolicy"] ?? ""),
  "spec.schedulerName": (pod) => String(pod.spec["schedulerName"] ?? ""),
  "spec.serviceAccountName": (pod) => String(pod.spec["serviceAccountName"] ?? ""),
  "spec.hostNetwork": (pod) => String(pod.spec["hostNetwork"] ?? false),
  "status.phase": (pod) => pod.status.phase,
  "status.podIP": (pod) => pod.status.podIP ?? "",
  "status.nominatedNodeName": (pod) => String(pod.status["nominatedNodeName"] ?? "")
}

/** Pod field selectors: `field=value`, `field==value`, `field!=value`, comma-separated (AND). */
export const parsePodFieldSelector = (selector: string): Effect.Effect<(pod: Pod) => boolean, ApiFailure> =>
  Effect.forEach(splitTopLevel(selector), (part) => {
    const match = /^([A-Za-z.]+)\s*(==|=|!=)\s*(.*)$/.exec(part)
    if (!match) return Effect.fail(badRequest(`invalid selector: '${selector}'; can't understand '${part}'`))
    const [, field, op, value] = match as unknown as [string, string, string, string]
    const get = podFields[field]
    if (get === undefined) {
      return Effect.fail(badRequest(`field label not supported: ${field}`))
    }
    return Effect.succeed(op === "!=" ? (pod: Pod) => get(pod) !== value : (pod: Pod) => get(pod) === value)
  }).pipe(Effect.map((requirements) => (pod: Pod) => requirements.every((matches) => matches(pod))))

// ---------------------------------------------------------------------------------------------------------------------

type NewObjectMeta = Omit<ObjectMeta, "uid" | "resourceVersion" | "creationTimestamp">

type EventDraft = Omit<PodEvent, "resourceVersion">

/** The outcome of a change to the pods: its result, the events it causes, the next state. */
const changed = <A>(result: A, events: ReadonlyArray<EventDraft>, next: State) =>
  Effect.succeed([result, events, next] as const)

interface State {
  readonly resourceVersion: number
  readonly pods: ReadonlyMap<string, Pod>
  readonly secrets: ReadonlyMap<string, Secret>
  readonly nodes: ReadonlyMap<string, Node>
  readonly events: ReadonlyArray<PodEvent>
}

const keyOf = (namespace: string, name: string) => `${namespace}/${name}`

const nodeArchitecture = ({ x64: "amd64", arm64: "arm64" } as Record<string, string>)[process.arch] ?? process.arch

/** The scheduler's part: the first node (by name) whose labels match the pod's nodeSelector; none fits: unscheduled. */
const schedule = (nodes: ReadonlyMap<string, Node>, nodeSelector: Readonly<Record<string, string>>) =>
  [...nodes.values()].map((node) => node.metadata).sort((a, b) => a.name.localeCompare(b.name)).find((node) =>
    Object.entries(nodeSelector).every(([key, value]) => node.labels?.[key] === value)
  )?.name

/** The image shown for pods registered with `addPod` (no agent pulls it). */
const staticPodImage = "registry.k8s.io/pause:3.10"

/** RFC 3339 with second precision, as Kubernetes writes metav1.Time. */
const timestamp = (millis: number) => new Date(millis).toISOString().replace(/\.\d{3}Z$/, "Z")

const generateNameSuffix = () => {
  const alphabet = "bcdfghjklmnpqrstvwxz2456789"
  return Array.from(randomBytes(5), (byte) => alphabet[byte % alphabet.length]).join("")
}

const base64 = (text: string) => Buffer.from(text, "utf8").toString("base64")

/** List items come without apiVersion/kind, as the real API server sends them. */
const asListItem = <A extends { readonly apiVersion: string; readonly kind: string }>({
  apiVersion: _apiVersion,
  kind: _kind,
  ...rest
}: A) => rest

const kubeconfigYaml = (options: { server: string; caFile: string; token: string }) =>
  [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: harness",
    "  cluster:",
    `    server: ${options.server}`,
    `    certificate-authority: ${JSON.stringify(options.caFile)}`,
    "users:",
    "- name: checkpointer",
    "  user:",
    `    token: ${options.token}`,
    "contexts:",
    "- name: harness",
    "  context:",
    "    cluster: harness",
    "    user: checkpointer",
    "    namespace: default",
    "current-context: harness",
    ""
  ].join("\n")

/**
 * An HTTPS simulation of the parts of the Kubernetes API that Checkpointer uses, for the real @kubernetes/client-node.
 * Pods deleted through the API disappear only after the node agent has stopped and removed their podman containers.
 */
export const startApiServer = (
  options: ApiServerOptions
): Effect.Effect<
  ApiServer,
  Error | PlatformError | HttpsServerError,
  CommandExecutor.CommandExecutor | FileSystem.FileSystem | Path.Path | Scope.Scope
> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const address = options.address ?? "127.0.0.1"
    const dir = path.resolve(options.dir)
    yield* fs.makeDirectory(dir, { recursive: true })
    const issued = yield* options.pki.issue(`apiserver-${address}`, {
      ips: [address],
      dns: ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
    })
    const [cert, key] = yield* Effect.all([fs.readFileString(issued.cert), fs.readFileString(issued.key)])
    const token = randomBytes(24).toString("hex")

    const state = yield* Ref.make<State>({
      resourceVersion: 1,
      pods: new Map(),
      secrets: new Map(),
      nodes: new Map(),
      events: []
    })
    const changes = yield* PubSub.unbounded<PodEvent>()
    const lock = yield* Effect.makeSemaphore(1)
    const background = yield* FiberSet.make()
    const runner = yield* Ref.make<PodRunner | undefined>(undefined)
    const createFault = yield* Ref.make<CreateFault | null>(null)
    const runningPods = yield* FiberMap.make<string>()
    const graceOf = yield* Ref.make<ReadonlyMap<string, number>>(new Map())
    const containerStreams = makeContainerStreams()
    const log = yield* Ref.make<ReadonlyArray<ApiRequest>>([])
    const users = yield* Ref.make<ReadonlyArray<Parameters<ApiServer["addUser"]>[0]>>([])

    const reviewToken = (request: IncomingMessage) =>
      Effect.gen(function*() {
        const spec = asRecord((yield* readJson(request))["spec"])
        const user = (yield* Ref.get(users)).find((candidate) => candidate.token === spec["token"])
        return {
          apiVersion: "authentication.k8s.io/v1",
          kind: "TokenReview",
          status: user === undefined
            ? { authenticated: false, error: "token not recognized" }
            : { authenticated: true, user: { username: user.username, uid: user.username, groups: ["system:authenticated"] } }
        }
      })

    const reviewAccess = (request: IncomingMessage) =>
      Effect.gen(function*() {
        const spec = asRecord((yield* readJson(request))["spec"])
        const wanted = asRecord(spec["resourceAttributes"])
        const user = (yield* Ref.get(users)).find((candidate) => candidate.username === spec["user"])
        const allowed = user?.allow.some((rule) =>
          rule.verb === wanted["verb"] && rule.resource === wanted["resource"] &&
          (rule.subresource ?? "") === (wanted["subresource"] ?? "") &&
          (rule.namespace === undefined || rule.namespace === wanted["namespace"])
        ) ?? false
        return { apiVersion: "authorization.k8s.io/v1", kind: "SubjectAccessReview", status: { allowed } }
      })
    const now = Effect.map(Clock.currentTimeMillis, timestamp)

    /** Applies a change to the pods under the lock and publishes its events in order. */
    const changePods = <A, E>(
      change: (state: State, now: string) => Effect.Effect<readonly [A, ReadonlyArray<EventDraft>, State], E>
    ) =>
      lock.withPermits(1)(Effect.gen(function*() {
        const [result, events, next] = yield* change(yield* Ref.get(state), yield* now)
        const stamped = events.map((event) => ({ ...event, resourceVersion: next.resourceVersion }))
        yield* Ref.set(state, { ...next, events: [...next.events, ...stamped] })
        yield* PubSub.publishAll(changes, stamped)
        return result
      }))

    const nextMeta = (current: State, meta: NewObjectMeta, at: string) => {
      const resourceVersion = current.resourceVersion + 1
      return [resourceVersion, {
        ...meta,
        uid: randomUUID(),
        resourceVersion: String(resourceVersion),
        creationTimestamp: at
      }] as const
    }

    const storePod = (current: State, pod: Pod, resourceVersion: number): State => ({
      ...current,
      resourceVersion,
      pods: new Map(current.pods).set(keyOf(pod.metadata.namespace, pod.metadata.name), pod)
    })

    const withoutPod = (current: State, pod: Pod, resourceVersion: number): State => {
      const pods = new Map(current.pods)
      pods.delete(keyOf(pod.metadata.namespace, pod.metadata.name))
      return { ...current, resourceVersion, pods }
    }

    const bumped = (pod: Pod, resourceVersion: number, patch: Partial<ObjectMeta> = {}): Pod => ({
      ...pod,
      metadata: { ...pod.metadata, ...patch, resourceVersion: String(resourceVersion) }
    })

    const createPod = (pod: {
      readonly metadata: NewObjectMeta & { readonly namespace: string }
      readonly spec: PodSpec
      readonly status: (at: string) => PodStatus
    }) =>
      changePods((current, at) => {
        const exists = current.pods.has(keyOf(pod.metadata.namespace, pod.metadata.name))
        if (exists) {
          return Effect.fail(
            new ApiFailure({
              body: statusBody(409, "AlreadyExists", `pods "${pod.metadata.name}" already exists`, {
                name: pod.metadata.name,
                kind: "pods"
              })
            })
          )
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

    /**
     * The node agent's part of a graceful delete: its run is interrupted (its finalizers stop and remove the containers
     * within the grace period), then the pod goes.
     */
    const terminate = (pod: Pod, graceSeconds: number) =>
      Ref.update(graceOf, (all) => new Map(all).set(pod.metadata.uid, graceSeconds)).pipe(
        Effect.zipRight(FiberMap.remove(runningPods, pod.metadata.uid)),
        Effect.zipRight(containerStreams.forget(pod)),
        Effect.zipRight(changePods((current) => {
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

    const deletePod = (namespace: string, name: string, gracePeriodSeconds: number | undefined) =>
      Effect.gen(function*() {
        type Deletion = readonly [pod: Pod, grace: number, started: boolean]
        const [deleted, grace, started] = yield* changePods<Deletion, ApiFailure>((current, at) => {
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

    const podFilter = (namespace: string | undefined, url: URL) =>
      Effect.gen(function*() {
        const labels = yield* parseLabelSelector(url.searchParams.get("labelSelector") ?? "")
        const fields = yield* parsePodFieldSelector(url.searchParams.get("fieldSelector") ?? "")
        const matches = (pod: Pod) =>
          (namespace === undefined || pod.metadata.namespace === namespace) && labels(pod.metadata.labels ?? {}) &&
          fields(pod)
        return { matches }
      })

    const sortedPods = (current: State) =>
      [...current.pods.values()].sort((a, b) =>
        keyOf(a.metadata.namespace, a.metadata.name).localeCompare(keyOf(b.metadata.namespace, b.metadata.name))
      )

    /** What a watch with this filter reports for a change (a pod leaving the filter is DELETED for it). */
    const seenThrough = (matches: (pod: Pod) => boolean) => (event: PodEvent): Option.Option<PodEvent> => {
      const now = matches(event.object)
      if (event.type !== "MODIFIED") return now ? Option.some(event) : Option.none()
      const before = event.previous !== undefined && matches(event.previous)
      if (before && now) return Option.some(event)
      if (now) return Option.some({ ...event, type: "ADDED" })
      if (before) return Option.some({ ...event, type: "DELETED" })
      return Option.none()
    }

    const watchPods = (
      namespace: string | undefined,
      url: URL,
      response: ServerResponse,
      onStarted: Effect.Effect<void>
    ) =>
      Effect.gen(function*() {
        const { matches } = yield* podFilter(namespace, url)
        const since = Number.parseInt(url.searchParams.get("resourceVersion") ?? "0", 10)
        const timeoutSeconds = Number.parseInt(url.searchParams.get("timeoutSeconds") ?? "0", 10)
        const [initial, subscription] = yield* lock.withPermits(1)(Effect.gen(function*() {
          const current = yield* Ref.get(state)
          const subscription = yield* PubSub.subscribe(changes)
          const initial: ReadonlyArray<PodEvent> = Number.isNaN(since) || since <= 0
            ? sortedPods(current).map((pod) => ({
              type: "ADDED",
              object: pod,
              resourceVersion: current.resourceVersion
            }))
            : current.events.filter((event) => event.resourceVersion > since)
          return [initial, subscription] as const
        }))
        const view = seenThrough(matches)
        const events = Stream.fromIterable(initial).pipe(
          Stream.concat(Stream.fromQueue(subscription)),
          Stream.filterMap(view),
          Stream.map(({ object, type }) => JSON.stringify({ type, object }) + "\n")
        )
        yield* Effect.sync(() => {
          response.writeHead(200, { "content-type": "application/json", "cache-control": "no-cache, private" })
          response.flushHeaders()
        })
        yield* onStarted
        yield* (timeoutSeconds > 0 ? Stream.interruptAfter(events, Duration.seconds(timeoutSeconds)) : events).pipe(
          Stream.runForEach((line) => Effect.sync(() => response.write(line)))
        )
        yield* Effect.sync(() => response.end())
      }).pipe(Effect.scoped)

    const readJson = (request: IncomingMessage) =>
      readBody(request).pipe(
        Effect.mapError((error) => badRequest(error.message)),
        Effect.flatMap((text) =>
          Effect.try({
            try: () => (text.trim().length === 0 ? {} : JSON.parse(text)) as Record<string, unknown>,
            catch: () => badRequest("the body of the request was in an unknown format")
          })
        )
      )

    const asRecord = (value: unknown): Record<string, unknown> =>
      typeof value === "object" && value !== null && !Array.isArray(value) ? value as Record<string, unknown> : {}

    const asStringMap = (value: unknown): Readonly<Record<string, string>> | undefined => {
      if (typeof value !== "object" || value === null) return undefined
      return Object.fromEntries(
        Object.entries(value).filter((entry): entry is [string, string] => typeof entry[1] === "string")
      )
    }

    const updateStatus = (namespace: string, name: string, update: (status: PodStatus) => PodStatus) =>
      changePods((current) => {
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
      stdin: (container) => containerStreams.stdinOf(pod, container),
      graceSeconds: Effect.map(
        Ref.get(graceOf),
        (all) => all.get(pod.metadata.uid) ?? pod.spec.terminationGracePeriodSeconds ?? 30
      ),
      log: (container, text) =>
        Effect.sync(() => containerStreams.appendLog(containerStreams.ioOf(pod, container), text)),
      secret: (name) =>
        Effect.map(Ref.get(state), (current) =>
          Option.fromNullable(current.secrets.get(keyOf(pod.metadata.namespace, name))).pipe(
            Option.map((secret) => decodeSecretData(secret.data))
          ))
    })

    /** GET .../pods/{name}/log: the container's log as text, `tailLines` honoured. */
    const podLog = (
      namespace: string,
      name: string,
      url: URL,
      response: ServerResponse,
      onStarted: Effect.Effect<void>
    ) =>
      Effect.gen(function*() {
        const pod = (yield* Ref.get(state)).pods.get(keyOf(namespace, name))
        if (pod === undefined) return yield* notFound("pods", name)
        const container = url.searchParams.get("container") ?? pod.spec.containers[0]?.name ?? ""
        if (!pod.spec.containers.some((candidate) => candidate.name === container)) {
          return yield* badRequest(`container ${container} is not valid for pod ${name}`)
        }
        if (pod.status.phase === "Pending") {
          return yield* badRequest(`container "${container}" in pod "${name}" is waiting to start: ContainerCreating`)
        }
        const tail = url.searchParams.get("tailLines")
        const text = tailLines(
          containerStreams.logOf(pod, container),
          tail !== null && /^\d+$/.test(tail) ? Number.parseInt(tail, 10) : undefined
        )
        yield* Effect.sync(() => respondText(response, 200, text))
        yield* onStarted
        return "streamed" as const
      })

    const postPod = (namespace: string, request: IncomingMessage) =>
      Effect.flatMap(readJson(request), (body) => createPodFrom(namespace, body))

    const createPodFrom = (namespace: string, body: Record<string, unknown>) =>
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
        const invalid = name === undefined
          ? "metadata.name: Required value"
          : containers.length === 0 || containers.some((c) => typeof c["name"] !== "string")
          ? "spec.containers: Required value"
          : undefined
        if (name === undefined || invalid !== undefined) {
          return yield* new ApiFailure({
            body: statusBody(422, "Invalid", `Pod "${name ?? ""}" is invalid: ${invalid}`, {
              name: name ?? "",
              kind: "Pod"
            })
          })
        }
        const labels = asStringMap(metadata["labels"])
        const annotations = asStringMap(metadata["annotations"])
        const nodeName = typeof spec["nodeName"] === "string"
          ? spec["nodeName"]
          : schedule((yield* Ref.get(state)).nodes, asStringMap(spec["nodeSelector"]) ?? {})
        const created = yield* createPod({
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
            current.run(handleOf(created)).pipe(Effect.ensuring(containerStreams.markExited(created)))
          )
        }
        return created
      })

    const secretOf = (namespace: string, name: string) =>
      Effect.flatMap(Ref.get(state), (current) =>
        Option.match(Option.fromNullable(current.secrets.get(keyOf(namespace, name))), {
          onNone: () => Effect.fail(notFound("secrets", name)),
          onSome: Effect.succeed
        }))

    const createSecret = (namespace: string, input: {
      readonly name: string
      readonly type: string
      readonly data: Readonly<Record<string, string>>
      readonly labels?: Readonly<Record<string, string>>
    }) =>
      lock.withPermits(1)(Effect.gen(function*() {
        const current = yield* Ref.get(state)
        if (current.secrets.has(keyOf(namespace, input.name))) {
          return yield* new ApiFailure({
            body: statusBody(409, "AlreadyExists", `secrets "${input.name}" already exists`, {
              name: input.name,
              kind: "secrets"
            })
          })
        }
        const [resourceVersion, metadata] = nextMeta(current, {
          name: input.name,
          ...(input.labels === undefined ? {} : { labels: input.labels })
        }, yield* now)
        const secret: Secret = {
          apiVersion: "v1",
          kind: "Secret",
          metadata: { ...metadata, namespace },
          type: input.type,
          data: input.data
        }
        yield* Ref.set(state, {
          ...current,
          resourceVersion,
          secrets: new Map(current.secrets).set(keyOf(namespace, input.name), secret)
        })
        return secret
      }))

    const postSecret = (namespace: string, request: IncomingMessage) =>
      Effect.gen(function*() {
        const body = yield* readJson(request)
        const metadata = asRecord(body["metadata"])
        const name = typeof metadata["name"] === "string" ? metadata["name"] : undefined
        if (name === undefined || name.length === 0) {
          return yield* new ApiFailure({
            body: statusBody(422, "Invalid", "Secret \"\" is invalid: metadata.name: Required value", {
              kind: "Secret"
            })
          })
        }
        const stringData = Object.entries(asStringMap(body["stringData"]) ?? {}).map(([k, v]) => [k, base64(v)])
        const labels = asStringMap(metadata["labels"])
        return yield* createSecret(namespace, {
          name,
          type: typeof body["type"] === "string" ? body["type"] : "Opaque",
          data: { ...asStringMap(body["data"]), ...Object.fromEntries(stringData) },
          ...(labels === undefined ? {} : { labels })
        })
      })

    const deleteSecret = (namespace: string, name: string) =>
      lock.withPermits(1)(Effect.gen(function*() {
        const current = yield* Ref.get(state)
        const secret = current.secrets.get(keyOf(namespace, name))
        if (secret === undefined) return yield* notFound("secrets", name)
        const secrets = new Map(current.secrets)
        secrets.delete(keyOf(namespace, name))
        yield* Ref.set(state, { ...current, resourceVersion: current.resourceVersion + 1, secrets })
        return {
          kind: "Status",
          apiVersion: "v1",
          metadata: {},
          status: "Success",
          details: { name, kind: "secrets", uid: secret.metadata.uid }
        }
      }))

    const gracePeriodOf = (url: URL, request: IncomingMessage) =>
      Effect.map(
        readJson(request),
        (body) => {
          const query = url.searchParams.get("gracePeriodSeconds")
          const fromBody = body["gracePeriodSeconds"]
          if (query !== null && /^\d+$/.test(query)) return Number.parseInt(query, 10)
          return typeof fromBody === "number" && fromBody >= 0 ? fromBody : undefined
        }
      )

    const isWatch = (url: URL) => ["true", "1"].includes(url.searchParams.get("watch") ?? "")

    type Reply = { readonly status: number; readonly body: unknown } | "streamed"

    const route = (
      method: string,
      segments: ReadonlyArray<string>,
      url: URL,
      request: IncomingMessage,
      response: ServerResponse,
      onStreamStarted: Effect.Effect<void>
    ): Effect.Effect<Reply, ApiFailure> => {
      const ok = (status: number) => (body: unknown): Reply => ({ status, body })
      const only = (allowed: string, effect: () => Effect.Effect<Reply, ApiFailure>) =>
        method === allowed ? effect() : Effect.fail(methodNotAllowed())
      const list = (namespace: string | undefined) =>
        isWatch(url)
          ? Effect.as(watchPods(namespace, url, response, onStreamStarted), "streamed" as const)
          : Effect.gen(function*() {
            const { matches } = yield* podFilter(namespace, url)
            const current = yield* Ref.get(state)
            return ok(200)({
              kind: "PodList",
              apiVersion: "v1",
              metadata: { resourceVersion: String(current.resourceVersion) },
              items: sortedPods(current).filter(matches).map(asListItem)
            })
          })
      const [api, version, ...rest] = segments
      if (segments.length === 1 && segments[0] === "version") {
        return only("GET", () =>
          Effect.succeed(
            ok(200)({ major: "1", minor: "33", gitVersion: "v1.33.0-harness", platform: "linux/amd64" })
          ))
      }
      if (segments.join("/") === "apis/authentication.k8s.io/v1/tokenreviews") {
        return only("POST", () => Effect.map(reviewToken(request), ok(201)))
      }
      if (segments.join("/") === "apis/authorization.k8s.io/v1/subjectaccessreviews") {
        return only("POST", () => Effect.map(reviewAccess(request), ok(201)))
      }
      if (api !== "api" || version !== "v1") {
        return Effect.fail(unknownResource())
      }
      const watchPath = rest[0] === "watch"
      const resource = watchPath ? rest.slice(1) : rest
      const watched = (effect: Effect.Effect<Reply, ApiFailure>) => {
        const namespace = resource[0] === "namespaces" ? resource[1] : undefined
        return watchPath ? Effect.as(watchPods(namespace, url, response, onStreamStarted), "streamed" as const) : effect
      }
      const shape = resource.map((segment, i) =>
        (resource[0] === "namespaces" && (i === 1 || i === 3)) || (resource[0] === "nodes" && i === 1) ? "*" : segment
      ).join("/")
      switch (shape) {
        case "pods":
          return only("GET", () => watched(list(undefined)))
        case "namespaces/*/pods":
          return method === "POST" && !watchPath
            ? Effect.flatMap(Ref.get(createFault), (fault) =>
              fault === null
                ? Effect.map(postPod(resource[1]!, request), ok(201))
                : Effect.fail(new ApiFailure({ body: statusBody(fault.code, fault.reason, fault.message) })))
            : only("GET", () => watched(list(resource[1]!)))
        case "namespaces/*/pods/*/log": {
          const [, namespace, , name] = resource as unknown as [string, string, string, string]
          return only("GET", () => podLog(namespace, name, url, response, onStreamStarted))
        }
        case "namespaces/*/pods/*": {
          const [, namespace, , name] = resource as unknown as [string, string, string, string]
          if (method === "GET") {
            return Effect.flatMap(Ref.get(state), (current) => {
              const pod = current.pods.get(keyOf(namespace, name))
              return pod === undefined ? Effect.fail(notFound("pods", name)) : Effect.succeed(ok(200)(pod))
            })
          }
          return only("DELETE", () =>
            gracePeriodOf(url, request).pipe(
              Effect.flatMap((grace) => deletePod(namespace, name, grace)),
              Effect.map(ok(200))
            ))
        }
        case "namespaces/*/secrets":
          return only("POST", () => Effect.map(postSecret(resource[1]!, request), ok(201)))
        case "namespaces/*/secrets/*": {
          const [, namespace, , name] = resource as unknown as [string, string, string, string]
          if (method === "DELETE") return Effect.map(deleteSecret(namespace, name), ok(200))
          return only("GET", () => Effect.map(secretOf(namespace, name), ok(200)))
        }
        case "nodes":
          return only("GET", () =>
            Effect.map(Ref.get(state), (current) =>
              ok(200)({
                kind: "NodeList",
                apiVersion: "v1",
                metadata: { resourceVersion: String(current.resourceVersion) },
                items: [...current.nodes.values()].map(asListItem)
              })))
        case "nodes/*":
          return only("GET", () =>
            Effect.flatMap(Ref.get(state), (current) => {
              const node = current.nodes.get(resource[1]!)
              return node === undefined ? Effect.fail(notFound("nodes", resource[1]!)) : Effect.succeed(ok(200)(node))
            }))
        default:
          return Effect.fail(unknownResource())
      }
    }

    const handle = (request: IncomingMessage, response: ServerResponse) =>
      Effect.gen(function*() {
        const url = new URL(request.url ?? "/", "https://apiserver.invalid")
        const method = request.method ?? "GET"
        const authorized = request.headers.authorization === `Bearer ${token}`
        const index = yield* Ref.modify(log, (entries) => [entries.length, [...entries, {
          method,
          path: url.pathname,
          query: url.search.replace(/^\?/, ""),
          authorized
        }]])
        const recordStatus = (status: number) =>
          Ref.update(log, (entries) => entries.map((entry, i) => i === index ? { ...entry, status } : entry))
        const finish = (status: number, body: unknown) =>
          Effect.zipRight(Effect.sync(() => respondJson(response, status, body)), recordStatus(status))
        if (!authorized) return yield* finish(401, statusBody(401, "Unauthorized", "Unauthorized"))
        const segments = url.pathname.split("/").slice(1).filter((s) => s.length > 0).map(decodeURIComponent)
        const reply = yield* route(method, segments, url, request, response, recordStatus(200)).pipe(
          Effect.catchTag("ApiFailure", (failure) =>
            Effect.succeed<Reply>({ status: failure.body.code, body: failure.body }))
        )
        if (reply !== "streamed") yield* finish(reply.status, reply.body)
      })

    const attachServer = makeAttachServer(containerStreams)

    /** `GET .../namespaces/{ns}/pods/{name}/attach` with a WebSocket upgrade; anything else upgraded is refused. */
    const onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer) => {
      const url = new URL(request.url ?? "/", "https://apiserver.invalid")
      const authorized = request.headers.authorization === `Bearer ${token}`
      const segments = url.pathname.split("/").slice(1).filter((s) => s.length > 0).map(decodeURIComponent)
      const [api, version, namespaces, namespace, pods, name, attach] = segments
      const isAttach = segments.length === 7 && api === "api" && version === "v1" && namespaces === "namespaces" &&
        pods === "pods" && attach === "attach"
      const pod = isAttach ? Effect.runSync(Ref.get(state)).pods.get(keyOf(namespace!, name!)) : undefined
      const status = !authorized
        ? (socket.end("HTTP/1.1 401 Unauthorized\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"), 401)
        : !isAttach
        ? (socket.end("HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"), 404)
        : attachServer.upgrade({ request, socket, head, url, pod, name: name! })
      Effect.runSync(Ref.update(log, (entries) => [...entries, {
        method: request.method ?? "GET",
        path: url.pathname,
        query: url.search.replace(/^\?/, ""),
        authorized,
        status
      }]))
    }

    const listening = yield* serveHttps({
      address,
      tls: { cert, key },
      handler: handle,
      onUpgrade
    })
    // Runs before the server closes: upgraded connections would keep it open.
    yield* Effect.addFinalizer(() => attachServer.close)
    const kubeconfigPath = path.join(dir, "kubeconfig")
    yield* fs.writeFileString(
      kubeconfigPath,
      kubeconfigYaml({ server: listening.url, caFile: options.pki.caFile, token })
    )

    const toHarnessError = (failure: ApiFailure) => new ApiServerError({ message: failure.body.message })

    const addPod = (pod: AddPodOptions) =>
      Effect.gen(function*() {
        const current = yield* Ref.get(state)
        const hostIP = pod.hostIP ?? current.nodes.get(pod.nodeName)?.status.addresses[0]?.address
        const podIP = pod.podIP ?? `10.244.0.${(current.pods.size % 250) + 2}`
        return yield* createPod({
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
        }).pipe(Effect.mapError(toHarnessError))
      })

    const api: ApiServer = {
      url: listening.url,
      address,
      port: listening.port,
      caFile: options.pki.caFile,
      kubeconfigPath,
      token,
      addPod,
      deletePod: (namespace, name, gracePeriodSeconds) =>
        deletePod(namespace, name, gracePeriodSeconds).pipe(Effect.asVoid, Effect.mapError(toHarnessError)),
      createPod: (namespace, body) =>
        createPodFrom(namespace, body as Record<string, unknown>).pipe(Effect.mapError(toHarnessError)),
      addNode: (node) =>
        lock.withPermits(1)(Effect.gen(function*() {
          const current = yield* Ref.get(state)
          const [resourceVersion, metadata] = nextMeta(current, {
            name: node.name,
            labels: {
              "kubernetes.io/hostname": node.name,
              "kubernetes.io/os": "linux",
              "kubernetes.io/arch": nodeArchitecture,
              ...node.labels
            }
          }, yield* now)
          const created: Node = {
            apiVersion: "v1",
            kind: "Node",
            metadata,
            status: {
              addresses: [{ type: "InternalIP", address: node.address }, { type: "Hostname", address: node.name }],
              conditions: [{ type: "Ready", status: "True" }]
            }
          }
          yield* Ref.set(state, { ...current, resourceVersion, nodes: new Map(current.nodes).set(node.name, created) })
          return created
        })),
      addUser: (user) => Ref.update(users, (all) => [...all, user]),
      addSecret: (secret) =>
        createSecret(secret.namespace, {
          name: secret.name,
          type: secret.type ?? "Opaque",
          data: Object.fromEntries(Object.entries(secret.stringData).map(([k, v]) => [k, base64(v)]))
        }).pipe(Effect.mapError(toHarnessError)),
      updatePodStatus: (namespace, name, update) =>
        updateStatus(namespace, name, update).pipe(Effect.mapError(toHarnessError)),
      findPod: (namespace, name) =>
        Effect.map(Ref.get(state), (current) => Option.fromNullable(current.pods.get(keyOf(namespace, name)))),
      pods: () => Effect.map(Ref.get(state), sortedPods),
      secrets: () => Effect.map(Ref.get(state), (current) => [...current.secrets.values()]),
      events: () => Effect.map(Ref.get(state), (current) => current.events),
      requests: () => Ref.get(log),
      setPodRunner: (next) => Ref.set(runner, next),
      setCreateFault: (fault) => Ref.set(createFault, fault),
      containerLog: (namespace, name, container) =>
        Effect.map(Ref.get(state), (current) => {
          const pod = current.pods.get(keyOf(namespace, name))
          return pod === undefined ? "" : containerStreams.logOf(pod, container)
        })
    }
    return api
  }).pipe(Effect.withSpan("ApiServer.start"))
