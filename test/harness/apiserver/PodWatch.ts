import { Duration, Effect, Option, Stream } from "effect"
import type { ServerResponse } from "node:http"
import type { Pod, PodEvent } from "./Resources.ts"
import { podMatcher } from "./Selectors.ts"
import type { Store } from "./Store.ts"
import { sortedPods } from "./Store.ts"

/** `?watch=true` or `?watch=1` on a list. */
export const isWatchQuery = (url: URL) => ["true", "1"].includes(url.searchParams.get("watch") ?? "")

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

/**
 * Streams pod events as JSON lines: since `resourceVersion` (absent or 0: every pod as ADDED first), until
 * `timeoutSeconds` or the client goes away.
 */
export const watchPods = (
  store: Store,
  namespace: string | undefined,
  url: URL,
  response: ServerResponse,
  onStarted: Effect.Effect<void>
) =>
  Effect.gen(function*() {
    const matches = yield* podMatcher(namespace, url.searchParams)
    const since = Number.parseInt(url.searchParams.get("resourceVersion") ?? "0", 10)
    const timeoutSeconds = Number.parseInt(url.searchParams.get("timeoutSeconds") ?? "0", 10)
    const [current, subscription] = yield* store.subscribe
    const initial: ReadonlyArray<PodEvent> = Number.isNaN(since) || since <= 0
      ? sortedPods(current).map((pod) => ({ type: "ADDED", object: pod, resourceVersion: current.resourceVersion }))
      : current.events.filter((event) => event.resourceVersion > since)
    const events = Stream.fromIterable(initial).pipe(
      Stream.concat(Stream.fromQueue(subscription)),
      Stream.filterMap(seenThrough(matches)),
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
