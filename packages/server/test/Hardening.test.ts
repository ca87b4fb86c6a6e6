import {
  checkpointDirConfig,
  Checkpointer,
  CheckpointIdentifier,
  CheckpointResult,
  ContainerRef,
  Metrics,
  PendingRecord,
  ResultStore,
  SucceededRecord
} from "@checkpointer/core"
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { FileSystem } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Fiber, Layer, Metric, Option, Queue, Ref, Schedule, Schema } from "effect"
import { onOwnServer, World } from "./TestLayers.ts"

const container = Schema.decodeUnknownSync(ContainerRef)({ namespace: "default", pod: "counter", container: "main" })
const expired = CheckpointIdentifier.make("node-a:1111111111111111")
const leftPending = CheckpointIdentifier.make("node-a:2222222222222222")

/** A store as a previous process left it: an expired result and a checkpoint that never finished. */
const StoreFromBefore = Layer.effect(
  ResultStore,
  Effect.gen(function*() {
    const store = yield* ResultStore
    const result = new CheckpointResult({
      containerIdentifier: container,
      beginTimestamp: 1,
      endTimestamp: 2,
      containerImageName: "registry.test/checkpoints:1111111111111111"
    })
    yield* store.put(expired, new SucceededRecord({ result }))
    yield* store.put(leftPending, new PendingRecord({ container, beginTimestamp: Math.floor(Date.now() / 1000) }))
    return store
  })
).pipe(Layer.provide(ResultStore.Memory))

const send = (request: HttpClientRequest.HttpClientRequest) =>
  Effect.gen(function*() {
    const response = yield* (yield* HttpClient.HttpClient).execute(request)
    return { status: response.status, text: yield* response.text }
  })
const post = (path: string, body?: unknown) =>
  send(
    body === undefined
      ? HttpClientRequest.post(path)
      : HttpClientRequest.bodyText(HttpClientRequest.post(path), JSON.stringify(body), "application/json")
  )
const get = (path: string) => send(HttpClientRequest.get(path))

/** Holds every build until `release` is run; `started` takes the pod of each build as it starts. */
const holdBuilds = Effect.gen(function*() {
  const world = yield* World
  const release = yield* Deferred.make<void>()
  const started = yield* Queue.unbounded<string>()
  yield* Ref.set(
    world.buildBehaviour,
    (build) => Queue.offer(started, build.container.pod).pipe(Effect.zipRight(Deferred.await(release)))
  )
  return { release: Deferred.succeed(release, undefined), started }
})

/** Waits until `checkpoints_queued` is `count` (it is one gauge for the process; tests of this file run one by one). */
const queuedReaches = (count: number) =>
  Metric.value(Metrics.queued).pipe(
    Effect.filterOrFail((state) => state.value === count),
    Effect.retry(Schedule.spaced("10 millis").pipe(Schedule.upTo("10 seconds")))
  )

