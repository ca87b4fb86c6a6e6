import { FileSystem } from "@effect/platform"
import { Cause, Clock, Data, Duration, Effect, Exit, Fiber, FiberMap, Option } from "effect"
import { randomBytes } from "node:crypto"
import { Cluster } from "./Cluster.ts"
import { CheckpointerConfig } from "./Config.ts"
import {
  AsyncCheckpointAccepted,
  CheckpointResult,
  makeIdentifier,
  parseIdentifier
} from "./Domain.ts"
import type { CheckpointIdentifier, CheckpointOptions, CheckpointTag, ContainerRef } from "./Domain.ts"
import type { ContainerMissing} from "./Errors.ts"
import { PhaseFailed } from "./Errors.ts"
import { ImageBuilder } from "./ImageBuilder.ts"
import { KubeletService } from "./KubeletService.ts"
import { FailedRecord, PendingRecord, ResultStore, SucceededRecord } from "./ResultStore.ts"

/** No checkpoint with this identifier was made on this node. */
export class CheckpointUnknown extends Data.TaggedError("CheckpointUnknown")<{ readonly message: string }> {}

/** A checkpoint that ended in failure; the message is what its caller was (or would have been) told. */
export class CheckpointFailure extends Data.TaggedError("CheckpointFailure")<{ readonly message: string }> {}

const describeFailure = (error: ContainerMissing | PhaseFailed): string =>
  error._tag === "ContainerMissing" ? error.message : error.description

const unixSeconds = Clock.currentTimeMillis.pipe(Effect.map((millis) => Math.floor(millis / 1000)))

const deletePodTimeout = Duration.minutes(2)

/** Runs checkpoints: kubelet, build/push, delete pod; keeps results; cleans up the archive in every outcome. */
export class Checkpointer extends Effect.Service<Checkpointer>()("checkpointer/Checkpointer", {
  scoped: Effect.gen(function*() {
    const config = yield* CheckpointerConfig
    const kubelet = yield* KubeletService
    const builder = yield* ImageBuilder
    const cluster = yield* Cluster
    const store = yield* ResultStore
    const fs = yield* FileSystem.FileSystem
    const running = yield* FiberMap.make<CheckpointIdentifier, CheckpointResult, ContainerMissing | PhaseFailed>()

    const storeFailed = (message: string, cause: unknown) =>
      new PhaseFailed({ phase: "result store", message, cause })

    const removeArchive = (archive: string) =>
      fs.remove(archive, { force: true }).pipe(
        Effect.tapError((error) =>
          Effect.logWarning("could not remove the checkpoint archive").pipe(
            Effect.annotateLogs({ archive, error: String(error) })
          )
        ),
        Effect.ignore
      )

    const execute = (
      identifier: CheckpointIdentifier,
      tag: CheckpointTag,
      container: ContainerRef,
      options: CheckpointOptions,
      beginTimestamp: number
    ) =>
      Effect.gen(function*() {
        const imageName = `${config.imagePrefix}:${tag}`
        const archive = yield* kubelet.checkpoint(container).pipe(
          Effect.withLogSpan("kubelet"),
          Effect.tap((archive) => Effect.logDebug("checkpoint archive written").pipe(Effect.annotateLogs({ archive })))
        )
        const image = yield* builder.build({ archive, container, imageName }).pipe(
          Effect.mapError((error) =>
            new PhaseFailed({ phase: "build/push", message: `${error.phase}: ${error.message}`, cause: error })
          ),
          Effect.withLogSpan("build/push"),
          Effect.ensuring(removeArchive(archive))
        )
        if (options.deletePod) {
          yield* cluster.deletePod(container.namespace, container.pod, deletePodTimeout).pipe(
            Effect.mapError((error) => new PhaseFailed({ phase: "delete pod", message: error.message, cause: error })),
            Effect.withLogSpan("delete pod")
          )
        }
        const result = new CheckpointResult({
          containerIdentifier: container,
          beginTimestamp,
          endTimestamp: yield* unixSeconds,
          containerImageName: image.name,
          containerImageDigest: image.digest
        })
        yield* store.put(identifier, new SucceededRecord({ result })).pipe(
          Effect.mapError((error) => storeFailed(error.message, error))
        )
        yield* Effect.logInfo("checkpoint succeeded").pipe(
          Effect.annotateLogs({ image: image.name, digest: image.digest, bytes: image.size })
        )
        return result
      }).pipe(
        Effect.onExit((exit) =>
          Exit.isSuccess(exit) ? Effect.void : Effect.gen(function*() {
            const message = Option.match(Cause.failureOption(exit.cause), {
              onNone: () => "checkpoint interrupted before it finished",
              onSome: describeFailure
            })
            yield* Effect.logWarning("checkpoint failed").pipe(Effect.annotateLogs({ reason: message }))
            yield* store.put(
              identifier,
              new FailedRecord({ container, beginTimestamp, endTimestamp: yield* unixSeconds, message })
            ).pipe(Effect.catchAll((error) =>
              Effect.logError("could not record the failure").pipe(Effect.annotateLogs({ error: error.message }))
            ))
          })
        ),
        Effect.annotateLogs({ service: "Checkpointer", identifier, container: String(container) })
      )

    /** Records the checkpoint as pending and starts it in the background; it runs to the end even if its caller goes away. */
    const start = Effect.fn("Checkpointer.start")(function*(container: ContainerRef, options: CheckpointOptions) {
      const tag = randomBytes(8).toString("hex") as CheckpointTag
      const identifier = makeIdentifier(config.node, tag)
      const beginTimestamp = yield* unixSeconds
      yield* store.put(identifier, new PendingRecord({ container, beginTimestamp })).pipe(
        Effect.mapError((error) => storeFailed(error.message, error))
      )
      const fiber = yield* FiberMap.run(running, identifier, execute(identifier, tag, container, options, beginTimestamp))
      return { identifier, fiber }
    })

    const checkpoint = Effect.fn("Checkpointer.checkpoint")(function*(container: ContainerRef, options: CheckpointOptions) {
      const { fiber, identifier } = yield* start(container, options)
      if (options.async) return new AsyncCheckpointAccepted({ checkpointIdentifier: identifier })
      return yield* Fiber.join(fiber)
    })

    /** The result of a checkpoint made on this node; waits while it is still running. */
    const result = Effect.fn("Checkpointer.result")(function*(identifier: CheckpointIdentifier) {
      const active = yield* FiberMap.get(running, identifier).pipe(Effect.option)
      if (Option.isSome(active)) {
        return yield* Fiber.join(active.value).pipe(
          Effect.mapError((error) => new CheckpointFailure({ message: describeFailure(error) }))
        )
      }
      const record = yield* store.get(identifier).pipe(
        Effect.mapError((error) => new CheckpointFailure({ message: error.message }))
      )
      if (Option.isNone(record)) {
        const { node } = parseIdentifier(identifier)
        return yield* new CheckpointUnknown({ message: `no checkpoint ${identifier} on node ${node}` })
      }
      switch (record.value._tag) {
        case "Succeeded":
          return record.value.result
        case "Failed":
          return yield* new CheckpointFailure({ message: record.value.message })
        case "Pending":
          return yield* new CheckpointFailure({
            message: `checkpoint ${identifier} was interrupted by restart of the Checkpointer on node ${config.node}`
          })
      }
    })

    return { checkpoint, result } as const
  })
}) {}
