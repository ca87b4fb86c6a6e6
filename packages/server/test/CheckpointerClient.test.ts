import { HttpApiBuilder, HttpClient, HttpClientResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { describe, expect, it, layer } from "@effect/vitest"
import { CheckpointResult, ImageBuildError } from "@checkpointer/core"
import { Deferred, Duration, Effect, Fiber, Layer, Redacted, Ref } from "effect"
import { CheckpointerClient } from "../src/CheckpointerClient.ts"
import { ApiLive, DecodeErrorsAsText } from "../src/HttpServer.ts"
import { CheckpointerTest, World } from "./TestLayers.ts"

const ServerTest = HttpApiBuilder.serve().pipe(
  Layer.provide(DecodeErrorsAsText),
  Layer.provide(ApiLive),
  Layer.provideMerge(CheckpointerTest),
  Layer.provideMerge(NodeHttpServer.layerTest)
)

const ClientTest = CheckpointerClient.layerWithoutHttpClient({}).pipe(Layer.provideMerge(ServerTest))

const container = (pod: string) => ({ namespace: "default", pod, container: "main" })

layer(ClientTest, { excludeTestServices: true })("CheckpointerClient against the API", (it) => {
  it.effect("checkpoint answers the result; with async it answers an identifier that waitFor resolves", () =>
    Effect.gen(function*() {
      const client = yield* CheckpointerClient
      const world = yield* World
      const result = yield* client.checkpoint(container("client-sync"))
      expect(result).toBeInstanceOf(CheckpointResult)
      expect(result.containerImageName).toMatch(/^registry\.test\/checkpoints:[0-9a-f]{16}$/)

      const release = yield* Deferred.make<void>()
      yield* Ref.set(world.buildBehaviour, () => Deferred.await(release))
      const accepted = yield* client.checkpoint(container("client-async"), { async: true, deletePod: true })
      expect(accepted.checkpointIdentifier).toMatch(/^node-a:[0-9a-f]{16}$/)
      const waited = yield* Ref.make<ReadonlyArray<Duration.Duration>>([])
      const waiting = yield* Effect.fork(client.waitFor(accepted.checkpointIdentifier, {
        onWaiting: (elapsed) => Ref.update(waited, (all) => [...all, elapsed])
      }))
      yield* Effect.sleep("1200 millis")
      yield* Deferred.succeed(release, undefined)
      const later = yield* Fiber.join(waiting)
      yield* Ref.set(world.buildBehaviour, () => Effect.void)
      expect(later.containerImageName.endsWith(accepted.checkpointIdentifier.split(":")[1]!)).toBe(true)
      expect(yield* Ref.get(world.deletedPods)).toContain("default/client-async")
      const progress = yield* Ref.get(waited)
      expect(progress.length).toBeGreaterThanOrEqual(2)
      expect(Duration.toMillis(progress.at(-1)!)).toBeGreaterThanOrEqual(1000)
      expect(yield* client.result(accepted.checkpointIdentifier)).toEqual(later)
    }))

  it.effect("the contract's errors come back typed, with the server's message", () =>
    Effect.gen(function*() {
      const client = yield* CheckpointerClient
      const world = yield* World
      yield* Ref.set(world.missingContainers, new Set(["ghost"]))
      const missing = yield* Effect.flip(client.checkpoint({ namespace: "default", pod: "client", container: "ghost" }))
      expect(missing._tag).toBe("ContainerNotFound")
      expect(missing.message).toBe("container default/client/ghost not found on node node-a")

      yield* Ref.set(world.buildBehaviour, () => Effect.fail(new ImageBuildError({ step: "push", message: "denied" })))
      const failed = yield* Effect.flip(client.checkpoint(container("client-failing")))
      yield* Ref.set(world.buildBehaviour, () => Effect.void)
      expect(failed._tag).toBe("CheckpointFailed")
      expect(failed.message).toBe('checkpoint failed in phase "build/push": push: denied')

      const unknown = yield* Effect.flip(client.result("node-a:0123456789abcdef"))
      expect(unknown._tag).toBe("CheckpointNotFound")

      const invalid = yield* Effect.flip(client.checkpoint({ namespace: "default", pod: "Not_A_Pod", container: "c" }))
      expect(invalid._tag).toBe("CheckpointerRequestFailed")
      expect(invalid.message).toContain("DNS-1123 subdomain")
    }))
})

describe("CheckpointerClient transport", () => {
  const answering = (answers: ReadonlyArray<readonly [status: number, body: string]>) =>
    Effect.gen(function*() {
      const calls = yield* Ref.make(0)
      const http = HttpClient.make((request) =>
        Effect.map(Ref.getAndUpdate(calls, (n) => n + 1), (n) => {
          const [status, body] = answers[Math.min(n, answers.length - 1)]!
          const type = status === 200 ? "application/json" : "text/plain"
          return HttpClientResponse.fromWeb(request, new Response(body, { status, headers: { "content-type": type } }))
        })
      )
      const client = yield* CheckpointerClient.make({ baseUrl: "http://checkpointer.test" }).pipe(
        Effect.provideService(HttpClient.HttpClient, http)
      )
      return { client, calls }
    })

  const done = JSON.stringify({
    containerIdentifier: { namespace: "default", pod: "p", container: "c" },
    beginTimestamp: 1,
    endTimestamp: 2,
    containerImageName: "registry.test/checkpoints:0123456789abcdef"
  })

  it.effect("waitFor asks again after a 502 or 503 and gives the server's text on an unexpected answer", () =>
    Effect.gen(function*() {
      const flaky = yield* answering([[502, "the Checkpointer on node node-b did not answer"], [503, "restarting"], [200, done]])
      const result = yield* flaky.client.waitFor("node-b:0123456789abcdef")
      expect(result.containerImageName).toBe("registry.test/checkpoints:0123456789abcdef")
      expect(yield* Ref.get(flaky.calls)).toBe(3)

      const misrouted = yield* answering([[421, "pod default/p is not on node node-a either"]])
      const failure = yield* Effect.flip(misrouted.client.checkpoint({ namespace: "default", pod: "p", container: "c" }))
      expect(failure).toMatchObject({
        _tag: "CheckpointerRequestFailed",
        status: 421,
        message: "pod default/p is not on node node-a either"
      })
    }))

  it.effect("waitFor gives up after its timeout", () =>
    Effect.gen(function*() {
      const down = yield* answering([[502, "the Checkpointer on node node-b did not answer"]])
      const failure = yield* Effect.flip(down.client.waitFor("node-b:0123456789abcdef", { timeout: "1 second" }))
      expect(failure).toMatchObject({ _tag: "CheckpointerRequestFailed", status: undefined })
      expect(failure.message).toBe("checkpoint node-b:0123456789abcdef had no result within 1s")
    }), { timeout: 10_000 })

  it.effect("sends the token as a bearer token", () =>
    Effect.gen(function*() {
      const seen = yield* Ref.make<ReadonlyArray<string | undefined>>([])
      const http = HttpClient.make((request) =>
        Effect.as(
          Ref.update(seen, (all) => [...all, request.headers.authorization]),
          HttpClientResponse.fromWeb(request, new Response(done, { headers: { "content-type": "application/json" } }))
        )
      )
      for (const token of ["plain-token", Redacted.make("redacted-token")]) {
        const client = yield* CheckpointerClient.make({ baseUrl: "http://checkpointer.test", token }).pipe(
          Effect.provideService(HttpClient.HttpClient, http)
        )
        yield* client.result("node-a:0123456789abcdef")
      }
      expect(yield* Ref.get(seen)).toEqual(["Bearer plain-token", "Bearer redacted-token"])
    }))

  it.effect("a server that does not answer is a CheckpointerRequestFailed without a status", () =>
    Effect.gen(function*() {
      const client = yield* CheckpointerClient.pipe(
        Effect.provide(CheckpointerClient.layer({ baseUrl: "http://127.0.0.1:1" }))
      )
      const failure = yield* Effect.flip(client.result("node-a:0123456789abcdef"))
      expect(failure).toMatchObject({ _tag: "CheckpointerRequestFailed", status: undefined })
      expect(failure.message).toContain("no answer from http://127.0.0.1:1/checkpoint")
    }))
})
