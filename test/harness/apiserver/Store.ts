import { Clock, Effect, PubSub, Ref } from "effect"
import { randomUUID } from "node:crypto"
import type { KubernetesEvent, Node, ObjectMeta, Pod, PodEvent, Secret } from "./Resources.ts"
import { keyOf } from "./Resources.ts"

/** Every object the API server holds, at one resource version, and the pod events so far. */
export interface State {
  readonly resourceVersion: number
  readonly pods: ReadonlyMap<string, Pod>
  readonly secrets: ReadonlyMap<string, Secret>
  readonly nodes: ReadonlyMap<string, Node>
  /** core/v1 Events (what `kubectl get events` lists), by namespace/name. */
  readonly kubernetesEvents: ReadonlyMap<string, KubernetesEvent>
  readonly events: ReadonlyArray<PodEvent>
}

export type NewObjectMeta = Omit<ObjectMeta, "uid" | "resourceVersion" | "creationTimestamp">

export type EventDraft = Omit<PodEvent, "resourceVersion">

type Change<A, E> = (state: State, now: string) => Effect.Effect<readonly [A, ReadonlyArray<EventDraft>, State], E>

/** The outcome of a change: its result, the pod events it causes, the next state. */
export const changed = <A>(result: A, events: ReadonlyArray<EventDraft>, next: State) =>
  Effect.succeed([result, events, next] as const)

/** RFC 3339 with second precision, as Kubernetes writes metav1.Time. */
export const timestamp = (millis: number) => new Date(millis).toISOString().replace(/\.\d{3}Z$/, "Z")

/** The metadata of a new object at the next resource version. */
export const nextMeta = (current: State, meta: NewObjectMeta, at: string) => {
  const resourceVersion = current.resourceVersion + 1
  return [resourceVersion, {
    ...meta,
    uid: randomUUID(),
    resourceVersion: String(resourceVersion),
    creationTimestamp: at
  }] as const
}

export const storePod = (current: State, pod: Pod, resourceVersion: number): State => ({
  ...current,
  resourceVersion,
  pods: new Map(current.pods).set(keyOf(pod.metadata.namespace, pod.metadata.name), pod)
})

export const withoutPod = (current: State, pod: Pod, resourceVersion: number): State => {
  const pods = new Map(current.pods)
  pods.delete(keyOf(pod.metadata.namespace, pod.metadata.name))
  return { ...current, resourceVersion, pods }
}

/** The pod at a new resource version, with `patch` applied to its metadata. */
export const bumped = (pod: Pod, resourceVersion: number, patch: Partial<ObjectMeta> = {}): Pod => ({
  ...pod,
  metadata: { ...pod.metadata, ...patch, resourceVersion: String(resourceVersion) }
})

export const sortedPods = (current: State) =>
  [...current.pods.values()].sort((a, b) =>
    keyOf(a.metadata.namespace, a.metadata.name).localeCompare(keyOf(b.metadata.namespace, b.metadata.name))
  )

/** The objects of the API server; changes are serialized and their pod events published in order. */
export const makeStore = Effect.gen(function*() {
  const state = yield* Ref.make<State>({
    resourceVersion: 1,
    pods: new Map(),
    secrets: new Map(),
    nodes: new Map(),
    kubernetesEvents: new Map(),
    events: []
  })
  const changes = yield* PubSub.unbounded<PodEvent>()
  const lock = yield* Effect.makeSemaphore(1)
  const now = Effect.map(Clock.currentTimeMillis, timestamp)

  const change = <A, E>(apply: Change<A, E>) =>
    lock.withPermits(1)(Effect.gen(function*() {
      const [result, events, next] = yield* apply(yield* Ref.get(state), yield* now)
      const stamped = events.map((event) => ({ ...event, resourceVersion: next.resourceVersion }))
      yield* Ref.set(state, { ...next, events: [...next.events, ...stamped] })
      yield* PubSub.publishAll(changes, stamped)
      return result
    }))

  /** The state and a subscription to the pod events after it, taken together. */
  const subscribe = lock.withPermits(1)(Effect.gen(function*() {
    const current = yield* Ref.get(state)
    const subscription = yield* PubSub.subscribe(changes)
    return [current, subscription] as const
  }))

  return { state: Ref.get(state), now, change, subscribe } as const
})

export type Store = Effect.Effect.Success<typeof makeStore>
