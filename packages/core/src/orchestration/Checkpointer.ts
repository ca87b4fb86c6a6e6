import { Cause, Clock, Data, Duration, Effect, Exit, Fiber, FiberMap, Option, Ref, Schedule, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { checkpointsConfig } from "../config/Config.ts"
import { AsyncCheckpointAccepted, CheckpointResult, makeIdentifier, parseIdentifier } from "../domain/Domain.ts"
import type {
  CheckpointIdentifier,
  CheckpointOptions,
  CheckpointTag,
  ContainerRef,
  RestoreResult
} from "../domain/Domain.ts"
import type { ContainerMissing } from "../domain/Errors.ts"
import { PhaseFailed } from "../domain/Errors.ts"
import { encodePodRecord, PodRecord, podRecordAnnotation, recordPod } from "../domain/PodRecord.ts"
import { Cluster, podUid } from "../kubernetes/Cluster.ts"
import { CheckpointDirectory } from "../node/CheckpointDirectory.ts"
import { KubeletService } from "../node/KubeletService.ts"
import { ImageBuilder } from "./ImageBuilder.ts"
import { ImageRetention } from "./ImageRetention.ts"
import * as Metrics from "./Metrics.ts"
import { PodEvents } from "./PodEvents.ts"
import {
  FailedRecord,
  finishedAtOfRecord,
  PendingRecord,
  RestoreFailedRecord,
  ResultStore,
  SucceededRecord,
  unixSeconds
} from "./ResultStore.ts"
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

/** A record the pod record schema accepts (a pod without containers makes none). */
const validRecord = Schema.validateOption(PodRecord)

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
    const startedAt = yield* unixSeconds

    /**
     * The pod, read from the API server: what the image records of it, and its uid for the events. Without it the
     * checkpoint is still made (the process state matters more than the record); its image then restores only as a
     * pod given by hand.
     */
    const readPod = (container: ContainerRef) =>
      cluster.getPod(container.namespace, container.pod).pipe(
        Effect.tapError((error) =>
          Effect.logWarning("the pod could not be read; its image will not record it").pipe(
            Effect.annotateLogs({ error: error.message })
          )
        ),
        Effect.orElseSucceed(() => Option.none())
      )

    const execute = (
      identifier: CheckpointIdentifier,
      tag: CheckpointTag,
      container: ContainerRef,
      options: CheckpointOptions,
      beginTimestamp: number
    ) =>
      Effect.gen(function*() {
        const startedAtMillis = yield* Clock.currentTimeMillis
        const imageName = `${config.imagePrefix}:${tag}`
        const pod = yield* readPod(container)
        const record = Option.flatMap(pod, (found) => validRecord(recordPod(found, container.container)))
        const archive = yield* kubelet.checkpoint(container).pipe(
          Effect.flatMap(directory.claim),
          Effect.withLogSpan("kubelet"),
          Metrics.observePhase("kubelet"),
          phaseSpan("checkpoint", "kubelet"),
          Effect.tap((archive) =>
            Effect.logDebug("checkpoint archive written").pipe(Effect.annotateLogs({ archive: archive.path }))
          )
        )
        const annotations = Option.match(record, {
          onNone: () => ({}),
          onSome: (record) => ({ [podRecordAnnotation]: encodePodRecord(record) })
        })
        const image = yield* builder.build({ archive: archive.path, container, imageName, annotations }).pipe(
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
        const seconds = ((yield* Clock.currentTimeMillis) - startedAtMillis) / 1000
        yield* events.record({ ...container, uid: podUid(pod) }, {
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
        yield* store.put(
          identifier,
          new SucceededRecord({ result, pod: Option.getOrUndefined(record), pushedAtMillis })
        ).pipe(
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

    /** The result of a checkpoint (or a restore) made on this node; waits while a checkpoint is still running. */
    const result = Effect.fn("Checkpointer.result")(function*(
      identifier: CheckpointIdentifier
    ): Effect.fn.Return<CheckpointResult | RestoreResult, CheckpointFailure | CheckpointUnknown> {
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
        case "Restored":
          return record.value.result
        case "Failed":
        case "RestoreFailed":
          return yield* new CheckpointFailure({ message: record.value.message })
        case "Pending":
          return yield* new CheckpointFailure({ message: interruptedByRestart("checkpoint", identifier, config.node) })
        case "RestorePending":
          return yield* new CheckpointFailure({ message: interruptedByRestart("restore", identifier, config.node) })
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
     * Records left pending by an earlier process become failed (a pending restore is this process's when it began
     * after the process started); records older than RESULT_TTL are removed (after their images, with
     * IMAGE_RETENTION=with-result).
     */
    const sweep = Effect.gen(function*() {
      const now = yield* unixSeconds
      for (const { identifier, record } of yield* store.entries) {
        if (now - finishedAtOfRecord(record) > config.resultTtlSeconds) {
          if (yield* retention.resultExpired(identifier, record)) yield* store.remove(identifier)
        } else if (record._tag === "Pending" && !(yield* FiberMap.has(running, identifier))) {
          yield* store.put(
            identifier,
            new FailedRecord({
              container: record.container,
              beginTimestamp: record.beginTimestamp,
              endTimestamp: now,
              message: interruptedByRestart("checkpoint", identifier, config.node)
            })
          )
        } else if (record._tag === "RestorePending" && record.beginTimestamp < startedAt) {
          yield* store.put(
            identifier,
            new RestoreFailedRecord({
              namespace: record.namespace,
              pod: record.pod,
              beginTimestamp: record.beginTimestamp,
              endTimestamp: now,
              message: interruptedByRestart("restore", identifier, config.node)
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

const interruptedByRestart = (work: "checkpoint" | "restore", identifier: CheckpointIdentifier, node: string) =>
  `${work} ${identifier} was interrupted by restart of the Checkpointer on node ${node}`
