import { CheckpointerApi, ServerConfig } from "@checkpointer/core"
import { HttpApiBuilder, HttpRouter } from "@effect/platform"
import { Effect, Layer } from "effect"
import { CheckpointHandlers } from "../handlers/CheckpointHandlers.ts"
import { HealthHandlers } from "../handlers/HealthHandlers.ts"
import { listenerLayer } from "./ApiListener.ts"
import { CallerAuth } from "./CallerAuth.ts"
import { DocsPageLive } from "./DocsPage.ts"
import { RequestDecoding } from "./RequestDecoding.ts"
import { RequestGate } from "./RequestGate.ts"

/** Pod names may be 253 characters; longer path segments still reach the handler and get a 400 that says why. */
const RouterConfigLive = HttpRouter.setRouterConfig({ maxParamLength: 1024 })

/** The contract's handlers, with caller authentication and forwarding between nodes. */
export const ApiLive = HttpApiBuilder.api(CheckpointerApi).pipe(
  Layer.provide([CheckpointHandlers, HealthHandlers]),
  Layer.provide([RequestGate.Default, CallerAuth]),
  Layer.provideMerge(RouterConfigLive)
)

/** The API with its plain-text errors, /openapi.json and the /docs page, on any HttpServer. */
export const AppLive = HttpApiBuilder.serve().pipe(
  Layer.provide(DocsPageLive),
  Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/openapi.json" })),
  Layer.provide(RequestDecoding),
  Layer.provide(ApiLive)
)

/** The API on CHECKPOINTER_PORT: HTTP, or HTTPS with CHECKPOINTER_TLS_CERT_FILE/KEY_FILE, every client time-bounded. */
export const HttpServerLive = AppLive.pipe(
  Layer.provide(Layer.unwrapEffect(ServerConfig.pipe(Effect.map((settings) => listenerLayer(settings)))))
)
