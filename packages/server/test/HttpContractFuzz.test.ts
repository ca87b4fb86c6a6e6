import { ContainerPath } from "@checkpointer/core"
import { HttpClient, HttpClientRequest, HttpServer } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import type { HttpMethod } from "@effect/platform/HttpMethod"
import { describe, expect, it } from "@effect/vitest"
import { Effect, FastCheck as fc, Layer, Option, Ref, Runtime, Schema } from "effect"
import { listenerLayer } from "../src/http/ApiListener.ts"
import { AppLive } from "../src/http/HttpServer.ts"
import { makeCheckpointerTest, testClientLimits, World } from "./TestLayers.ts"

/** The whole API (request gate, contract, docs) on the real listener, with the fake kubelet, builder and API server. */
const ServerTest = AppLive.pipe(
  Layer.provideMerge(HttpServer.layerTestClient),
  Layer.provide(NodeHttpClient.layerWithoutAgent),
  Layer.provide(NodeHttpClient.makeAgentLayer({ keepAlive: false })),
  Layer.provideMerge(listenerLayer({
    port: 0,
    listenAddress: Option.some("127.0.0.1"),
    clientLimits: testClientLimits,
    tls: Option.none()
  })),
  Layer.provideMerge(makeCheckpointerTest())
)

const name = fc.oneof(
  { arbitrary: fc.constantFrom("default", "counter", "main", "a", "kube-system", "web-0", "undeletable"), weight: 8 },
  fc.constantFrom("", ".", "..", "%2F", "%2e%2e", "%00", "%", "%ZZ", "Upper", "-lead", "trail-", "a_b", "a.b", "é"),
  fc.string({ maxLength: 20 }).map(encodeURIComponent),
  fc.string({ minLength: 250, maxLength: 1100, unit: fc.constantFrom("a", "b", "-", "1") })
)

const identifier = fc.oneof(
  fc.stringMatching(/^node-[a-z]:[0-9a-f]{16}$/),
  fc.constantFrom("node-a:", ":0123456789abcdef", "node-a:0123456789ABCDEF", "node-a:0123", "x".repeat(300)),
  fc.string({ maxLength: 40 })
)

const path = fc.oneof(
  fc.tuple(name, name, name).map(([ns, pod, container]) => `/checkpoint/${ns}/${pod}/${container}`),
  fc.array(identifier, { maxLength: 3 }).map((ids) =>
    `/checkpoint?${ids.map((id) => `checkpointIdentifier=${encodeURIComponent(id)}`).join("&")}`
  ),
  fc.array(name, { maxLength: 5 }).map((segments) => `/${segments.join("/")}`),
  fc.constantFrom(
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/checkpoint",
    "/checkpoint/",
    "//",
    "/?"
  )
)

const skippedHeaders = new Set([
  "host",
  "content-length",
  "transfer-encoding",
  "connection",
  "expect",
  "upgrade",
  "te",
  "trailer",
  "keep-alive"
])

const headers = fc.dictionary(
  fc.oneof(
    fc.constantFrom("content-type", "authorization", "x-checkpointer-forwarded-from", "accept", "cookie"),
    fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/)
  ).filter((header) => !skippedHeaders.has(header)),
  fc.oneof(
    fc.constantFrom("application/json", "text/plain", "Bearer x", "node-b", "*/*"),
    fc.string({ maxLength: 60, unit: fc.integer({ min: 0x20, max: 0x7e }).map((code) => String.fromCharCode(code)) })
  ),
  { maxKeys: 4 }
)

const body = fc.oneof(
  fc.constant(undefined),
  fc.record({ deletePod: fc.jsonValue(), async: fc.jsonValue() }, { requiredKeys: [] }).map((value) =>
    JSON.stringify(value)
  ),
  fc.jsonValue().map((value) => JSON.stringify(value)),
  fc.string({ maxLength: 200 }),
  fc.constant(`{"pad":"${"x".repeat(70 * 1024)}"}`)
)

const method = fc.oneof(
  { arbitrary: fc.constantFrom<HttpMethod>("GET", "POST"), weight: 4 },
  fc.constantFrom<HttpMethod>("PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
)

const isContainerPath = Schema.is(ContainerPath)

/** One random request: no 5xx but a checkpoint failure, no crash, no kubelet call for an invalid name. */
const exchange = (
  [method, path, headers, body]: readonly [HttpMethod, string, Record<string, string>, string | undefined]
) =>
  Effect.gen(function*() {
    const client = yield* HttpClient.HttpClient
    const world = yield* World
    const request = HttpClientRequest.make(method)(path).pipe(
      HttpClientRequest.setHeaders(headers),
      body === undefined || method === "HEAD" ? (request) => request : HttpClientRequest.bodyText(body)
    )
    const response = yield* client.execute(request)
    const text = yield* response.text
    const allowed = response.status < 500 ||
      (response.status === 500 && text.startsWith("checkpoint failed in phase ")) ||
      (response.status === 503 && path === "/readyz")
    expect(allowed, `${method} ${path} ${JSON.stringify(headers)} -> ${response.status} ${text}`).toBe(true)
    if (response.status >= 400 && method !== "HEAD") expect(text.trim(), `${method} ${path}`).not.toBe("")
    const calls = yield* Ref.get(world.kubeletCalls)
    expect(calls.filter((call) => !isContainerPath(call))).toEqual([])
    const health = yield* client.execute(HttpClientRequest.get("/healthz"))
    expect(health.status).toBe(200)
  }).pipe(Effect.scoped)

describe("the HTTP contract under random requests", () => {
  it.live(
    "never a 5xx but a checkpoint failure, never a crash; the kubelet is reached, for valid names only",
    () =>
      Effect.gen(function*() {
        const runtime = yield* Effect.runtime<HttpClient.HttpClient | World>()
        yield* Effect.promise(() =>
          fc.assert(
            fc.asyncProperty(
              method,
              path,
              headers,
              body,
              (...request) => Runtime.runPromise(runtime, exchange(request))
            ),
            { numRuns: 300 }
          )
        )
        const calls = yield* Ref.get((yield* World).kubeletCalls)
        expect(calls.length).toBeGreaterThan(0)
        expect(calls.every(isContainerPath)).toBe(true)
      }).pipe(Effect.provide(ServerTest)),
    120_000
  )
})
