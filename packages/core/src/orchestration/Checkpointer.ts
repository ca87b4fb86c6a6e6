import { Cause, Clock, Data, Duration, Effect, Exit, Fiber, FiberMap, Option, Ref, Schedule } from "effect"
import { randomBytes } from "node:crypto"
import { checkpointsConfig } from "../config/Config.ts"
import { AsyncCheckpointAccepted, CheckpointResult, makeIdentifier, parseIdentifier } from "../domain/Domain.ts"
import type { CheckpointIdentifier, CheckpointOptions, CheckpointTag, ContainerRef } from "../domain/Domain.ts"
import type { ContainerMissing } from "../domain/Errors.ts"
import { PhaseFailed } from "../domain/Errors.ts"
import { Cluster } from "../kubernetes/Cluster.ts"
import { CheckpointDirectory } from "../node/CheckpointDirectory.ts"
import { KubeletService } from "../node/KubeletService.ts"
import { ImageBuilder } from "./ImageBuilder.ts"
import { ImageRetention } from "./ImageRetention.ts"
import * as Metrics from "./Metrics.ts"
import { PodEvents } from "./PodEvents.ts"
import { FailedRecord, PendingRecord, ResultStore, SucceededRecord } from "./ResultStore.ts"
import { operationSpan, phaseSpan } from "./Tracing.ts"

/** No checkpoint with this identifier was made on this node. */
export class CheckpointUnknown extends Data.TaggedError("CheckpointUnknown")<{ readonly message: string }> {}

/** A checkpoint of the same container is already running on this node. */
export class CheckpointConflict extends Data.TaggedError("CheckpointConflict")<{
  readonly running: CheckpointIdentifier
  readonly message: string
}> {}

/** The Checkpointer is shutting down and takes no new checkpoints. */
export class ShuttingDown extends Data.TaggedError("ShuttingDown")<{ readonly message: string }> {}

/** A checkpoint that ended in failure; the message is what its caller was (or would have been) told. */
export class CheckpointFailure extends Data.TaggedError("CheckpointFailure")<{ readonly message: string }> {}

const describeFailure = (error: ContainerMissing | PhaseFailed): string =>
  error._tag === "ContainerMissing" ? error.message : error.description

const unixSeconds = Clock.currentTimeMillis.pipe(Effect.map((millis) => Math.floor(millis / 1000)))

const deletePodTimeout = Duration.minutes(2)
/** Pushing a very large archive takes minutes; a registry that stops answering must not hold a checkpoint forever. */
const buildTimeout = Duration.minutes(30)
const sweepInterval = Duration.hours(1)

