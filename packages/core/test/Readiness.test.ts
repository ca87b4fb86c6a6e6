import { Cluster, KubernetesApiError, Readiness, ResultStore } from "@checkpointer/core"
import type { Path } from "@effect/platform"
import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Fiber, Layer, Option, TestClock } from "effect"

type ApiBehaviour = "answers" | "refuses" | "hangs"

const readiness = (
  storageBasePath: string,
  api: ApiBehaviour,
  store: Layer.Layer<ResultStore, unknown, FileSystem.FileSystem | Path.Path> = ResultStore.File
) =>
  Readiness.Default.pipe(
    Layer.provide(store),
    Layer.provide(Layer.succeed(
      Cluster,
      Cluster.make({
        reviewToken: () => Effect.dieMessage("no token review here"),
        reviewAccess: () => Effect.dieMessage("no access review here"),
        recordPodEvent: () => Effect.dieMessage("no event here"),
        getPod: () => Effect.succeed(Option.none()),
        deletePod: () => Effect.void,
        createPod: () => Effect.dieMessage("no pod creation here"),
        podEvents: () => Effect.dieMessage("no events here"),
        checkpointerPodsOn: () =>
          api === "answers"
            ? Effect.succeed([])
            : api === "refuses"
            ? Effect.fail(new KubernetesApiError({ status: 403, message: "list pods: 403 forbidden" }))
            : Effect.never
      })
    )),
    Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
      new Map([
        ["CHECKPOINTER_NODE", "node-a"],
        ["STORAGE_BASE_PATH", storageBasePath]
      ])
    ))),
    Layer.provideMerge(NodeContext.layer)
  )

const check = Effect.flatMap(Readiness, (r) => r.check())

describe("Readiness", () => {
  it.scoped("is ready when the store is writable and the API server answers, and leaves no file behind", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped()
      yield* check.pipe(Effect.provide(readiness(dir, "answers")))
      expect(yield* fs.readDirectory(dir)).toEqual([])
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("names every failed check", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = `${yield* fs.makeTempDirectoryScoped()}/store`
      const failure = yield* Effect.gen(function*() {
        yield* fs.remove(dir, { recursive: true })
        return yield* Effect.flip(check)
      }).pipe(Effect.provide(readiness(dir, "refuses")))
      expect(failure.message).toMatch(new RegExp(`^result store not writable: cannot write in ${dir}: .*\\n`))
      expect(failure.message).toContain("API server not reachable: list pods: 403 forbidden")
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("gives up on an API server that does not answer within 3 s", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped()
      const failure = yield* Effect.gen(function*() {
        const fiber = yield* Effect.fork(Effect.flip(check))
        yield* TestClock.adjust("3 seconds")
        return yield* Fiber.join(fiber)
      }).pipe(
        // A store without disk I/O: the TestClock then times out the API server alone, never a write still under way.
        Effect.provide(readiness(dir, "hangs", ResultStore.Memory))
      )
      expect(failure.message).toBe("API server not reachable: no answer within 3s")
    }).pipe(Effect.provide(NodeContext.layer)))
})
