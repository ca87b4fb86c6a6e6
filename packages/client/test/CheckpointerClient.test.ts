import { HttpClient, HttpClientResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Redacted, Ref, TestClock } from "effect"
import { CheckpointerClient } from "../src/CheckpointerClient.ts"

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

  const target = { namespace: "default", pod: "p", container: "c" }

  const done = JSON.stringify({
    containerIdentifier: { namespace: "default", pod: "p", container: "c" },
    beginTimestamp: 1,
    endTimestamp: 2,
    containerImageName: "registry.test/checkpoints:0123456789abcdef"
  })

  it.effect("waitFor asks again after a 502 or 503; a 421 comes back typed, an unexpected answer with its text", () =>
    Effect.gen(function*() {
      const flaky = yield* answering([
        [502, "the Checkpointer on node node-b did not answer"],
        [503, "restarting"],
        [200, done]
      ])
      const waiting = yield* Effect.fork(flaky.client.waitFor("node-b:0123456789abcdef"))
      yield* TestClock.adjust("1 second")
      const result = yield* Fiber.join(waiting)
      expect(result.containerImageName).toBe("registry.test/checkpoints:0123456789abcdef")
      expect(yield* Ref.get(flaky.calls)).toBe(3)

      const misrouted = yield* answering([[421, "pod default/p is not on node node-a either"]])
      const failure = yield* Effect.flip(misrouted.client.checkpoint(target))
      expect(failure).toMatchObject({ _tag: "Misdirected", message: "pod default/p is not on node node-a either" })

      const unexpected = yield* answering([[418, "not a Checkpointer"]])
      const teapot = yield* Effect.flip(unexpected.client.checkpoint(target))
      expect(teapot).toMatchObject({ _tag: "CheckpointerRequestFailed", status: 418, message: "not a Checkpointer" })
    }))

  it.effect("waitFor gives up after its timeout", () =>
    Effect.gen(function*() {
      const down = yield* answering([[502, "the Checkpointer on node node-b did not answer"]])
      const waiting = yield* Effect.fork(down.client.waitFor("node-b:0123456789abcdef", { timeout: "1 second" }))
      yield* TestClock.adjust("1 second")
      const failure = yield* Effect.flip(Fiber.join(waiting))
      expect(failure).toMatchObject({ _tag: "CheckpointerRequestFailed", status: undefined })
      expect(failure.message).toBe("node-b:0123456789abcdef had no result within 1s")
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
