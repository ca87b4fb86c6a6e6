import { FileSystem } from "@effect/platform"
import { expect, layer } from "@effect/vitest"
import { Clock, Effect } from "effect"
import { expectNoArchiveLeft, podEvents, tagOf } from "./Expectations.ts"
import { startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { Stack } from "./harness/LocalStack.ts"
import { getResult, postCheckpoint } from "./HttpCalls.ts"

const clients = 20
const requestsPerClient = 10
const MiB = 1024 * 1024

describeE2E("load", () => {
  layer(Stack.layer({ registryAuth: "htpasswd" }), { excludeTestServices: true, timeout: "600 seconds" })((it) => {
    it.scoped(
      `${clients * requestsPerClient} mixed sync/async checkpoints from ${clients} concurrent clients ` +
        "lose no result",
      () =>
        Effect.gen(function*() {
          const stack = yield* Stack
          const fs = yield* FileSystem.FileSystem
          const server = stack.checkpointer
          yield* Effect.forEach(
            Array.from({ length: clients }, (_, i) => i),
            (i) => startCounterPod(stack.cluster, { namespace: "default", name: `load-${i}`, nodeName: "node-a" }),
            { concurrency: 4 }
          )
          const rssBefore = server.peakRss()
          const started = yield* Clock.currentTimeMillis
          // Each client checkpoints its own pod, alternating sync and async (waiting for the async result via GET).
          const images = yield* Effect.forEach(
            Array.from({ length: clients }, (_, i) => i),
            (i) =>
              Effect.forEach(Array.from({ length: requestsPerClient }, (_, n) => n), (n) =>
                Effect.gen(function*() {
                  const path = `default/load-${i}/counter`
                  if (n % 2 === 0) {
                    const done = yield* postCheckpoint(server.url, path)
                    expect(done.status, done.text).toBe(201)
                    return JSON.parse(done.text).containerImageName as string
                  }
                  const accepted = yield* postCheckpoint(server.url, path, { async: true })
                  expect(accepted.status, accepted.text).toBe(202)
                  const { checkpointIdentifier } = JSON.parse(accepted.text)
                  const result = yield* getResult(server.url, checkpointIdentifier)
                  expect(result.status, result.text).toBe(200)
                  return JSON.parse(result.text).containerImageName as string
                })),
            { concurrency: clients }
          )
          const seconds = ((yield* Clock.currentTimeMillis) - started) / 1000
          const all = images.flat()
          expect(all).toHaveLength(clients * requestsPerClient)
          expect(new Set(all).size).toBe(all.length)
          const tags = new Set(yield* stack.registry.tags("checkpoints/counter"))
          expect(all.filter((image) => !tags.has(tagOf(image)))).toEqual([])
          const stored = (yield* fs.readDirectory(server.env.STORAGE_BASE_PATH!)).filter((name) =>
            name.endsWith(".json")
          )
          expect(stored.length).toBeGreaterThanOrEqual(all.length)
          yield* expectNoArchiveLeft(stack.node.checkpointsDir)
          const events = yield* podEvents(stack.cluster, "default", "load-0", requestsPerClient)
          expect(events.filter((event) => event.reason === "Checkpointed")).toHaveLength(requestsPerClient)
          const peak = server.peakRss()
          yield* Effect.log(
            `${all.length} checkpoints in ${seconds.toFixed(1)} s (${(all.length / seconds).toFixed(1)}/s), ` +
              `server peak RSS ${(rssBefore / MiB).toFixed(0)} MiB before, ${(peak / MiB).toFixed(0)} MiB after`
          )
          // With Kubernetes events and the pod read for the image's record: 151 MiB before the compile cache (one run
          // alone), 130 to 150 MiB with it and two malloc arenas, 128 to 130 MiB with one (MALLOC_ARENA_MAX=1).
          expect(peak).toBeLessThan(150 * MiB)
        }),
      560_000
    )
  })
})
