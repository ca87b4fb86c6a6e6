import { HttpApiBuilder, HttpApiError, HttpRouter, HttpServerResponse } from "@effect/platform"
import type { HttpServerError } from "@effect/platform"
import { CheckpointerApi, ServerConfig } from "@checkpointer/core"
import { Cause, Effect, Layer, Option } from "effect"
import { listenerLayer } from "./ApiListener.ts"
import { CheckpointHandlers } from "./CheckpointHandlers.ts"
import { DocsPageLive } from "./DocsPage.ts"
import { HealthHandlers } from "./HealthHandlers.ts"
import { RequestGate } from "./RequestGate.ts"

const describeDecodeError = (error: HttpApiError.HttpApiDecodeError): string =>
  error.issues.length === 0
    ? error.message
    : error.issues.map((issue) => `invalid ${issue.path.join(".") || "request"}: ${issue.message}`).join("; ")

const isRouteNotFound = (error: unknown): error is HttpServerError.RouteNotFound =>
  typeof error === "object" && error !== null && "_tag" in error && error._tag === "RouteNotFound"

/**
 * Requests that do not match the contract (path names, identifiers) get a plain-text 400, and requests for no
 * endpoint a plain-text 404, as every other error.
 */
export const DecodeErrorsAsText = HttpApiBuilder.middleware((app) =>
  Effect.catchAllCause(app, (cause) =>
    Option.match(Cause.failureOption(cause as Cause.Cause<unknown>), {
      onSome: (error) =>
        error instanceof HttpApiError.HttpApiDecodeError
          ? Effect.succeed(HttpServerResponse.text(describeDecodeError(error), { status: 400 }))
          : isRouteNotFound(error)
          ? Effect.succeed(HttpServerResponse.text(
            `no endpoint ${error.request.method} ${error.request.url.split("?")[0]}: see /openapi.json`,
            { status: 404 }
          ))
          : Effect.failCause(cause),
      onNone: () => Effect.failCause(cause)
    }))
)

/** Pod names may be 253 characters; longer path segments still reach the handler and get a 400 that says why. */
const RouterConfigLive = HttpRouter.setRouterConfig({ maxParamLength: 1024 })

export const ApiLive = HttpApiBuilder.api(CheckpointerApi).pipe(
  Layer.provide([CheckpointHandlers, HealthHandlers]),
  Layer.provideMerge(RouterConfigLive)
)

/** The API with /openapi.json, the /docs page and the request gate (authentication, forwarding), on any HttpServer. */
export const AppLive = HttpApiBuilder.serve().pipe(
  Layer.provide(DocsPageLive),
  Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/openapi.json" })),
  Layer.provide(DecodeErrorsAsText),
  Layer.provide(RequestGate),
  Layer.provide(ApiLive)
)

/** The API on CHECKPOINTER_PORT: HTTP, or HTTPS with CHECKPOINTER_TLS_CERT_FILE/KEY_FILE, every client time-bounded. */
export const HttpServerLive = AppLive.pipe(
  Layer.provide(Layer.unwrapEffect(ServerConfig.pipe(Effect.map((settings) => listenerLayer(settings)))))
)
