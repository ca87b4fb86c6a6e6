import { HttpApiBuilder, HttpBody, HttpClientRequest, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Agent } from "@effect/platform-node/Undici"
import {
  CheckpointerConfig,
  CheckpointIdentifier,
  ContainerPath,
  ContainerRef,
  NodeRouter,
  transportReason
} from "@checkpointer/core"
import type { Route, RoutingFailed } from "@checkpointer/core"
import { Duration, Effect, Either, Schema } from "effect"

/** Marks a request one Checkpointer passed to another; such a request is never forwarded again. */
export const forwardedHeader = "x-checkpointer-forwarded-from"

const hopByHop = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "host"
])

const endToEnd = (headers: Readonly<Record<string, string>>): Record<string, string> =>
  Object.fromEntries(Object.entries(headers).filter(([name]) => !hopByHop.has(name.toLowerCase())))

const connectTimeout = Duration.seconds(5)
/** A forwarded synchronous checkpoint answers when it is done: allow for a large archive, never wait forever. */
const answerTimeout = Duration.minutes(30)

const decodeContainer = Schema.decodeUnknownEither(ContainerPath)
const decodeIdentifier = Schema.decodeUnknownEither(CheckpointIdentifier)

/** The route of a checkpoint request, or Local for anything else (the contract answers malformed input with 400). */
const routeOf = (router: NodeRouter, request: HttpServerRequest.HttpServerRequest, forwarded: boolean) => {
  const url = new URL(request.url, "http://localhost")
  const segments = url.pathname.split("/")
  if (request.method === "POST" && segments.length === 5 && segments[1] === "checkpoint") {
    const path = decodeContainer({ namespace: segments[2], pod: segments[3], container: segments[4] })
    return Either.isRight(path)
      ? router.forCheckpoint(new ContainerRef(path.right), forwarded)
      : Effect.succeed<Route>({ _tag: "Local" })
  }
  if (request.method === "GET" && url.pathname === "/checkpoint") {
    const values = url.searchParams.getAll("checkpointIdentifier")
    const identifier = values.length === 1 ? decodeIdentifier(values[0]) : Either.left(undefined)
    return Either.isRight(identifier)
      ? router.forResult(identifier.right, forwarded)
      : Effect.succeed<Route>({ _tag: "Local" })
  }
  return Effect.succeed<Route>({ _tag: "Local" })
}

/**
 * Passes checkpoint requests for pods (and results) of other nodes to the Checkpointer on that node: method, path,
 * query, headers and body unchanged, and streams its answer back unchanged. Unreachable peers answer 502.
 */
export const RequestForwarding = HttpApiBuilder.middleware(
  Effect.gen(function*() {
    const router = yield* NodeRouter
    const { node } = yield* CheckpointerConfig
    const agent = yield* Effect.acquireRelease(
      Effect.sync(() => new Agent({ connect: { timeout: Duration.toMillis(connectTimeout) } })),
      (agent) => Effect.promise(() => agent.close())
    )
    const client = NodeHttpClient.makeUndici(agent)

    const forward = (request: HttpServerRequest.HttpServerRequest, to: { readonly node: string; readonly url: string }) =>
      Effect.gen(function*() {
        const hasBody = request.headers["content-length"] !== undefined && request.headers["content-length"] !== "0" ||
          request.headers["transfer-encoding"] !== undefined
        const outgoing = HttpClientRequest.make(request.method)(`${to.url}${request.url}`).pipe(
          HttpClientRequest.setHeaders({ ...endToEnd(request.headers), [forwardedHeader]: node }),
          hasBody
            ? HttpClientRequest.setBody(
              HttpBody.stream(
                request.stream,
                request.headers["content-type"],
                request.headers["content-length"] === undefined ? undefined : Number(request.headers["content-length"])
              )
            )
            : (outgoing) => outgoing
        )
        const response = yield* client.execute(outgoing).pipe(
          Effect.timeoutFail({
            duration: answerTimeout,
            onTimeout: () => `no answer within ${Duration.format(answerTimeout)}`
          })
        )
        yield* Effect.logDebug("forwarded").pipe(Effect.annotateLogs({ to: to.node, status: response.status }))
        return HttpServerResponse.stream(response.stream, {
          status: response.status,
          headers: endToEnd(response.headers)
        })
      }).pipe(
        Effect.catchAll((error) =>
          Effect.succeed(
            HttpServerResponse.text(
              `the Checkpointer on node ${to.node} (${to.url}) did not answer: ${
                typeof error === "string" ? error : transportReason(error)
              }`,
              { status: 502 }
            )
          )
        )
      )

    return (app) =>
      Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        const route = yield* routeOf(router, request, request.headers[forwardedHeader] !== undefined).pipe(
          Effect.either
        )
        if (Either.isLeft(route)) return refusal(route.left)
        if (route.right._tag === "Local") return yield* app
        return yield* forward(request, route.right)
      })
  })
)

const refusal = (failure: RoutingFailed) => HttpServerResponse.text(failure.message, { status: failure.status })
