import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import type { IncomingMessage } from "node:http"
import { asRecord, asStringMap, readJson } from "./RequestBody.ts"
import type { KubernetesEvent } from "./Resources.ts"
import { asListItem, keyOf } from "./Resources.ts"
import type { Route } from "./Router.ts"
import { reply } from "./Router.ts"
import { alreadyExists, badRequest, invalid, notFound } from "./Status.ts"
import type { Store } from "./Store.ts"
import { changed, nextMeta } from "./Store.ts"

/** `field=value` pairs of a fieldSelector over an event (involvedObject.*, reason, type); `!=` is refused. */
const fieldFilter = (selector: string) =>
  Effect.gen(function*() {
    const terms = selector.split(",").map((term) => term.trim()).filter((term) => term.length > 0)
    const pairs: Array<readonly [string, string]> = []
    for (const term of terms) {
      const match = /^([\w.]+)==?(.*)$/.exec(term)
      if (match === null || match[1]!.includes("!")) {
        return yield* badRequest(`unable to parse requirement: ${term}`)
      }
      pairs.push([match[1]!, match[2]!])
    }
    return (event: KubernetesEvent) =>
      pairs.every(([field, value]) => {
        const [head, tail] = field.split(".", 2)
        const actual = head === "involvedObject" && tail !== undefined ? event.involvedObject[tail] : event[field]
        return String(actual ?? "") === value
      })
  })

/**
 * core/v1 Events: created by Checkpointer (and the harness's node agent), listed by tests through
 * @kubernetes/client-node as `kubectl get events` would. Validated as the API server does: a name (or generateName),
 * an involved object whose namespace is the event's.
 */
export const makeEvents = (store: Store) => {
  const create = (namespace: string, request: IncomingMessage) =>
    Effect.gen(function*() {
      const body = yield* readJson(request)
      const metadata = asRecord(body["metadata"])
      const generateName = typeof metadata["generateName"] === "string" ? metadata["generateName"] : undefined
      const given = typeof metadata["name"] === "string" && metadata["name"].length > 0 ? metadata["name"] : undefined
      const generated = generateName === undefined ? undefined : `${generateName}${randomBytes(3).toString("hex")}`
      const name = given ?? generated
      if (name === undefined) {
        return yield* invalid(
          "Event \"\" is invalid: metadata.name: Required value: name or generateName is required",
          { kind: "Event" }
        )
      }
      const involved = asRecord(body["involvedObject"])
      if (involved["namespace"] !== undefined && involved["namespace"] !== namespace) {
        return yield* invalid(
          `Event "${name}" is invalid: involvedObject.namespace: Invalid value: "${String(involved["namespace"])}": ` +
            "does not match event.namespace",
          { kind: "Event", name }
        )
      }
      return yield* store.change((current, at) => {
        if (current.kubernetesEvents.has(keyOf(namespace, name))) return Effect.fail(alreadyExists("events", name))
        const labels = asStringMap(metadata["labels"])
        const [resourceVersion, meta] = nextMeta(current, {
          name,
          ...(generateName === undefined ? {} : { generateName }),
          ...(labels === undefined ? {} : { labels })
        }, at)
        const event = {
          ...body,
          apiVersion: "v1",
          kind: "Event",
          metadata: { ...meta, namespace },
          involvedObject: involved
        } as KubernetesEvent
        const kubernetesEvents = new Map(current.kubernetesEvents).set(keyOf(namespace, name), event)
        return changed(event, [], { ...current, resourceVersion, kubernetesEvents })
      })
    })

  /** An event the cluster itself reports (the kubelet's `Failed`, `Started`, ...) about a pod. */
  const report = (pod: { readonly namespace: string; readonly name: string; readonly uid: string }, event: {
    readonly type: "Normal" | "Warning"
    readonly reason: string
    readonly message: string
  }) =>
    store.change((current, at) => {
      const name = `${pod.name}.${randomBytes(8).toString("hex")}`
      const [resourceVersion, meta] = nextMeta(current, { name }, at)
      const recorded = {
        apiVersion: "v1",
        kind: "Event",
        metadata: { ...meta, namespace: pod.namespace },
        involvedObject: { kind: "Pod", apiVersion: "v1", namespace: pod.namespace, name: pod.name, uid: pod.uid },
        ...event,
        source: { component: "kubelet" },
        firstTimestamp: at,
        lastTimestamp: at,
        count: 1
      } as unknown as KubernetesEvent
      const kubernetesEvents = new Map(current.kubernetesEvents).set(keyOf(pod.namespace, name), recorded)
      return changed(recorded, [], { ...current, resourceVersion, kubernetesEvents })
    })

  /** A merge patch (what client-node's patchNamespacedEvent sends for a count update): top-level fields replaced. */
  const patch = (namespace: string, name: string, request: IncomingMessage) =>
    Effect.gen(function*() {
      const body = yield* readJson(request)
      return yield* store.change((current) => {
        const event = current.kubernetesEvents.get(keyOf(namespace, name))
        if (event === undefined) return Effect.fail(notFound("events", name))
        const resourceVersion = current.resourceVersion + 1
        const { metadata: _metadata, involvedObject: _involved, ...fields } = body
        const next = {
          ...event,
          ...fields,
          metadata: { ...event.metadata, resourceVersion: String(resourceVersion) }
        } as KubernetesEvent
        const kubernetesEvents = new Map(current.kubernetesEvents).set(keyOf(namespace, name), next)
        return changed(next, [], { ...current, resourceVersion, kubernetesEvents })
      })
    })

  const list = (namespace: string | undefined, url: URL) =>
    Effect.gen(function*() {
      const matches = yield* fieldFilter(url.searchParams.get("fieldSelector") ?? "")
      const current = yield* store.state
      const items = [...current.kubernetesEvents.values()]
        .filter((event) => namespace === undefined || event.metadata.namespace === namespace)
        .filter(matches)
      return {
        apiVersion: "v1",
        kind: "EventList",
        metadata: { resourceVersion: String(current.resourceVersion) },
        items: items.map(asListItem)
      }
    })

  const get = (namespace: string, name: string) =>
    Effect.flatMap(store.state, (current) => {
      const event = current.kubernetesEvents.get(keyOf(namespace, name))
      return event === undefined ? Effect.fail(notFound("events", name)) : Effect.succeed(event)
    })

  const routes: ReadonlyArray<Route> = [
    {
      path: "api/v1/namespaces/*/events",
      methods: {
        POST: ({ incoming, params: [namespace] }) => Effect.map(create(namespace!, incoming), reply(201)),
        GET: ({ params: [namespace], url }) => Effect.map(list(namespace!, url), reply(200))
      }
    },
    {
      path: "api/v1/namespaces/*/events/*",
      methods: {
        GET: ({ params: [namespace, name] }) => Effect.map(get(namespace!, name!), reply(200)),
        PATCH: ({ incoming, params: [namespace, name] }) => Effect.map(patch(namespace!, name!, incoming), reply(200))
      }
    },
    { path: "api/v1/events", methods: { GET: ({ url }) => Effect.map(list(undefined, url), reply(200)) } }
  ]

  return {
    all: Effect.map(store.state, (current) => [...current.kubernetesEvents.values()]),
    report,
    routes
  } as const
}

export type Events = ReturnType<typeof makeEvents>
