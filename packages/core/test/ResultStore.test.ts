import {
  CheckpointResult,
  ContainerRef,
  FailedRecord,
  PendingRecord,
  ResultStore,
  SucceededRecord
} from "@checkpointer/core"
import type { CheckpointIdentifier } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Layer, Option } from "effect"

const container = ContainerRef.make({ namespace: "default", pod: "counter", container: "main" } as never)
const identifier = "node-a:0123456789abcdef" as CheckpointIdentifier

const fileStore = (dir: string) =>
  ResultStore.File.pipe(
    Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map([["STORAGE_BASE_PATH", dir]])))),
    Layer.provide(NodeContext.layer)
  )

describe("ResultStore.File", () => {
  it.scoped("keeps results across restarts, atomically, with the failure message", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = `${yield* fs.makeTempDirectoryScoped()}/store`
      const result = new CheckpointResult({
        containerIdentifier: container,
        beginTimestamp: 1,
        endTimestamp: 2,
        containerImageName: "r/x:0123456789abcdef"
      })
      yield* Effect.gen(function*() {
        const store = yield* ResultStore
        yield* store.put(identifier, new PendingRecord({ container, beginTimestamp: 1 }))
        yield* store.put(identifier, new SucceededRecord({ result }))
        yield* store.put(
          "node-a:fedcba9876543210" as CheckpointIdentifier,
          new FailedRecord({
            container,
            beginTimestamp: 1,
            endTimestamp: 2,
            message: "failed in phase \"kubelet\": boom"
          })
        )
      }).pipe(Effect.provide(fileStore(dir)))

      // A new store over the same directory: what a restarted server sees.
      const [succeeded, failed, unknown] = yield* Effect.gen(function*() {
        const store = yield* ResultStore
        return yield* Effect.all([
          store.get(identifier),
          store.get("node-a:fedcba9876543210" as CheckpointIdentifier),
          store.get("node-a:1111111111111111" as CheckpointIdentifier)
        ])
      }).pipe(Effect.provide(fileStore(dir)))
      expect(Option.getOrThrow(succeeded)).toEqual(new SucceededRecord({ result }))
      expect(Option.getOrThrow(failed)).toMatchObject({ _tag: "Failed", message: "failed in phase \"kubelet\": boom" })
      expect(Option.isNone(unknown)).toBe(true)
      expect((yield* fs.readDirectory(dir)).sort()).toEqual([
        "node-a:0123456789abcdef.json",
        "node-a:fedcba9876543210.json"
      ])
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("answers a clear error for a corrupt record", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped()
      yield* fs.writeFileString(`${dir}/${identifier}.json`, "{not json")
      const error = yield* Effect.flip(
        Effect.flatMap(ResultStore, (store) => store.get(identifier)).pipe(Effect.provide(fileStore(dir)))
      )
      expect(error.message).toBe(`the stored result of ${identifier} is corrupt`)
    }).pipe(Effect.provide(NodeContext.layer)))
})
