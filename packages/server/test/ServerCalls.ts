import { HttpClient, HttpClientRequest, HttpServer } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Context, Effect, Layer } from "effect"
import * as Http from "node:http"
import { AppLive } from "../src/http/HttpServer.ts"
import type { TestOptions } from "./TestLayers.ts"
import { makeCheckpointerTest, World } from "./TestLayers.ts"

export interface Answer {
  readonly status: number
  readonly text: string
  readonly headers: Readonly<Record<string, string>>
}

/** One request to the server under test, as a plain HTTP client sends it. */
export const call = (
  method: "GET" | "POST",
  path: string,
  options: { readonly headers?: Record<string, string>; readonly body?: unknown } = {}
) =>
  Effect.gen(function*() {
    const request = HttpClientRequest.make(method)(path).pipe(
      HttpClientRequest.setHeaders(options.headers ?? {}),
      options.body === undefined ? (request) => request : HttpClientRequest.bodyUnsafeJson(options.body)
    )
    const response = yield* (yield* HttpClient.HttpClient).execute(request)
    return { status: response.status, text: yield* response.text, headers: response.headers } satisfies Answer
  }).pipe(Effect.scoped)

/** Another whole server on a port of 127.0.0.1, with a world of its own: the Checkpointer of another node. */
export const startPeer = <E>(options: TestOptions<E>) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(
      AppLive.pipe(
        Layer.provideMerge(makeCheckpointerTest(options)),
        Layer.provideMerge(NodeHttpServer.layer(() => Http.createServer(), { port: 0, host: "127.0.0.1" }))
      )
    )
    const address = Context.get(context, HttpServer.HttpServer).address
    return { port: address._tag === "TcpAddress" ? address.port : 0, world: Context.get(context, World) }
  })
