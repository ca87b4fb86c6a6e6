import { Cause, Data, Effect, FiberId, FiberSet } from "effect"
import type { Scope } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"
import * as https from "node:https"
import type { AddressInfo } from "node:net"
import type { Duplex } from "node:stream"
import type { TLSSocket } from "node:tls"

export class HttpsServerError extends Data.TaggedError("HttpsServerError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export interface HttpsServer {
  readonly address: string
  readonly port: number
  readonly url: string
}

export type RequestHandler<R> = (request: IncomingMessage, response: ServerResponse) => Effect.Effect<void, never, R>

/**
 * A node:https server on `address`:<free port> whose requests are handled by Effects. Closing the scope destroys
 * open connections (long watches, hanging requests) and interrupts their fibers; a client that goes away interrupts
 * its fiber.
 */
export const serveHttps = <R>(options: {
  readonly address: string
  readonly tls: https.ServerOptions
  readonly handler: RequestHandler<R>
  /** Connection upgrades (WebSocket); without it they are refused. */
  readonly onUpgrade?: (request: IncomingMessage, socket: Duplex, head: Buffer) => void
}): Effect.Effect<HttpsServer, HttpsServerError, R | Scope.Scope> =>
  Effect.gen(function*() {
    const run = yield* FiberSet.makeRuntime<R>()
    const server = yield* Effect.acquireRelease(
      Effect.async<https.Server, HttpsServerError>((resume) => {
        const server = https.createServer(options.tls, (request, response) => {
          const fiber = run(
            options.handler(request, response).pipe(
              Effect.catchAllCause((cause) =>
                Cause.isInterruptedOnly(cause)
                  ? Effect.void
                  : Effect.sync(() => respondText(response, 500, Cause.pretty(cause)))
              )
            )
          )
          response.on("close", () => {
            if (!response.writableEnded) fiber.unsafeInterruptAsFork(FiberId.none)
          })
        })
        const onUpgrade = options.onUpgrade
        if (onUpgrade !== undefined) server.on("upgrade", onUpgrade)
        const onError = (cause: Error) =>
          resume(Effect.fail(new HttpsServerError({ message: `cannot listen on ${options.address}`, cause })))
        server.once("error", onError)
        server.listen(0, options.address, () => {
          server.off("error", onError)
          resume(Effect.succeed(server))
        })
      }),
      (server) =>
        Effect.async<void>((resume) => {
          server.closeAllConnections()
          server.close(() => resume(Effect.void))
        })
    )
    const port = (server.address() as AddressInfo).port
    return { address: options.address, port, url: `https://${options.address}:${port}` }
  })

/** Writes a complete response unless one was already sent. */
export const respond = (
  response: ServerResponse,
  status: number,
  body: string,
  headers: Readonly<Record<string, string>>
) => {
  if (response.headersSent) {
    response.end()
    return
  }
  response.writeHead(status, { ...headers, "content-length": Buffer.byteLength(body) })
  response.end(body)
}

export const respondText = (response: ServerResponse, status: number, body: string) =>
  respond(response, status, body, { "content-type": "text/plain; charset=utf-8" })

export const respondJson = (response: ServerResponse, status: number, body: unknown) =>
  respond(response, status, JSON.stringify(body), { "content-type": "application/json" })

export const readBody = (request: IncomingMessage): Effect.Effect<string, HttpsServerError> =>
  Effect.async<string, HttpsServerError>((resume) => {
    const chunks: Array<Buffer> = []
    request.on("data", (chunk: Buffer) => chunks.push(chunk))
    request.on("end", () => resume(Effect.succeed(Buffer.concat(chunks).toString("utf8"))))
    request.on("error", (cause) => resume(Effect.fail(new HttpsServerError({ message: "cannot read body", cause }))))
  })

/** The CN of the client certificate the TLS handshake verified, if any. */
export const clientCommonName = (request: IncomingMessage): string | undefined => {
  const socket = request.socket as TLSSocket
  if (typeof socket.getPeerCertificate !== "function") return undefined
  const subject = socket.getPeerCertificate().subject as Record<string, string | ReadonlyArray<string>> | undefined
  const cn = subject?.["CN"]
  return typeof cn === "string" ? cn : cn?.[0]
}
