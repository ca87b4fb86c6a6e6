import { Effect } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"
import type { ApiFailure } from "./Status.ts"
import { methodNotAllowed, unknownResource } from "./Status.ts"

/** A JSON answer, or "streamed" when the handler wrote the response itself. */
export type Reply = { readonly status: number; readonly body: unknown } | "streamed"

export interface RouteRequest {
  readonly method: string
  readonly url: URL
  /** What the `*` segments of the route's path matched, in order. */
  readonly params: ReadonlyArray<string>
  /** The path began with `/api/v1/watch/` (only the pod lists honour it). */
  readonly watchPath: boolean
  readonly incoming: IncomingMessage
  readonly response: ServerResponse
  /** Records the request as answered (200) once a streamed answer has begun. */
  readonly onStreamStarted: Effect.Effect<void>
}

export type Handler = (request: RouteRequest) => Effect.Effect<Reply, ApiFailure>

export interface Route {
  /** Path segments joined by `/`; in the core API (`api/v1/...`) names are `*`. */
  readonly path: string
  readonly methods: Readonly<Partial<Record<string, Handler>>>
}

export const reply = (status: number) => (body: unknown): Reply => ({ status, body })

export const pathSegments = (url: URL) =>
  url.pathname.split("/").slice(1).filter((segment) => segment.length > 0).map(decodeURIComponent)

/** Which segments of a core API path are names: the namespace and the object in it, or the node. */
const isName = (resource: ReadonlyArray<string>, index: number) =>
  (resource[0] === "namespaces" && (index === 1 || index === 3)) || (resource[0] === "nodes" && index === 1)

const routeKeyOf = (segments: ReadonlyArray<string>) => {
  const [api, version, ...rest] = segments
  if (api !== "api" || version !== "v1") return { path: segments.join("/"), params: [], watchPath: false }
  const watchPath = rest[0] === "watch"
  const resource = watchPath ? rest.slice(1) : rest
  const names = resource.filter((_, index) => isName(resource, index))
  const shape = resource.map((segment, index) => isName(resource, index) ? "*" : segment)
  return { path: ["api", "v1", ...shape].join("/"), params: names, watchPath }
}

/** Finds the route of a request's path, then its method: an unknown path is 404, an unknown method 405. */
export const makeRouter = (routes: ReadonlyArray<Route>) => {
  const byPath = new Map(routes.map((route) => [route.path, route]))
  return (
    request: Omit<RouteRequest, "params" | "watchPath">,
    segments: ReadonlyArray<string>
  ): Effect.Effect<Reply, ApiFailure> => {
    const { params, path, watchPath } = routeKeyOf(segments)
    const route = byPath.get(path)
    if (route === undefined) return Effect.fail(unknownResource())
    const handler = Object.hasOwn(route.methods, request.method) ? route.methods[request.method] : undefined
    return handler === undefined ? Effect.fail(methodNotAllowed()) : handler({ ...request, params, watchPath })
  }
}
