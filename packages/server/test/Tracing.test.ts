import { ImageBuildError } from "@checkpointer/core"
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Ref } from "effect"
import { resourceSpansOf, spansOf, startOtlpReceiver } from "../../../test/harness/OtlpReceiver.ts"
import type { OtlpSpan } from "../../../test/harness/OtlpReceiver.ts"
import { TracingLive } from "../src/Tracing.ts"
import { makeServerTest, testEnvironment, World } from "./TestLayers.ts"

const attribute = (span: { readonly attributes: OtlpSpan["attributes"] }, key: string) =>
  span.attributes.find((entry) => entry.key === key)?.value.stringValue

const post = (path: string, body: unknown) =>
  Effect.flatMap(
    HttpClient.HttpClient,
    (client) => client.execute(HttpClientRequest.post(path).pipe(HttpClientRequest.bodyUnsafeJson(body)))
  ).pipe(
    Effect.flatMap((response) => Effect.map(response.text, (text) => ({ status: response.status, text })))
  )

/**
 * Runs `test` against the in-process server, its spans exported to a fresh receiver every 100 ms; what was received
 * once the server has stopped (the exporter sends what is left when it stops).
 */
const withReceiver = <A>(
  protocol: Readonly<Record<string, string>>,
  test: Effect.Effect<A, unknown, HttpClient.HttpClient | World>
) =>
  Effect.gen(function*() {
    const receiver = yield* startOtlpReceiver
    const environment = {
      ...testEnvironment,
      ...protocol,
      OTEL_EXPORTER_OTLP_ENDPOINT: `${receiver.url}/`,
      OTEL_BSP_SCHEDULE_DELAY: "100"
    }
    const result = yield* test.pipe(
      Effect.provide(makeServerTest()),
      Effect.provide(TracingLive),
      Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(environment)))),
      Effect.scoped
    )
    return { result, received: receiver.received }
  }).pipe(Effect.scoped)

describe("traces over OTLP", () => {
  it.live("a checkpoint is a span with one child per phase, the identifier on each, exported as JSON", () =>
    Effect.gen(function*() {
      const { received, result } = yield* withReceiver(
        { OTEL_EXPORTER_OTLP_PROTOCOL: "http/json" },
        Effect.gen(function*() {
          const world = yield* World
          yield* Ref.set(world.buildBehaviour, (request) =>
            request.container.container === "broken"
              ? Effect.fail(new ImageBuildError({ step: "push", message: "registry answered 500" }))
              : Effect.void)
          const succeeded = yield* post("/checkpoint/default/counter/main", {})
          const failed = yield* post("/checkpoint/default/counter/broken", {})
          return { succeeded, failed }
        })
      )
      expect(result.succeeded.status).toBe(201)
      expect(result.failed.status).toBe(500)
      const tag = JSON.parse(result.succeeded.text).containerImageName.split(":").at(-1)
      const identifier = `node-a:${tag}`

      const resources = resourceSpansOf(received)
      expect(received.every((batch) => batch.contentType.startsWith("application/json"))).toBe(true)
      expect(attribute(resources[0]!.resource, "service.name")).toBe("checkpointer")
      expect(attribute(resources[0]!.resource, "k8s.node.name")).toBe("node-a")
      const spans = spansOf(received)

      const checkpoints = spans.filter((span) => span.name === "checkpoint")
      expect(checkpoints.length).toBe(2)
      const checkpoint = checkpoints.find((span) => attribute(span, "checkpointer.identifier") === identifier)!
      expect(attribute(checkpoint, "checkpointer.container")).toBe("default/counter/main")
      const phases = spans.filter((span) => span.parentSpanId === checkpoint.spanId)
      expect(phases.map((span) => span.name).sort()).toEqual([
        "checkpoint build/push",
        "checkpoint kubelet",
        "checkpoint result store"
      ])
      for (const phase of phases) {
        expect(phase.traceId).toBe(checkpoint.traceId)
        expect(attribute(phase, "checkpointer.identifier")).toBe(identifier)
        expect(phase.name).toBe(`checkpoint ${attribute(phase, "checkpointer.phase")}`)
      }
      const request = spans.find((span) => span.spanId === checkpoint.parentSpanId)
      expect(request?.traceId).toBe(checkpoint.traceId)

      const failure = checkpoints.find((span) => span !== checkpoint)!
      expect(attribute(failure, "checkpointer.container")).toBe("default/counter/broken")
      expect(failure.status?.code).toBe(2)
      const failedPhase = spans.find((span) =>
        span.parentSpanId === failure.spanId && span.name === "checkpoint build/push"
      )!
      expect(failedPhase.status).toMatchObject({ code: 2, message: expect.stringContaining("registry answered 500") })
    }))

  it.live("protobuf by default (OTLP's default protocol)", () =>
    Effect.gen(function*() {
      const { received, result } = yield* withReceiver(
        {},
        post("/checkpoint/default/counter/main", {})
      )
      expect(result.status).toBe(201)
      const tag: string = JSON.parse(result.text).containerImageName.split(":").at(-1)
      expect(received.length).toBeGreaterThan(0)
      expect(received.every((batch) => batch.contentType === "application/x-protobuf")).toBe(true)
      // Protobuf strings are UTF-8 bytes: the span names and the identifier are there as they are.
      const bytes = Buffer.concat(received.map((batch) => batch.body))
      expect(bytes.includes(`node-a:${tag}`)).toBe(true)
      expect(bytes.includes("checkpoint build/push")).toBe(true)
    }))
})