/** Runs checkpoints: kubelet, build/push, delete pod; keeps results; cleans up the archive in every outcome. */
export class Checkpointer extends Effect.Service<Checkpointer>()("checkpointer/Checkpointer", {
  scoped: Effect.gen(function*() {
    const config = yield* checkpointsConfig
    const kubelet = yield* KubeletService
    const builder = yield* ImageBuilder
    const cluster = yield* Cluster
    const store = yield* ResultStore
    const directory = yield* CheckpointDirectory
    const retention = yield* ImageRetention
    const events = yield* PodEvents
    const running = yield* FiberMap.make<CheckpointIdentifier, CheckpointResult, ContainerMissing | PhaseFailed>()
    const permits = yield* Effect.makeSemaphore(config.maxConcurrent)
    /** Containers being checkpointed on this node, with the identifier of their checkpoint. */
    const busy = yield* Ref.make(new Map<string, CheckpointIdentifier>())
    const accepting = yield* Ref.make(true)
    const interruption = yield* Ref.make("it was interrupted")

    const storeFailed = (message: string, cause: unknown) => new PhaseFailed({ phase: "result store", message, cause })

    const execute = (
      identifier: CheckpointIdentifier,
      tag: CheckpointTag,
      container: ContainerRef,
      options: CheckpointOptions,
      beginTimestamp: number
    ) =>
      Effect.gen(function*() {
        const startedAt = yield* Clock.currentTimeMillis
        const imageName = `${config.imagePrefix}:${tag}`
        const archive = yield* kubelet.checkpoint(container).pipe(
          Effect.flatMap(directory.claim),
          Effect.withLogSpan("kubelet"),
          Metrics.observePhase("kubelet"),
          phaseSpan("checkpoint", "kubelet"),
          Effect.tap((archive) =>
            Effect.logDebug("checkpoint archive written").pipe(Effect.annotateLogs({ archive: archive.path }))
          )
        )
        const image = yield* builder.build({ archive: archive.path, container, imageName }).pipe(
          Effect.mapError((error) =>
            new PhaseFailed({ phase: "build/push", step: error.step, message: error.message, cause: error })
          ),
          Effect.timeoutFail({
            duration: buildTimeout,
            onTimeout: () =>
              new PhaseFailed({ phase: "build/push", message: `not done within ${Duration.format(buildTimeout)}` })
          }),
          Effect.withLogSpan("build/push"),
          Metrics.observeBuild(builder.name),
          Effect.ensuring(directory.remove(archive)),
          phaseSpan("checkpoint", "build/push")
        )
        const seconds = ((yield* Clock.currentTimeMillis) - startedAt) / 1000
        yield* events.record(container, {
          type: "Normal",
          reason: "Checkpointed",
          message: `Checkpointed container ${container.container} into ${image.name} in ${seconds.toFixed(1)} s`
        })
        if (options.deletePod) {
          yield* cluster.deletePod(container.namespace, container.pod, deletePodTimeout).pipe(
            Effect.mapError((error) => new PhaseFailed({ phase: "delete pod", message: error.message, cause: error })),
            Effect.withLogSpan("delete pod"),
            Metrics.observePhase("delete pod"),
            phaseSpan("checkpoint", "delete pod")
          )
        }
        const result = new CheckpointResult({
          containerIdentifier: container,
          beginTimestamp,
          endTimestamp: yield* unixSeconds,
          containerImageName: image.name,
          containerImageDigest: image.digest
        })
        const pushedAtMillis = yield* Clock.currentTimeMillis
        yield* store.put(identifier, new SucceededRecord({ result, pushedAtMillis })).pipe(
          Effect.mapError((error) => storeFailed(error.message, error)),
          phaseSpan("checkpoint", "result store")
        )
        yield* Effect.logInfo("checkpoint succeeded").pipe(
          Effect.annotateLogs({ image: image.name, digest: image.digest, bytes: image.size })
        )
        yield* retention.checkpointed(container)
        return result
      }).pipe(
        Effect.scoped,
        Metrics.running,
        permits.withPermits(1),
        Effect.onExit((exit) =>
          Exit.isSuccess(exit) ? Effect.void : Effect.gen(function*() {
            const message = yield* Option.match(Cause.failureOption(exit.cause), {
              onNone: () => Effect.map(Ref.get(interruption), (why) => `checkpoint ${identifier} failed: ${why}`),
              onSome: (error) => Effect.succeed(describeFailure(error))
            })
            yield* Effect.logWarning("checkpoint failed").pipe(Effect.annotateLogs({ reason: message }))
            const missing = Cause.failureOption(exit.cause).pipe(Option.exists((e) => e._tag === "ContainerMissing"))
            if (!missing) yield* events.record(container, { type: "Warning", reason: "CheckpointFailed", message })
            yield* store.put(
              identifier,
              new FailedRecord({ container, beginTimestamp, endTimestamp: yield* unixSeconds, message })
            ).pipe(
              Effect.catchAll((error) =>
                Effect.logError("could not record the failure").pipe(Effect.annotateLogs({ error: error.message }))
              )
            )
          })
        ),
        Effect.ensuring(Ref.update(busy, (map) => {
          const next = new Map(map)
          next.delete(String(container))
          return next
        })),
        Effect.annotateLogs({ service: "Checkpointer", identifier, container: String(container) }),
        Metrics.observeCheckpoint(builder.name),
        operationSpan("checkpoint", identifier, {
          "checkpointer.container": String(container),
          "checkpointer.builder": builder.name,
          "checkpointer.delete_pod": options.deletePod,
          "checkpointer.async": options.async
        })
      )

    /** What a running checkpoint ends with; an interrupted one (shutdown) fails with the reason recorded for it. */
    const outcome = (
      identifier: CheckpointIdentifier,
      fiber: Fiber.Fiber<CheckpointResult, ContainerMissing | PhaseFailed>
    ) =>
      Effect.flatMap(
        Fiber.await(fiber),
        (exit) =>
          Exit.isSuccess(exit) ? Effect.succeed(exit.value) : Option.match(Cause.failureOption(exit.cause), {
            onSome: (error): Effect.Effect<never, ContainerMissing | PhaseFailed | CheckpointFailure> =>
              Effect.fail(error),
            onNone: () =>
              Effect.flatMap(
                Ref.get(interruption),
                (why) => Effect.fail(new CheckpointFailure({ message: `checkpoint ${identifier} failed: ${why}` }))
              )
          })
      )

    /** Records the checkpoint as pending and starts it in the background; it runs on if its caller goes away. */
    const start = Effect.fn("Checkpointer.start")(function*(container: ContainerRef, options: CheckpointOptions) {
      if (!(yield* Ref.get(accepting))) {
        return yield* new ShuttingDown({ message: `the Checkpointer on node ${config.node} is shutting down` })
      }
      const tag = randomBytes(8).toString("hex") as CheckpointTag
      const identifier = makeIdentifier(config.node, tag)
      const claimed = yield* Ref.modify(
        busy,
        (map): [Option.Option<CheckpointIdentifier>, Map<string, CheckpointIdentifier>] => {
          const other = map.get(String(container))
          return other === undefined
            ? [Option.none(), new Map(map).set(String(container), identifier)]
            : [Option.some(other), map]
        }
      )
      if (Option.isSome(claimed)) {
        return yield* new CheckpointConflict({
          running: claimed.value,
          message: `a checkpoint of ${container} is already running: ${claimed.value}`
        })
      }
      const beginTimestamp = yield* unixSeconds
      yield* store.put(identifier, new PendingRecord({ container, beginTimestamp })).pipe(
        Effect.mapError((error) => storeFailed(error.message, error)),
        Effect.tapError(() =>
          Ref.update(busy, (map) => {
            const next = new Map(map)
            next.delete(String(container))
            return next
          })
        )
      )
      const fiber = yield* FiberMap.run(
        running,
        identifier,
        execute(identifier, tag, container, options, beginTimestamp)
      )
      return { identifier, fiber }
    })

    const checkpoint = Effect.fn("Checkpointer.checkpoint")(
      function*(container: ContainerRef, options: CheckpointOptions) {
        const { fiber, identifier } = yield* start(container, options)
        if (options.async) return new AsyncCheckpointAccepted({ checkpointIdentifier: identifier })
        return yield* outcome(identifier, fiber)
      }
    )

    /** The result of a checkpoint made on this node; waits while it is still running. */
    const result = Effect.fn("Checkpointer.result")(function*(identifier: CheckpointIdentifier) {
      const active = yield* FiberMap.get(running, identifier).pipe(Effect.option)
      if (Option.isSome(active)) {
        return yield* outcome(identifier, active.value).pipe(
          Effect.mapError((error) =>
            error._tag === "CheckpointFailure" ? error : new CheckpointFailure({ message: describeFailure(error) })
          )
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
          return yield* new CheckpointFailure({ message: interruptedByRestart(identifier, config.node) })
      }
    })

    /**
     * Stops taking checkpoints, lets the running ones finish within `grace`, then interrupts the rest, which are
     * recorded as failed (their archives are removed as in any other outcome).
     */
    const drain = Effect.fn("Checkpointer.drain")(function*(grace: Duration.Duration) {
      yield* Ref.set(accepting, false)
      const inFlight = yield* FiberMap.size(running)
      yield* Effect.logInfo("shutting down").pipe(
        Effect.annotateLogs({ running: inFlight, grace: Duration.format(grace) })
      )
      // Shutdown runs in a finalizer, which is uninterruptible: the wait must be interruptible for the grace to end it.
      const finished = yield* FiberMap.awaitEmpty(running).pipe(
        Effect.interruptible,
        Effect.timeout(grace),
        Effect.option
      )
      if (Option.isNone(finished)) {
        yield* Ref.set(interruption, `interrupted by shutdown of the Checkpointer on node ${config.node}`)
        yield* FiberMap.clear(running)
      }
    })

    /**
     * Records left pending by an earlier process become failed; records older than RESULT_TTL are removed (after
     * their images, with IMAGE_RETENTION=with-result).
     */
    const sweep = Effect.gen(function*() {
      const now = yield* unixSeconds
      for (const { identifier, record } of yield* store.entries) {
        const finishedAt = record._tag === "Succeeded" ? record.result.endTimestamp : record.beginTimestamp
        if (now - finishedAt > config.resultTtlSeconds) {
          if (yield* retention.resultExpired(identifier, record)) yield* store.remove(identifier)
        } else if (record._tag === "Pending" && !(yield* FiberMap.has(running, identifier))) {
          yield* store.put(
            identifier,
            new FailedRecord({
              container: record.container,
              beginTimestamp: record.beginTimestamp,
              endTimestamp: now,
              message: interruptedByRestart(identifier, config.node)
            })
          )
        }
      }
    }).pipe(
      Effect.catchAll((error) =>
        Effect.logWarning("could not sweep the result store").pipe(
          Effect.annotateLogs({ error: error.message })
        )
      ),
      Effect.annotateLogs({ service: "Checkpointer" })
    )
    yield* sweep
    yield* Effect.forkScoped(Effect.repeat(sweep, Schedule.spaced(sweepInterval)))

    return { checkpoint, result, drain } as const
  })
}) {}

const interruptedByRestart = (identifier: CheckpointIdentifier, node: string) =>
  `checkpoint ${identifier} was interrupted by restart of the Checkpointer on node ${node}`
