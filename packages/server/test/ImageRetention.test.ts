import {
  Checkpointer,
  ContainerRef,
  ImageRemovalError,
  ImageRemover,
  ImageRetention,
  ResultStore
} from "@checkpointer/core"
import type { CheckpointResult, ImageRemoval, PushedImage } from "@checkpointer/core"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Logger, Option, Ref, TestClock } from "effect"
import { makeCheckpointerTest } from "./TestLayers.ts"

/** What the registry was asked to delete, and how it answers the next deletes. */
class Registry extends Effect.Service<Registry>()("test/RetentionRegistry", {
  effect: Effect.gen(function*() {
    return {
      removed: yield* Ref.make<ReadonlyArray<PushedImage>>([]),
      answer: yield* Ref.make<Effect.Effect<ImageRemoval, ImageRemovalError>>(Effect.succeed("deleted")),
      logs: yield* Ref.make<ReadonlyArray<string>>([])
    }
  })
}) {}

const recordingRemover = (registry: Registry) =>
  Layer.succeed(
    ImageRemover,
    ImageRemover.of({
      remove: (image) =>
        Ref.update(registry.removed, (all) => [...all, image]).pipe(
          Effect.zipRight(Effect.flatten(Ref.get(registry.answer)))
        )
    })
  )

const collectedLogs = (registry: Registry) =>
  Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ message }) => {
      const text = Array.isArray(message) ? message.join(" ") : String(message)
      Effect.runSync(Ref.update(registry.logs, (all) => [...all, text]))
    })
  )

/** The Checkpointer with fakes, retention as `environment` says, deletes recorded by Registry, logs collected. */
const withRetention =
  (environment: Readonly<Record<string, string>>) =>
  <A, E>(test: Effect.Effect<A, E, Checkpointer | ResultStore | Registry>) =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const retention = ImageRetention.layer(recordingRemover(registry))
      return yield* test.pipe(
        Effect.provide(makeCheckpointerTest({ environment, retention })),
        Effect.provide(collectedLogs(registry))
      )
    }).pipe(Effect.provide(Registry.Default))

const containerOf = (container: string) => ContainerRef.make({ namespace: "default", pod: "web", container } as never)

const checkpoint = (container: string) =>
  Effect.flatMap(
    Checkpointer,
    (checkpointer) => checkpointer.checkpoint(containerOf(container), { deletePod: false, async: false })
  ).pipe(
    Effect.map((result) => result as CheckpointResult)
  )

const removedNames = Effect.flatMap(Registry, (registry) => Ref.get(registry.removed)).pipe(
  Effect.map((images) => images.map((image) => image.name))
)

/** Lets the retention's background fibers run. */
const settle = Effect.repeatN(Effect.yieldNow(), 50)

const hourly = "1 hour"

describe("image retention", () => {
  it.effect("keep (the default): images stay when their results expire", () =>
    Effect.gen(function*() {
      yield* checkpoint("main")
      yield* TestClock.adjust(hourly)
      expect(yield* Effect.flatMap(ResultStore, (store) => store.entries)).toEqual([])
      expect(yield* removedNames).toEqual([])
    }).pipe(withRetention({ RESULT_TTL: "60" })))

  it.effect("with-result: the image, with its digest, is deleted when its result expires, then the result", () =>
    Effect.gen(function*() {
      const result = yield* checkpoint("main")
      yield* TestClock.adjust("30 seconds")
      const younger = yield* checkpoint("other")
      yield* TestClock.adjust(hourly)
      const registry = yield* Registry
      expect(yield* Ref.get(registry.removed)).toEqual([
        { name: result.containerImageName, digest: result.containerImageDigest },
        { name: younger.containerImageName, digest: younger.containerImageDigest }
      ])
      expect(yield* Effect.flatMap(ResultStore, (store) => store.entries)).toEqual([])
    }).pipe(withRetention({ IMAGE_RETENTION: "with-result", RESULT_TTL: "60" })))

  it.effect("with-result: a failed delete keeps the result, and is tried again at the next sweep", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      const result = yield* checkpoint("main")
      yield* Ref.set(registry.answer, new ImageRemovalError({ message: "registry unreachable", unsupported: false }))
      yield* TestClock.adjust(hourly)
      const store = yield* ResultStore
      expect((yield* store.entries).length).toBe(1)
      expect(yield* Ref.get(registry.logs)).toContain("could not delete an image; tried again later")
      yield* Ref.set(registry.answer, Effect.succeed("deleted"))
      yield* TestClock.adjust(hourly)
      expect(yield* removedNames).toEqual([result.containerImageName, result.containerImageName])
      expect(yield* store.entries).toEqual([])
    }).pipe(withRetention({ IMAGE_RETENTION: "with-result", RESULT_TTL: "60" })))

  it.effect("a registry without deletes is reported once; results still expire and no delete is tried again", () =>
    Effect.gen(function*() {
      const registry = yield* Registry
      yield* Ref.set(
        registry.answer,
        new ImageRemovalError({ message: "405 UNSUPPORTED", unsupported: true })
      )
      yield* checkpoint("main")
      yield* checkpoint("other")
      yield* TestClock.adjust(hourly)
      expect((yield* removedNames).length).toBe(1)
      const reports = (yield* Ref.get(registry.logs)).filter((line) => line.includes("does not delete images"))
      expect(reports).toEqual([expect.stringContaining("IMAGE_RETENTION=keep")])
      expect(yield* Effect.flatMap(ResultStore, (store) => store.entries)).toEqual([])
    }).pipe(withRetention({ IMAGE_RETENTION: "with-result", RESULT_TTL: "60" })))

  it.effect("MAX_CHECKPOINTS_PER_CONTAINER: the container's oldest images beyond the cap go; results stay", () =>
    Effect.gen(function*() {
      const later = (container: string) => Effect.zipLeft(checkpoint(container), TestClock.adjust("1 second"))
      const first = yield* later("main")
      yield* later("other")
      const second = yield* later("main")
      yield* later("main")
      yield* settle
      expect(yield* removedNames).toEqual([first.containerImageName])
      yield* later("main")
      yield* settle
      expect(yield* removedNames).toEqual([first.containerImageName, second.containerImageName])

      const records = yield* Effect.flatMap(ResultStore, (store) => store.entries)
      expect(records.length).toBe(5)
      const deleted = records.flatMap(({ record }) =>
        record._tag === "Succeeded" && record.imageDeleted === true ? [record.result.containerImageName] : []
      )
      expect(deleted.sort()).toEqual([first.containerImageName, second.containerImageName].sort())
      const identifier = records.find(({ record }) =>
        record._tag === "Succeeded" && record.result.containerImageName === first.containerImageName
      )!.identifier
      expect(
        yield* Effect.flatMap(Checkpointer, (checkpointer) =>
          checkpointer.result(identifier))
      ).toEqual(first)
      expect(Option.isSome(yield* Effect.flatMap(ResultStore, (store) => store.get(identifier)))).toBe(true)
    }).pipe(withRetention({ MAX_CHECKPOINTS_PER_CONTAINER: "2" })))
})
