import type { ApiTls } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { ConfigError, Duration, Effect, Layer, Option, Ref, Schedule } from "effect"
import * as Http from "node:http"
import * as Https from "node:https"
import type { Socket } from "node:net"

export interface ClientLimits {
  /** Headers and body of a request must arrive within this (the whole request, not the answer). */
  readonly requestTimeoutSeconds: number
  /** Headers must arrive within this; also bounds the TLS handshake. */
  readonly headersTimeoutSeconds: number
  /** An idle kept-alive connection is closed after this. */
  readonly keepAliveTimeoutSeconds: number
  /** Connections open at once; more get a 503 and are closed. */
  readonly maxConnections: number
}

export interface ListenerSettings {
  readonly port: number
  readonly listenAddress: Option.Option<string>
  readonly clientLimits: ClientLimits
  readonly tls: Option.Option<ApiTls>
}

interface KeyPair {
  readonly cert: string
  readonly key: string
}

const refusal = (maxConnections: number) => {
  const text = `too many connections: this Checkpointer serves at most ${maxConnections} at once ` +
    "(CHECKPOINTER_MAX_CONNECTIONS); try again later"
  return "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n" +
    `content-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`
}

/**
 * Beyond `maxConnections` open connections, a new one is answered 503 in plain text (over TLS when the API is HTTPS)
 * and closed without its request being read: the server's own connection handler never sees it.
 */
const capConnections = (server: Http.Server, maxConnections: number, secure: boolean) => {
  const event = secure ? "secureConnection" : "connection"
  const serve = server.listeners(event) as Array<(this: Http.Server, socket: Socket) => void>
  server.removeAllListeners(event)
  const open = { count: 0 }
  server.on("connection", (socket: Socket) => {
    open.count += 1
    socket.once("close", () => {
      open.count -= 1
    })
  })
  server.on(event, function(this: Http.Server, socket: Socket) {
    if (open.count <= maxConnections) return serve.forEach((listener) => listener.call(this, socket))
    socket.resume()
    socket.setTimeout(5_000, () => socket.destroy())
    socket.end(refusal(maxConnections))
  })
}

/** The Node server of the API: HTTP, or HTTPS with the given certificate, with the time bounds and the cap. */
export const makeNodeServer = (limits: ClientLimits, tls: Option.Option<KeyPair>): Http.Server => {
  const bounds = {
    requestTimeout: limits.requestTimeoutSeconds * 1000,
    headersTimeout: limits.headersTimeoutSeconds * 1000,
    keepAliveTimeout: limits.keepAliveTimeoutSeconds * 1000,
    // Node checks the two timeouts above this often (30 s by default, which would stretch them).
    connectionsCheckingInterval: 1000
  }
  const server: Http.Server = Option.match(tls, {
    onNone: () => Http.createServer(bounds),
    onSome: (pair) =>
      Https.createServer({ ...bounds, ...pair, handshakeTimeout: bounds.headersTimeout }) as unknown as Http.Server
  })
  capConnections(server, limits.maxConnections, Option.isSome(tls))
  return server
}

const tlsProblem = (variable: string, message: string) => ConfigError.InvalidData([variable], message)

const readKeyPair = (tls: ApiTls) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const read = (variable: string, file: string) =>
      fs.readFileString(file).pipe(
        Effect.mapError((error) => tlsProblem(variable, `cannot read ${file}: ${error.message}`))
      )
    return {
      cert: yield* read("CHECKPOINTER_TLS_CERT_FILE", tls.certFile),
      key: yield* read("CHECKPOINTER_TLS_KEY_FILE", tls.keyFile)
    } satisfies KeyPair
  })

/** How often the certificate files are read again (a mounted Secret is updated in place). */
export const defaultReloadInterval = Duration.seconds(10)

/**
 * The API's listener. With CHECKPOINTER_TLS_CERT_FILE/KEY_FILE it serves HTTPS and reads both files again every
 * `reloadInterval`; a changed pair is used for new connections, an unusable one is logged and the old one kept.
 */
export const listenerLayer = (
  settings: ListenerSettings,
  reloadInterval: Duration.DurationInput = defaultReloadInterval
) =>
  Layer.unwrapScoped(Effect.gen(function*() {
    const pair = yield* Option.match(settings.tls, {
      onNone: () => Effect.succeed(Option.none<KeyPair>()),
      onSome: (tls) => Effect.map(readKeyPair(tls), Option.some)
    })
    const server = yield* Effect.try({
      try: () => makeNodeServer(settings.clientLimits, pair),
      catch: (cause) =>
        tlsProblem(
          "CHECKPOINTER_TLS_CERT_FILE",
          `with CHECKPOINTER_TLS_KEY_FILE, not a usable certificate and key: ${(cause as Error).message}`
        )
    })
    if (Option.isSome(settings.tls) && Option.isSome(pair)) {
      const tls = settings.tls.value
      const current = yield* Ref.make(pair.value)
      const reload = Effect.gen(function*() {
        const next = yield* readKeyPair(tls)
        const before = yield* Ref.get(current)
        if (next.cert === before.cert && next.key === before.key) return
        yield* Effect.try({
          try: () => (server as unknown as Https.Server).setSecureContext(next),
          catch: (cause) => tlsProblem("CHECKPOINTER_TLS_CERT_FILE", (cause as Error).message)
        })
        yield* Ref.set(current, next)
        yield* Effect.logInfo("TLS certificate reloaded").pipe(Effect.annotateLogs({ file: tls.certFile }))
      }).pipe(
        Effect.catchAll((error) =>
          Effect.logWarning("could not load the TLS certificate again; the previous one stays in use").pipe(
            Effect.annotateLogs({ error: error.message })
          )
        ),
        Effect.annotateLogs({ service: "ApiListener" })
      )
      yield* Effect.forkScoped(Effect.repeat(reload, Schedule.spaced(reloadInterval)))
    }
    return NodeHttpServer.layer(() => server, {
      port: settings.port,
      ...Option.match(settings.listenAddress, { onNone: () => ({}), onSome: (host) => ({ host }) })
    })
  }))
