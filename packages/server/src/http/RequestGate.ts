import { CheckpointOptions, NodeRouter, PeerUnreachable, ServerConfig, transportReason } from "@checkpointer/core"
import type { CheckpointIdentifier, ContainerRef, Route, RoutingFailed } from "@checkpointer/core"
import { FileSystem, HttpClientRequest, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Agent } from "@effect/platform-node/Undici"
import { ConfigError, Duration, Effect, Option, Schema } from "effect"

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
  "host",
  "content-length"
])

const endToEnd = (headers: Readonly<Record<string, string>>): Record<string, string> =>
  Object.fromEntries(Object.entries(headers).filter(([name]) => !hopByHop.has(name.toLowerCase())))

const connectTimeout = Duration.seconds(5)
/** A forwarded synchronous checkpoint answers when it is done: allow for a large archive, never wait forever. */
const answerTimeout = Duration.minutes(30)

const encodeOptions = Schema.encodeSync(CheckpointOptions)

type Forward = Extract<Route, { readonly _tag: "Forward" }>

/**
 * Serves a checkpoint request here, or passes it to the Checkpointer on the node of its pod (or result) with method,
 * path, query and headers unchanged and the decoded body encoded again, and answers with that Checkpointer's answer,
 * streamed back unchanged. Unreachable peers fail with PeerUnreachable.
 */
export class RequestGate extends Effect.Service<RequestGate>()("checkpointer/RequestGate", {
  scoped: Effect.gen(function*() {
    const router = yield* NodeRouter
    const { node, tls, tlsCaFile, tlsServerName } = yield* ServerConfig
    const fs = yield* FileSystem.FileSystem
    const ca = yield* Option.match(tlsCaFile, {
      onNone: () => Effect.succeed({}),
      onSome: (file) =>
        fs.readFileString(file).pipe(
          Effect.map((pem) => ({ ca: pem })),
          Effect.mapError((error) =>
            ConfigError.InvalidData(["CHECKPOINTER_TLS_CA_FILE"], `cannot read ${file}: ${error.message}`)
          )
        )
    })
    // Peers are reached by pod IP; their certificate is checked against one name shared by every node.
    const verification = Option.isSome(tls) ? { servername: tlsServerName, ...ca } : {}
    const agent = yield* Effect.acquireRelease(
      Effect.sync(() => new Agent({ connect: { timeout: Duration.toMillis(connectTimeout), ...verification } })),
      (agent) => Effect.promise(() => agent.close())
    )
    const client = NodeHttpClient.makeUndici(agent)

    const forward = (to: Forward, options: Option.Option<CheckpointOptions>) =>
      Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        const outgoing = HttpClientRequest.make(request.method)(`${to.url}${request.url}`).pipe(
          HttpClientRequest.setHeaders({ ...endToEnd(request.headers), [forwardedHeader]: node }),
          Option.match(options, {
            onNone: () => (outgoing: HttpClientRequest.HttpClientRequest) => outgoing,
            onSome: (options) => HttpClientRequest.bodyUnsafeJson(encodeOptions(options))
          })
        )
        const response = yield* client.execute(outgoing).pipe(
          Effect.mapError(transportReason),
          Effect.timeoutFail({
            duration: answerTimeout,
            onTimeout: () => `no answer within ${Duration.format(answerTimeout)}`
          }),
          Effect.mapError((reason) =>
            new PeerUnreachable({
              message: `the Checkpointer on node ${to.node} (${to.url}) did not answer: ${reason}`
            })
          )
        )
        yield* Effect.logDebug("forwarded").pipe(Effect.annotateLogs({ to: to.node, status: response.status }))
        return HttpServerResponse.stream(response.stream, {
          status: response.status,
          headers: endToEnd(response.headers)
        })
      })

    /** `local` when the route is this node, else the answer of the node it names. */
    const serve = <A, E, R>(
      route: (forwarded: boolean) => Effect.Effect<Route, RoutingFailed>,
      options: Option.Option<CheckpointOptions>,
      local: Effect.Effect<A, E, R>
    ) =>
      Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        const decided = yield* route(request.headers[forwardedHeader] !== undefined)
        return decided._tag === "Local" ? yield* local : yield* forward(decided, options)
      })

    /** POST /checkpoint/...: served on the node the pod runs on. */
    const checkpoint = <A, E, R>(container: ContainerRef, options: CheckpointOptions, local: Effect.Effect<A, E, R>) =>
      serve((forwarded) => router.forCheckpoint(container, forwarded), Option.some(options), local)

    /** GET /checkpoint?checkpointIdentifier=...: served on the node named in the identifier. */
    const result = <A, E, R>(identifier: CheckpointIdentifier, local: Effect.Effect<A, E, R>) =>
      serve((forwarded) => router.forResult(identifier, forwarded), Option.none(), local)

    return { checkpoint, result } as const
  }),
  dependencies: [NodeRouter.Default]
}) {}