describe("hardening", () => {
  it.live("at startup, records left pending become 'interrupted by restart' and expired ones are removed", () =>
    Effect.gen(function*() {
      const store = yield* ResultStore
      expect((yield* store.get(leftPending))._tag).toBe("Some")
      const pending = yield* get(`/checkpoint?checkpointIdentifier=${leftPending}`)
      expect(pending.status).toBe(500)
      expect(pending.text).toContain("interrupted by restart")
      const record = yield* store.get(leftPending)
      expect(record).toMatchObject({ value: { _tag: "Failed" } })
      expect((yield* get(`/checkpoint?checkpointIdentifier=${expired}`)).status).toBe(404)
    }).pipe(onOwnServer({ store: StoreFromBefore })))

  it.live("a second checkpoint of a container that is being checkpointed answers 409 with the running identifier", () =>
    Effect.gen(function*() {
      const { release } = yield* holdBuilds
      const first = yield* post("/checkpoint/default/busy/main", { async: true })
      const { checkpointIdentifier } = JSON.parse(first.text)
      const second = yield* post("/checkpoint/default/busy/main")
      expect(second.status).toBe(409)
      expect(second.text).toBe(`a checkpoint of default/busy/main is already running: ${checkpointIdentifier}`)
      const other = yield* post("/checkpoint/default/other/main", { async: true })
      expect(other.status).toBe(202)
      yield* release
      expect((yield* get(`/checkpoint?checkpointIdentifier=${checkpointIdentifier}`)).status).toBe(200)
      expect((yield* post("/checkpoint/default/busy/main")).status).toBe(201)
    }).pipe(onOwnServer({ store: StoreFromBefore })))

  it.live("no more than MAX_CONCURRENT_CHECKPOINTS (2) run at once; the others wait their turn and finish", () =>
    Effect.gen(function*() {
      const world = yield* World
      const { release, started } = yield* holdBuilds
      const identifiers = yield* Effect.forEach(
        ["q1", "q2", "q3", "q4"],
        (pod) =>
          Effect.map(
            post(`/checkpoint/default/${pod}/main`, { async: true }),
            (answer) => JSON.parse(answer.text).checkpointIdentifier as string
          )
      )
      const waiting = yield* Effect.fork(get(`/checkpoint?checkpointIdentifier=${identifiers[3]}`))
      yield* Queue.takeN(started, 2)
      yield* queuedReaches(2)
      expect((yield* Ref.get(world.builds)).length).toBe(2)
      expect(yield* Queue.size(started)).toBe(0)
      expect(yield* Fiber.poll(waiting)).toMatchObject({ _tag: "None" })
      yield* release
      expect((yield* Fiber.join(waiting)).status).toBe(200)
      for (const identifier of identifiers) {
        expect((yield* get(`/checkpoint?checkpointIdentifier=${identifier}`)).status).toBe(200)
      }
    }).pipe(onOwnServer({ store: StoreFromBefore })))

  it.live("an archive path outside KUBELET_CHECKPOINT_DIR, a symbolic link or '..' fails in phase kubelet", () =>
    Effect.gen(function*() {
      const world = yield* World
      const fs = yield* FileSystem.FileSystem
      const dir = yield* checkpointDirConfig
      const outside = yield* fs.makeTempDirectoryScoped({ prefix: "outside-" })
      yield* fs.writeFileString(`${outside}/secret`, "not an archive")
      yield* fs.symlink(`${outside}/secret`, `${dir}/checkpoint-link.tar`)
      const buildsBefore = (yield* Ref.get(world.builds)).length
      for (const path of [`${outside}/secret`, `${dir}/checkpoint-link.tar`, `${dir}/../${outside}/secret`]) {
        yield* Ref.set(world.kubeletLie, Option.some(() => path))
        const answer = yield* post("/checkpoint/default/liar/main")
        expect(answer.status, path).toBe(500)
        expect(answer.text, path).toMatch(/^checkpoint failed in phase "kubelet": refused the archive path/)
        expect(answer.text, path).toContain(JSON.stringify(path))
      }
      yield* Ref.set(world.kubeletLie, Option.none())
      expect((yield* Ref.get(world.builds)).length).toBe(buildsBefore)
      expect(yield* fs.readFileString(`${outside}/secret`)).toBe("not an archive")
      expect(yield* fs.readLink(`${dir}/checkpoint-link.tar`)).toBe(`${outside}/secret`)
      yield* fs.remove(`${dir}/checkpoint-link.tar`)
    }).pipe(onOwnServer({ store: StoreFromBefore })))

  it.live("a body over 64 KiB answers 413", () =>
    Effect.gen(function*() {
      const answer = yield* post("/checkpoint/default/counter/main", { pad: "x".repeat(70 * 1024) })
      expect(answer.status).toBe(413)
      expect(answer.text).toBe("request body is larger than 65536 bytes")
    }).pipe(onOwnServer({ store: StoreFromBefore })))

  it.live("while shutting down, new checkpoints answer 503 and results are still served", () =>
    Effect.gen(function*() {
      const done = yield* post("/checkpoint/default/last/main")
      expect(done.status).toBe(201)
      const checkpointer = yield* Checkpointer
      yield* checkpointer.drain(Duration.zero)
      const refused = yield* post("/checkpoint/default/late/main")
      expect(refused.status).toBe(503)
      expect(refused.text).toContain("shutting down")
    }).pipe(onOwnServer({ store: StoreFromBefore })))
})
