import type { V1ContainerStatus, V1Pod } from "@kubernetes/client-node"
import { Cause, Clock, Data, Duration, Effect, Exit, Fiber, FiberMap, Option, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { checkpointsConfig } from "../config/Config.ts"
import {
  AsyncCheckpointAccepted,
  makeIdentifier,
  Namespace,
  NodeName,
  parseIdentifier,
  PodName,
  RestoreResult
} from "../domain/Domain.ts"
import type { CheckpointIdentifier, CheckpointTag, ContainerName, RestoreRequest } from "../domain/Domain.ts"
import { RestoreFailed } from "../domain/Errors.ts"
import type { RestorePhase } from "../domain/Errors.ts"
import type { PodRecord } from "../domain/PodRecord.ts"
import { restoredPod } from "../domain/PodRecord.ts"
import { Cluster } from "../kubernetes/Cluster.ts"
import { Checkpointer, CheckpointFailure } from "./Checkpointer.ts"
import { CheckpointImages } from "./CheckpointImages.ts"
import * as Metrics from "./Metrics.ts"
import { PodEvents } from "./PodEvents.ts"
import { RestoredRecord, RestoreFailedRecord, RestorePendingRecord, ResultStore, unixSeconds } from "./ResultStore.ts"
import { operationSpan, phaseSpan } from "./Tracing.ts"

/** The checkpoint or image to restore does not exist (or the checkpoint failed and has no image). */
export class RestoreSourceMissing extends Data.TaggedError("RestoreSourceMissing")<{ readonly message: string }> {}

/** The image cannot be restored: not an image name, or not a checkpoint image that records its pod. */
export class RestoreInvalid extends Data.TaggedError("RestoreInvalid")<{ readonly message: string }> {}

/** A pod with the restored pod's name already exists. */
export class RestoreConflict extends Data.TaggedError("RestoreConflict")<{ readonly message: string }> {}

/** What a restore will do, known before anything is created (so that the caller can be authorized for it). */
export interface RestorePlan {
  readonly image: string
  readonly record: PodRecord
  /** The pod to create. */
  readonly pod: V1Pod
  readonly namespace: Namespace
  readonly name: PodName
  readonly container: ContainerName
  /** Literal env values the image left out that no live pod gave (`container/variable`). */
  readonly omittedEnv: ReadonlyArray<string>
}

const schedulingTimeout = Duration.minutes(2)
/** Pulling a large checkpoint image and restoring its memory take minutes. */
const startTimeout = Duration.minutes(15)
const pollInterval = Duration.millis(500)
const deleteTimeout = Duration.minutes(2)
const shownEvents = 10

const pullFailures: ReadonlySet<string> = new Set([
  "ErrImagePull",
  "ImagePullBackOff",
  "InvalidImageName",
  "ErrImageNeverPull",
  "RegistryUnavailable",
  "SignatureValidationFailed"
])
const startFailures: ReadonlySet<string> = new Set([
  "CreateContainerError",
  "CreateContainerConfigError",
  "RunContainerError",
  "CrashLoopBackOff",
  "CreatePodSandboxError",
  "PreStartHookError"
])

/** A label value (at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both ends) naming the image. */
const labelValueOf = (image: string) =>
  (image.slice(image.lastIndexOf(":") + 1).split("@")[0] ?? "").replace(/[^A-Za-z0-9_.-]/g, "-").slice(0, 63)
    .replace(/^[^A-Za-z0-9]+|[^A-Za-z0-9]+$/g, "")

const defaultName = (original: string) =>
  `${original.slice(0, 253 - "-restored-".length - 6).replace(/[-.]+$/, "")}-restored-${randomBytes(3).toString("hex")}`

/** One phase of a restore: timed in restore_phase_duration_seconds, and a span of its own. */
const restorePhase =
  (phase: Parameters<typeof Metrics.observeRestorePhase>[0]) =>
  <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    self.pipe(Metrics.observeRestorePhase(phase), phaseSpan("restore", phase))

/** How the restored container stands: running, still starting, or failed in a phase. */
const progressOf = (pod: V1Pod, container: string):
  | { readonly _tag: "Running"; readonly node: string }
  | { readonly _tag: "Starting" }
  | { readonly _tag: "Failed"; readonly phase: RestorePhase; readonly message: string } =>
{
  const status: V1ContainerStatus | undefined = pod.status?.containerStatuses?.find((each) => each.name === container)
  const waiting = status?.state?.waiting
  const terminated = status?.state?.terminated
  const detail = (reason: string | undefined, message: string | undefined) =>
    `${reason ?? "unknown"}${message === undefined || message === "" ? "" : `: ${message}`}`
  if (status?.state?.running !== undefined) return { _tag: "Running", node: pod.spec?.nodeName ?? "" }
  if (terminated !== undefined) {
    return {
      _tag: "Failed",
      phase: "restore",
      message: `container ${container} exited with code ${terminated.exitCode} (${
        detail(terminated.reason, terminated.message)
      })`
    }
  }
  if (waiting?.reason !== undefined && pullFailures.has(waiting.reason)) {
    return { _tag: "Failed", phase: "image pull", message: detail(waiting.reason, waiting.message) }
  }
  if (waiting?.reason !== undefined && startFailures.has(waiting.reason)) {
    return { _tag: "Failed", phase: "restore", message: detail(waiting.reason, waiting.message) }
  }
  if (pod.status?.phase === "Failed") {
    return { _tag: "Failed", phase: "restore", message: detail(pod.status.reason, pod.status.message) }
  }
  return { _tag: "Starting" }
}

/**
 * Restores checkpoints: a checkpoint image (from an identifier of this cluster or its name) becomes a pod again, the
 * recorded pod with the checkpointed container running the image, which the node's runtime restores. Served by any
 * Checkpointer: it needs only the registry and the API server.
 */
export class Restorer extends Effect.Service<Restorer>()("checkpointer/Restorer", {
  scoped: Effect.gen(function*() {
    const config = yield* checkpointsConfig
    const images = yield* CheckpointImages
    const cluster = yield* Cluster
    const kubernetesEvents = yield* PodEvents
    const store = yield* ResultStore
    const checkpointer = yield* Checkpointer
    const running = yield* FiberMap.make<CheckpointIdentifier, RestoreResult, RestoreConflict | RestoreFailed>()

    /**
     * The image of a checkpoint: its tag is the identifier's; on the node that made it, its result is awaited first (a
     * running checkpoint, a failed one). A result this node no longer has (RESULT_TTL) still leaves the image.
     */
    const imageOfCheckpoint = (identifier: CheckpointIdentifier) => {
      const { node, tag } = parseIdentifier(identifier)
      const byTag = `${config.imagePrefix}:${tag}`
      if (node !== config.node) return Effect.succeed(byTag)
      return checkpointer.result(identifier).pipe(
        Effect.flatMap((result) =>
          result instanceof RestoreResult
            ? Effect.fail(new RestoreInvalid({ message: `${identifier} is a restore, not a checkpoint` }))
            : Effect.succeed(result.containerImageName)
        ),
        Effect.catchTags({
          CheckpointUnknown: () => Effect.succeed(byTag),
          CheckpointFailure: (error) =>
            Effect.fail(new RestoreSourceMissing({ message: `${identifier} has no image: ${error.message}` }))
        })
      )
    }

    /** Literal env values of the live pod the record was made from, for the variables the record left out. */
    const liveEnv = (record: PodRecord) =>
      record.omittedEnv.length === 0 ? Effect.succeed({}) : cluster.getPod(
        record.metadata.namespace,
        record.metadata.name
      ).pipe(
        Effect.map(Option.match({
          onNone: () => ({}),
          onSome: (pod) =>
            Object.fromEntries(
              [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].flatMap((container) =>
                (container.env ?? []).flatMap((variable) =>
                  variable.value === undefined ? [] : [[`${container.name}/${variable.name}`, variable.value]]
                )
              )
            ) as Record<string, string>
        })),
        Effect.orElseSucceed(() => ({}))
      )

    const decodeName = <A>(schema: Schema.Schema<A, string>, what: string, value: string) =>
      Schema.decode(schema)(value).pipe(
        Effect.mapError(() => new RestoreInvalid({ message: `the image records an invalid ${what}: "${value}"` }))
      )

    /** Reads the image's pod record and works out the pod to create; creates nothing. */
    const plan = Effect.fn("Restorer.plan")(function*(request: RestoreRequest) {
      const image = request.image ?? (yield* imageOfCheckpoint(request.checkpointIdentifier!))
      const source = request.checkpointIdentifier === undefined ? "" : `checkpoint ${request.checkpointIdentifier}: `
      const record = yield* images.podRecord(image).pipe(
        Effect.catchTags({
          ImageMissing: (error) => Effect.fail(new RestoreSourceMissing({ message: `${source}${error.message}` })),
          ImageUnusable: (error) => Effect.fail(new RestoreInvalid({ message: error.message })),
          ImageLookupFailed: (error) =>
            Effect.fail(new RestoreFailed({ phase: "image", message: error.message, cause: error }))
        }),
        restorePhase("image")
      )
      const namespace = request.namespace ?? (yield* decodeName(Namespace, "namespace", record.metadata.namespace))
      const name = request.pod ?? (yield* decodeName(PodName, "pod name", defaultName(record.metadata.name)))
      const container = record.container as ContainerName
      const env = yield* liveEnv(record)
      const pod = restoredPod(record, {
        image,
        restoredFrom: labelValueOf(image),
        name,
        namespace,
        ...(request.node === undefined ? {} : { node: request.node }),
        env
      })
      const omittedEnv = record.omittedEnv.filter((variable) => !(variable in env))
      return { image, record, pod, namespace, name, container, omittedEnv } satisfies RestorePlan
    })

    const podOf = (plan: RestorePlan, phase: RestorePhase) =>
      cluster.getPod(plan.namespace, plan.name).pipe(
        Effect.mapError((error) => new RestoreFailed({ phase, message: error.message, cause: error })),
        Effect.flatMap(Option.match({
          onNone: () => Effect.fail(new RestoreFailed({ phase, message: "the pod was deleted while it was restored" })),
          onSome: Effect.succeed
        }))
      )

    /** Polls the pod until `done` answers, failing in `phase` after `timeout`. */
    const pollPod = <A>(
      plan: RestorePlan,
      phase: RestorePhase,
      timeout: Duration.Duration,
      done: (pod: V1Pod) => Effect.Effect<Option.Option<A>, RestoreFailed>
    ) =>
      podOf(plan, phase).pipe(
        Effect.flatMap(done),
        Effect.flatMap(Option.match({
          onNone: () => Effect.sleep(pollInterval).pipe(Effect.as(Option.none<A>())),
          onSome: (value) => Effect.succeed(Option.some(value))
        })),
        Effect.repeat({ until: Option.isSome }),
        Effect.map((found) => Option.getOrThrow(found)),
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () => new RestoreFailed({ phase, message: `not done within ${Duration.format(timeout)}` })
        })
      )

    const scheduled = (plan: RestorePlan) =>
      pollPod(plan, "scheduling", schedulingTimeout, (pod) => {
        const node = pod.spec?.nodeName
        return Effect.succeed(node === undefined || node === "" ? Option.none() : Option.some(node))
      }).pipe(restorePhase("scheduling"))

    const started = (plan: RestorePlan) =>
      pollPod(plan, "image pull", startTimeout, (pod) => {
        const progress = progressOf(pod, plan.container)
        switch (progress._tag) {
          case "Running":
            return Effect.succeed(Option.some(progress.node))
          case "Starting":
            return Effect.succeed(Option.none())
          case "Failed":
            return Effect.fail(new RestoreFailed({ phase: progress.phase, message: progress.message }))
        }
      }).pipe(restorePhase("image pull and restore"))

    /** A failed restore's message with the pod's events; the pod is deleted unless the caller keeps it. */
    const cleanUpFailed = (plan: RestorePlan, keepFailedPod: boolean) => (error: RestoreFailed) =>
      Effect.gen(function*() {
        const events = yield* cluster.podEvents(plan.namespace, plan.name).pipe(
          Effect.orElseSucceed(() => [] as ReadonlyArray<string>)
        )
        const removal = keepFailedPod
          ? `pod ${plan.namespace}/${plan.name} kept for inspection`
          : yield* cluster.deletePod(plan.namespace, plan.name, deleteTimeout).pipe(
            Effect.as(`pod ${plan.namespace}/${plan.name} deleted`),
            Effect.catchAll((deletion) =>
              Effect.succeed(`pod ${plan.namespace}/${plan.name} could not be deleted: ${deletion.message}`)
            )
          )
        const shown = events.slice(-shownEvents)
        return new RestoreFailed({
          phase: error.phase,
          message: `${error.message}${shown.length === 0 ? "" : `; events: ${shown.join("; ")}`}; ${removal}`,
          cause: error
        })
      })

    const execute = (plan: RestorePlan, keepFailedPod: boolean) =>
      Effect.gen(function*() {
        const startedAtMillis = yield* Clock.currentTimeMillis
        const created = yield* cluster.createPod(plan.namespace, plan.pod).pipe(
          Effect.mapError((error) =>
            error.status === 409
              ? new RestoreConflict({ message: `pod ${plan.namespace}/${plan.name} already exists` })
              : new RestoreFailed({ phase: "pod creation", message: error.message, cause: error })
          ),
          restorePhase("pod creation")
        )
        const node = yield* Effect.zipRight(scheduled(plan), started(plan)).pipe(
          Effect.catchTag("RestoreFailed", (error) =>
            Effect.flatMap(cleanUpFailed(plan, keepFailedPod)(error), Effect.fail))
        )
        yield* Effect.logInfo("restored").pipe(Effect.annotateLogs({ node }))
        const seconds = ((yield* Clock.currentTimeMillis) - startedAtMillis) / 1000
        yield* kubernetesEvents.record(
          { namespace: plan.namespace, pod: plan.name, container: plan.container, uid: created.metadata?.uid },
          {
            type: "Normal",
            reason: "Restored",
            message: `Restored container ${plan.container} from ${plan.image} in ${seconds.toFixed(1)} s`
          }
        )
        return new RestoreResult({
          namespace: plan.namespace,
          pod: plan.name,
          node: NodeName.make(node),
          image: plan.image,
          container: plan.container,
          ...(plan.omittedEnv.length === 0 ? {} : { omittedEnv: plan.omittedEnv })
        })
      }).pipe(
        Effect.annotateLogs({ service: "Restorer", pod: `${plan.namespace}/${plan.name}`, image: plan.image })
      )

    /**
     * Plans the restore, lets `authorize` check the plan, creates the pod and waits until the runtime restored its
     * container (this runs on if the caller goes away). Async: answers an identifier once the pod is planned; the
     * result is stored under it. Each restore is counted by its outcome.
     */
    const restore = <E extends { readonly _tag: string }>(
      request: RestoreRequest,
      authorize: (plan: RestorePlan) => Effect.Effect<void, E>
    ) =>
      plan(request).pipe(
        Effect.tap(authorize),
        Effect.onError((cause) => Metrics.countRestore(Exit.failCause(cause))),
        Effect.flatMap((planned) => run(planned, request)),
        Effect.withSpan("Restorer.restore")
      )

    const run = Effect.fn("Restorer.run")(function*(
      plan: RestorePlan,
      options: { readonly async: boolean; readonly keepFailedPod: boolean }
    ) {
      const identifier = makeIdentifier(config.node, randomBytes(8).toString("hex") as CheckpointTag)
      const beginTimestamp = yield* unixSeconds
      const work = execute(plan, options.keepFailedPod).pipe(
        Effect.onExit(Metrics.countRestore),
        Effect.withLogSpan("restore"),
        operationSpan("restore", identifier, {
          "checkpointer.pod": `${plan.namespace}/${plan.name}`,
          "checkpointer.image": plan.image,
          "checkpointer.async": options.async
        })
      )
      if (!options.async) {
        const fiber = yield* FiberMap.run(running, identifier, work)
        return yield* Fiber.join(fiber)
      }
      yield* store.put(
        identifier,
        new RestorePendingRecord({ namespace: plan.namespace, pod: plan.name, beginTimestamp })
      )
        .pipe(
          Effect.mapError((error) => new RestoreFailed({ phase: "result store", message: error.message, cause: error }))
        )
      yield* FiberMap.run(
        running,
        identifier,
        work.pipe(
          Effect.onExit((exit) =>
            Effect.gen(function*() {
              const endTimestamp = yield* unixSeconds
              const record = Exit.isSuccess(exit)
                ? new RestoredRecord({ result: exit.value, beginTimestamp, endTimestamp })
                : new RestoreFailedRecord({
                  namespace: plan.namespace,
                  pod: plan.name,
                  beginTimestamp,
                  endTimestamp,
                  message: describeRestoreFailure(exit.cause, identifier)
                })
              yield* store.put(identifier, record).pipe(
                Effect.catchAll((error) =>
                  Effect.logError("could not record the restore").pipe(Effect.annotateLogs({ error: error.message }))
                )
              )
            })
          )
        )
      )
      return new AsyncCheckpointAccepted({ checkpointIdentifier: identifier })
    })

    /** The outcome of an async restore still running on this node, if `identifier` is one. */
    const runningResult = (identifier: CheckpointIdentifier) =>
      FiberMap.get(running, identifier).pipe(
        Effect.option,
        Effect.map(Option.map((fiber) =>
          Effect.flatMap(Fiber.await(fiber), (exit) =>
            Exit.isSuccess(exit)
              ? Effect.succeed(exit.value)
              : Effect.fail(new CheckpointFailure({ message: describeRestoreFailure(exit.cause, identifier) })))
        ))
      )

    return { restore, runningResult } as const
  })
}) {}

/** What the caller of a failed restore is told. */
export const describeRestoreFailure = (
  cause: Cause.Cause<RestoreConflict | RestoreFailed>,
  identifier: CheckpointIdentifier
): string =>
  Option.match(Cause.failureOption(cause), {
    onNone: () => `restore ${identifier} was interrupted (the Checkpointer is shutting down)`,
    onSome: (error) => error._tag === "RestoreFailed" ? error.description : error.message
  })
