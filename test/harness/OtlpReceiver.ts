import { Effect } from "effect"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"

export interface ReceivedExport {
  readonly contentType: string
  readonly body: Buffer
}

export interface OtlpSpan {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId?: string
  readonly name: string
  readonly attributes: ReadonlyArray<{ readonly key: string; readonly value: { readonly stringValue?: string } }>
  readonly status?: { readonly code?: number; readonly message?: string }
}

export interface OtlpResourceSpans {
  readonly resource: { readonly attributes: OtlpSpan["attributes"] }
  readonly scopeSpans: ReadonlyArray<{ readonly spans: ReadonlyArray<OtlpSpan> }>
}

/** An OTLP/HTTP receiver on a free loopback port: keeps every body POSTed to /v1/traces and answers 200. */
export const startOtlpReceiver = Effect.acquireRelease(
  Effect.async<{ readonly url: string; readonly received: ReadonlyArray<ReceivedExport>; readonly close: () => void }>(
    (resume) => {
      const received: Array<ReceivedExport> = []
      const server = createServer((request, response) => {
        const chunks: Array<Buffer> = []
        request.on("data", (chunk: Buffer) => chunks.push(chunk))
        request.on("end", () => {
          const traces = request.method === "POST" && request.url === "/v1/traces"
          if (traces) received.push({ contentType: request.headers["content-type"] ?? "", body: Buffer.concat(chunks) })
          response.writeHead(traces ? 200 : 404, { "content-type": "application/json" })
          response.end("{}")
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as AddressInfo
        resume(Effect.succeed({ url: `http://127.0.0.1:${port}`, received, close: () => server.close() }))
      })
    }
  ),
  (receiver) => Effect.sync(receiver.close)
)

/** The resource spans of exports sent as OTLP JSON. */
export const resourceSpansOf = (received: ReadonlyArray<ReceivedExport>): ReadonlyArray<OtlpResourceSpans> =>
  received.flatMap(({ body }) =>
    (JSON.parse(body.toString("utf8")) as { readonly resourceSpans: ReadonlyArray<OtlpResourceSpans> }).resourceSpans
  )

/** Every span of those exports. */
export const spansOf = (received: ReadonlyArray<ReceivedExport>): ReadonlyArray<OtlpSpan> =>
  resourceSpansOf(received).flatMap((resource) => resource.scopeSpans.flatMap((scope) => scope.spans))
