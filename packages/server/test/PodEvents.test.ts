import { ImageBuildError } from "@checkpointer/core"
import type { PodEventRecord } from "@checkpointer/core"
import { HttpClient } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Ref, Schedule } from "effect"
import { call } from "./ServerCalls.ts"
import { onOwnServer, World } from "./TestLayers.ts"

const post = (path: string) =>
  Effect.flatMap(HttpClient.HttpClient, (client) => client.post(path)).pipe(
    Effect.flatMap((response) => Effect.map(response.text, (text) => ({ status: response.status, text })))
  )

/** The events written so far, once there are `count` (they are written in the background). */
const eventsWritten = (count: number) =>
  Effect.flatMap(World, (world) => Ref.get(world.podEvents)).pipe(
    Effect.filterOrFail((events) => events.length >= count),
    Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.intersect(Schedule.recurs(100))))
  )

const pods = {
  "default/counter": {
    metadata: { name: "counter", namespace: "default", uid: "uid-counter" },
    spec: { containers: [{ name: "main", image: "registry.test/counter:1" }] }
  }
}

describe("Kubernetes events", () => {
  it.live("a checkpoint leaves Checkpointed on its pod and container (uid, image, seconds, this node)", () =>
    Effect.gen(function*() {
      const done = yield* post("/checkpoint/default/counter/main")
      expect(done.status).toBe(201)
      const image: string = JSON.parse(done.text).containerImageName
      const [event] = yield* eventsWritten(1)
      expect(event).toEqual(
        {
          namespace: "default",
          pod: "counter",
          uid: "uid-counter",
          container: "main",
          type: "Normal",
          reason: "Checkpointed",
          message: expect.stringMatching(new RegExp(`^Checkpointed container main into ${image} in \\d+\\.\\d s$`)),
          node: "node-a"
        } satisfies PodEventRecord
      )
    }).pipe(onOwnServer({ cluster: { pods } })))

  it.live("a failed checkpoint leaves a CheckpointFailed warning with the 500's text; a missing container none", () =>
    Effect.gen(function*() {
      const world = yield* World
      yield* Ref.set(world.missingContainers, new Set(["gone"]))
      yield* Ref.set(world.buildBehaviour, () => Effect.fail(new ImageBuildError({ step: "push", message: "denied" })))
      expect((yield* post("/checkpoint/default/counter/gone")).status).toBe(404)
      const failed = yield* post("/checkpoint/default/counter/main")
      expect(failed.status).toBe(500)
      const events = yield* eventsWritten(1)
      expect(events.map(({ container, message, reason, type }) => ({ container, type, reason, message }))).toEqual([
        { container: "main", type: "Warning", reason: "CheckpointFailed", message: failed.text }
      ])
    }).pipe(onOwnServer({ cluster: { pods } })))

  it.live("a restore leaves Restored on the restored pod (its uid, the image, seconds)", () =>
    Effect.gen(function*() {
      const done = yield* post("/checkpoint/default/counter/main")
      expect(done.status).toBe(201)
      const image: string = JSON.parse(done.text).containerImageName
      const restored = yield* call("POST", "/restore", { body: { image, pod: "counter-again" } })
      expect(restored.status, restored.text).toBe(201)
      const events = yield* eventsWritten(2)
      expect(events.find((event) => event.reason === "Restored")).toEqual(
        {
          namespace: "default",
          pod: "counter-again",
          uid: "uid-counter-again",
          container: "main",
          type: "Normal",
          reason: "Restored",
          message: expect.stringMatching(new RegExp(`^Restored container main from ${image} in \\d+\\.\\d s$`)),
          node: "node-a"
        } satisfies PodEventRecord
      )
    }).pipe(onOwnServer({ cluster: { pods } })))

  it.live("an event that cannot be written neither fails nor delays the checkpoint", () =>
    Effect.gen(function*() {
      const done = yield* post("/checkpoint/default/counter/main")
      expect(done.status).toBe(201)
      expect(yield* Effect.flatMap(World, (world) => Ref.get(world.podEvents))).toEqual([])
    }).pipe(onOwnServer({ cluster: { pods, unreachable: true } })))
})
