import { CheckpointerApi, ImageBuildError } from "@checkpointer/core"
import { HttpClient, HttpClientRequest, OpenApi } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Ref } from "effect"
import { onOwnServer, World } from "./TestLayers.ts"

const call = (request: HttpClientRequest.HttpClientRequest) =>
  Effect.gen(function*() {
    const response = yield* (yield* HttpClient.HttpClient).execute(request)
    return { status: response.status, text: yield* response.text, type: response.headers["content-type"] ?? "" }
  })

/** `name{labels}` -> value, from Prometheus text. */
const scrape = Effect.gen(function*() {
  const response = yield* call(HttpClientRequest.get("/metrics"))
  expect(response.status).toBe(200)
  expect(response.type).toBe("text/plain; version=0.0.4; charset=utf-8")
  return new Map(
    response.text.split("\n").filter((line) => line !== "" && !line.startsWith("#")).map((line) => {
      const at = line.lastIndexOf(" ")
      return [line.slice(0, at), Number(line.slice(at + 1))] as const
    })
  )
})

const delta = (before: ReadonlyMap<string, number>, after: ReadonlyMap<string, number>, key: string) =>
  (after.get(key) ?? 0) - (before.get(key) ?? 0)

const checkpoint = (path: string, body?: unknown) =>
  call(
    body === undefined
      ? HttpClientRequest.post(`/checkpoint/${path}`)
      : HttpClientRequest.post(`/checkpoint/${path}`).pipe(HttpClientRequest.bodyUnsafeJson(body))
  )

describe("health and metrics API", () => {
  it.live("/healthz and /readyz answer ok in plain text", () =>
    Effect.gen(function*() {
      for (const path of ["/healthz", "/readyz"]) {
        const response = yield* call(HttpClientRequest.get(path))
        expect(response.status).toBe(200)
        expect(response.text).toBe("ok")
        expect(response.type).toContain("text/plain")
      }
    }).pipe(onOwnServer()))

  it.live("/metrics counts a checkpoint by outcome and builder, times its phases and counts the bytes pushed", () =>
    Effect.gen(function*() {
      const before = yield* scrape
      expect((yield* checkpoint("default/metrics-pod/main", { deletePod: true })).status).toBe(201)
      const after = yield* scrape
      expect(delta(before, after, "checkpoints_total{builder=\"fake\",outcome=\"succeeded\"}")).toBe(1)
      for (const phase of ["kubelet", "build/push", "delete pod"]) {
        expect(delta(before, after, `checkpoint_phase_duration_seconds_count{phase="${phase}"}`), phase).toBe(1)
        expect(after.get(`checkpoint_phase_duration_seconds_bucket{phase="${phase}",le="+Inf"}`)).toBe(
          after.get(`checkpoint_phase_duration_seconds_count{phase="${phase}"}`)
        )
      }
      expect(delta(before, after, "checkpoint_pushed_bytes_sum{builder=\"fake\"}")).toBe(13)
      expect(delta(before, after, "checkpoint_pushed_bytes_count{builder=\"fake\"}")).toBe(1)
      expect(after.get("checkpoints_in_flight")).toBe(0)
      expect(after.get("checkpoints_queued")).toBe(0)
    }).pipe(onOwnServer()))

  it.live("/metrics counts failed and not-found checkpoints apart", () =>
    Effect.gen(function*() {
      const world = yield* World
      const before = yield* scrape
      yield* Ref.set(world.buildBehaviour, () => Effect.fail(new ImageBuildError({ step: "push", message: "refused" })))
      expect((yield* checkpoint("default/metrics-pod/main")).status).toBe(500)
      yield* Ref.set(world.missingContainers, new Set(["ghost"]))
      expect((yield* checkpoint("default/metrics-pod/ghost")).status).toBe(404)
      const after = yield* scrape
      expect(delta(before, after, "checkpoints_total{builder=\"fake\",outcome=\"failed\"}")).toBe(1)
      expect(delta(before, after, "checkpoints_total{builder=\"fake\",outcome=\"not_found\"}")).toBe(1)
      expect(delta(before, after, "checkpoint_phase_duration_seconds_count{phase=\"build/push\"}")).toBe(1)
    }).pipe(onOwnServer()))

  it.live("/metrics shows running checkpoints in flight and the ones beyond the limit queued", () =>
    Effect.gen(function*() {
      const world = yield* World
      const release = yield* Deferred.make<void>()
      yield* Ref.set(world.buildBehaviour, () => Deferred.await(release))
      // The test settings allow two checkpoints at once.
      const accepted = yield* Effect.forEach(
        ["a", "b", "c"],
        (container) => checkpoint(`default/metrics-queue/${container}`, { async: true })
      )
      expect(accepted.map((answer) => answer.status)).toEqual([202, 202, 202])
      const during = yield* scrape
      expect(during.get("checkpoints_in_flight")).toBe(2)
      expect(during.get("checkpoints_queued")).toBe(1)
      yield* Deferred.succeed(release, undefined)
      const results = yield* Effect.fork(Effect.forEach(accepted, (answer) =>
        call(HttpClientRequest.get(
          `/checkpoint?checkpointIdentifier=${JSON.parse(answer.text).checkpointIdentifier}`
        ))))
      expect((yield* Fiber.join(results)).map((answer) => answer.status)).toEqual([200, 200, 200])
      const after = yield* scrape
      expect(after.get("checkpoints_in_flight")).toBe(0)
      expect(after.get("checkpoints_queued")).toBe(0)
    }).pipe(onOwnServer()))

  it.effect("the OpenAPI document lists /metrics and the 503 of /readyz", () =>
    Effect.sync(() => {
      const spec = OpenApi.fromApi(CheckpointerApi)
      expect(Object.keys(spec.paths)).toEqual(expect.arrayContaining(["/metrics", "/readyz", "/healthz"]))
      expect(Object.keys(spec.paths["/readyz"]?.get?.responses ?? {})).toEqual(expect.arrayContaining(["200", "503"]))
    }))

  it.effect("the OpenAPI document lists every answer of the checkpoint endpoints and their bearer security", () =>
    Effect.sync(() => {
      const spec = OpenApi.fromApi(CheckpointerApi)
      const checkpoint = spec.paths["/checkpoint/{namespace}/{pod}/{container}"]?.post
      const result = spec.paths["/checkpoint"]?.get
      expect(Object.keys(checkpoint?.responses ?? {}).sort()).toEqual(
        ["201", "202", "400", "401", "403", "404", "409", "413", "421", "500", "502", "503"]
      )
      expect(Object.keys(result?.responses ?? {}).sort()).toEqual(
        ["200", "400", "401", "403", "404", "421", "500", "502"]
      )
      expect(checkpoint?.security).toEqual([{ bearer: [] }])
      expect(result?.security).toEqual([{ bearer: [] }])
      expect(spec.components.securitySchemes).toEqual({ bearer: { type: "http", scheme: "bearer" } })
      expect(spec.paths["/healthz"]?.get?.security ?? []).toEqual([])
    }))
})
