import {
  FileSystem,
  HttpApiBuilder,
  HttpBody,
  HttpClientRequest,
  HttpServerRequest,
  HttpServerResponse
} from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Agent } from "@effect/platform-node/Undici"
import {
  CallerAuth,
  CheckpointIdentifier,
  ContainerPath,
  ContainerRef,
  NodeRouter,
  ServerConfig,
  transportReason
} from "@checkpointer/core"
import type { Access, Route } from "@checkpointer/core"
import { ConfigError, Duration, Effect, Either, Option, Schema } from "effect"
import { readCheckpointBody } from "./CheckpointHandlers.ts"

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

const decodeContainer = Schema.decodeUnknownEither(ContainerPath)
const decodeIdentifier = Schema.decodeUnknownEither(CheckpointIdentifier)

/** The checkpoint request this is, if it is a well-formed one (anything else is left to the contract's 400/404). */
type Target =
  | { readonly _tag: "Checkpoint"; readonly container: ContainerRef; readonly body: string }
  | { readonly _tag: "Result"; readonly identifier: CheckpointIdentifier }

const targetOf = (request: HttpServerRequest.HttpServerRequest) =>
  Effect.gen(function*() {
    const parsed = Either.try(() => new URL(`http://localhost${request.url.startsWith("/") ? "" : "/"}${request.url}`))
    if (Either.isLeft(parsed)) return Option.none<Target>()
    const url = parsed.right
    const segments = url.pathname.split("/")
    if (request.method === "POST" && segments.length === 5 && segments[1] === "checkpoint") {
      const path = decodeContainer({ namespace: segments[2], pod: segments[3], container: segments[4] })
      if (Either.isLeft(path)) return Option.none<Target>()
      const body = yield* readCheckpointBody(request)
      return Option.some<Target>({ _tag: "Checkpoint", container: new ContainerRef(path.right), body })
    }
    if (request.method === "GET" && url.pathname === "/checkpoint") {
      const values = url.searchParams.getAll("checkpointIdentifier")
      const identifier = values.length === 1 ? decodeIdentifier(values[0]) : Either.left(undefined)
      return Either.isRight(identifier)
        ? Option.some<Target>({ _tag: "Result", identifier: identifier.right })
        : Option.none<Target>()
    }
    return Option.none<Target>()
  })

const wantsPodDeleted = (body: string): boolean => {
  try {
    return (JSON.parse(body) as { deletePod?: unknown } | null)?.deletePod === true
  } catch {
    return false
  }
}

/** What the caller must be allowed before a checkpoint request is served or forwarded (results: see the handler). */
const accessFor = (target: Target): ReadonlyArray<Access> =>
  target._tag === "Result" ? [] : [
    { verb: "create", resource: "pods", subresource: "checkpoint", namespace: target.container.namespace },
    ...(wantsPodDeleted(target.body) ? [{ verb: "delete", resource: "pods", namespace: target.container.namespace }] : [])
  ]

/**
 * Every checkpoint request passes here before the handlers: the caller is authenticated (AUTH_MODE=kubernetes), and a
 * request for a pod (or a result) of another node is passed to the Checkpointer on that node with method, path,
 * query, headers and body unchanged, its answer streamed back unchanged. Unreachable peers answer 502.
 */
export const RequestGate = HttpApiBuilder.middleware(
  Effect.gen(function*() {
    const router = yield* NodeRouter
    const auth = yield* CallerAuth
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

    const route = (target: Target, forwarded: boolean): Effect.Effect<Route, { status: number; message: string }> =>
      target._tag === "Checkpoint"
        ? router.forCheckpoint(target.container, forwarded)
        : router.forResult(target.identifier, forwarded)

    const forward = (
      request: HttpServerRequest.HttpServerRequest,
      target: Target,
      to: { readonly node: string; readonly url: string }
    ) =>
      Effect.gen(function*() {
        const outgoing = HttpClientRequest.make(request.method)(`${to.url}${request.url}`).pipe(
          HttpClientRequest.setHeaders({ ...endToEnd(request.headers), [forwardedHeader]: node }),
          target._tag === "Checkpoint" && target.body !== ""
            ? HttpClientRequest.setBody(HttpBody.text(target.body, request.headers["content-type"]))
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
        const target = yield* targetOf(request).pipe(Effect.either)
        if (Either.isLeft(target)) {
          return plainText({ status: target.left._tag === "PayloadTooLarge" ? 413 : 400, message: target.left.message })
        }
        if (Option.isNone(target.right)) return yield* app
        const checked = yield* auth.authorize(request.headers.authorization, accessFor(target.right.value)).pipe(
          Effect.either
        )
        if (Either.isLeft(checked)) return plainText(authRefusal(checked.left))
        const decided = yield* route(target.right.value, request.headers[forwardedHeader] !== undefined).pipe(
          Effect.either
        )
        if (Either.isLeft(decided)) return plainText(decided.left)
        if (decided.right._tag === "Local") return yield* app
        return yield* forward(request, target.right.value, decided.right)
      })
  })
)

const authRefusal = (error: { readonly _tag: string; readonly message: string }) => ({
  status: error._tag === "Unauthenticated" ? 401 : error._tag === "Forbidden" ? 403 : 500,
  message: error.message
})

const plainText = (refusal: { readonly status: number; readonly message: string }) =>
  HttpServerResponse.text(refusal.message, {
    status: refusal.status,
    ...(refusal.status === 401 ? { headers: { "www-authenticate": "Bearer" } } : {})
  })
