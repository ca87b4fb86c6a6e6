import { FileSystem, Path } from "@effect/platform"
import { Clock, Context, Data, Effect, Layer, Option, Ref, Schema } from "effect"
import { storageConfig } from "../config/Config.ts"
import type { CheckpointIdentifier } from "../domain/Domain.ts"
import { CheckpointResult, ContainerRef, Namespace, PodName, RestoreResult } from "../domain/Domain.ts"
import { PodRecord } from "../domain/PodRecord.ts"

/** Now, in Unix seconds, as records keep their timestamps. */
export const unixSeconds = Clock.currentTimeMillis.pipe(Effect.map((millis) => Math.floor(millis / 1000)))

export class PendingRecord extends Schema.TaggedClass<PendingRecord>()("Pending", {
  container: ContainerRef,
  beginTimestamp: Schema.Number
}) {}

export class SucceededRecord extends Schema.TaggedClass<SucceededRecord>()("Succeeded", {
  result: CheckpointResult,
  /** The pod as it was checkpointed (its image records it too). */
  pod: Schema.optional(PodRecord),
  /** When the image was pushed (orders a container's images within one second); absent in older records. */
  pushedAtMillis: Schema.optional(Schema.Number),
  /** The image was deleted from the registry by image retention; the result is kept until RESULT_TTL. */
  imageDeleted: Schema.optional(Schema.Boolean)
}) {}

export class FailedRecord extends Schema.TaggedClass<FailedRecord>()("Failed", {
  container: ContainerRef,
  beginTimestamp: Schema.Number,
  endTimestamp: Schema.Number,
  message: Schema.String
}) {}

export class RestorePendingRecord extends Schema.TaggedClass<RestorePendingRecord>()("RestorePending", {
  namespace: Namespace,
  pod: PodName,
  beginTimestamp: Schema.Number
}) {}

export class RestoredRecord extends Schema.TaggedClass<RestoredRecord>()("Restored", {
  result: RestoreResult,
  beginTimestamp: Schema.Number,
  endTimestamp: Schema.Number
}) {}

export class RestoreFailedRecord extends Schema.TaggedClass<RestoreFailedRecord>()("RestoreFailed", {
  namespace: Namespace,
  pod: PodName,
  beginTimestamp: Schema.Number,
  endTimestamp: Schema.Number,
  message: Schema.String
}) {}

/** What the store keeps of a checkpoint or a restore, by its identifier. */
export const CheckpointRecord = Schema.Union(
  PendingRecord,
  SucceededRecord,
  FailedRecord,
  RestorePendingRecord,
  RestoredRecord,
  RestoreFailedRecord
)
export type CheckpointRecord = typeof CheckpointRecord.Type

/** The namespace a record belongs to: the checkpointed container's, or the restored pod's. */
export const namespaceOfRecord = (record: CheckpointRecord): Namespace => {
  switch (record._tag) {
    case "Succeeded":
      return record.result.containerIdentifier.namespace
    case "Pending":
    case "Failed":
      return record.container.namespace
    case "Restored":
      return record.result.namespace
    case "RestorePending":
    case "RestoreFailed":
      return record.namespace
  }
}

/** When the work a record describes ended (for a pending record: when it began). */
export const finishedAtOfRecord = (record: CheckpointRecord): number => {
  switch (record._tag) {
    case "Succeeded":
      return record.result.endTimestamp
    case "Pending":
    case "RestorePending":
      return record.beginTimestamp
    default:
      return record.endTimestamp
  }
}

const RecordJson = Schema.parseJson(CheckpointRecord)

export class ResultStoreError extends Data.TaggedError("ResultStoreError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export interface StoredRecord {
  readonly identifier: CheckpointIdentifier
  readonly record: CheckpointRecord
}

/** Durable results of checkpoints, by identifier. */
export class ResultStore extends Context.Tag("checkpointer/ResultStore")<ResultStore, {
  readonly put: (identifier: CheckpointIdentifier, record: CheckpointRecord) => Effect.Effect<void, ResultStoreError>
  readonly get: (identifier: CheckpointIdentifier) => Effect.Effect<Option.Option<CheckpointRecord>, ResultStoreError>
  readonly remove: (identifier: CheckpointIdentifier) => Effect.Effect<void, ResultStoreError>
  /** Every readable record (corrupt ones are left out, and reported by `get`). */
  readonly entries: Effect.Effect<ReadonlyArray<StoredRecord>, ResultStoreError>
  /** Fails when a record could not be written now (for /readyz). */
  readonly checkWritable: Effect.Effect<void, ResultStoreError>
}>() {
  /** One JSON file per identifier under STORAGE_BASE_PATH, written to a temporary file and renamed into place. */
  static readonly File = Layer.effect(
    ResultStore,
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      const storageBasePath = yield* storageConfig
      const storeError = (action: string) => (cause: { readonly message: string }) =>
        new ResultStoreError({ message: `cannot ${action} in ${storageBasePath}: ${cause.message}`, cause })
      yield* fs.makeDirectory(storageBasePath, { recursive: true }).pipe(
        Effect.mapError(storeError("create the store"))
      )
      const fileOf = (identifier: CheckpointIdentifier) => path.join(storageBasePath, `${identifier}.json`)
      const files = fs.readDirectory(storageBasePath).pipe(Effect.mapError(storeError("list the results")))
      // A write cut short by a crash leaves its temporary file behind.
      yield* files.pipe(
        Effect.flatMap(
          Effect.forEach((name) =>
            name.endsWith(".tmp") ? fs.remove(path.join(storageBasePath, name)).pipe(Effect.ignore) : Effect.void
          )
        ),
        Effect.ignore
      )

      const put = Effect.fn("ResultStore.put")(function*(identifier: CheckpointIdentifier, record: CheckpointRecord) {
        const text = yield* Schema.encode(RecordJson)(record).pipe(Effect.mapError(storeError("encode a record")))
        const temporary = `${fileOf(identifier)}.${crypto.randomUUID()}.tmp`
        yield* fs.writeFileString(temporary, text, { mode: 0o600 }).pipe(
          Effect.zipRight(fs.rename(temporary, fileOf(identifier))),
          Effect.tapError(() => fs.remove(temporary).pipe(Effect.ignore)),
          Effect.mapError(storeError(`write the result of ${identifier}`))
        )
      })

      const get = Effect.fn("ResultStore.get")(function*(
        identifier: CheckpointIdentifier
      ): Effect.fn.Return<Option.Option<CheckpointRecord>, ResultStoreError> {
        const text = yield* fs.readFileString(fileOf(identifier)).pipe(
          Effect.map(Option.some),
          Effect.catchIf(
            (error) => error._tag === "SystemError" && error.reason === "NotFound",
            () => Effect.succeed(Option.none<string>())
          ),
          Effect.mapError(storeError(`read the result of ${identifier}`))
        )
        return yield* Option.match(text, {
          onNone: () => Effect.succeedNone,
          onSome: (json) =>
            Schema.decode(RecordJson)(json).pipe(
              Effect.map(Option.some),
              Effect.mapError(() => new ResultStoreError({ message: `the stored result of ${identifier} is corrupt` }))
            )
        })
      })

      const remove = Effect.fn("ResultStore.remove")(function*(identifier: CheckpointIdentifier) {
        yield* fs.remove(fileOf(identifier), { force: true }).pipe(Effect.mapError(storeError(`remove ${identifier}`)))
      })

      const entries = Effect.gen(function*() {
        const identifiers = (yield* files).filter((name) => name.endsWith(".json")).map((name) =>
          name.slice(0, -".json".length) as CheckpointIdentifier
        )
        const records = yield* Effect.forEach(identifiers, (identifier) =>
          get(identifier).pipe(
            Effect.map(Option.map((record): StoredRecord => ({ identifier, record }))),
            Effect.orElseSucceed(() => Option.none<StoredRecord>())
          ))
        return records.flatMap((found) => Option.toArray(found))
      })

      const checkWritable = Effect.gen(function*() {
        const probe = path.join(storageBasePath, `.writable-${crypto.randomUUID()}.tmp`)
        yield* fs.writeFileString(probe, "ok", { mode: 0o600 }).pipe(
          Effect.ensuring(fs.remove(probe, { force: true }).pipe(Effect.ignore)),
          Effect.mapError(storeError("write"))
        )
      })

      return { put, get, remove, entries, checkWritable }
    })
  )

  /** Results in memory, for tests and for embedding without a disk. */
  static readonly Memory = Layer.effect(
    ResultStore,
    Effect.gen(function*() {
      const records = yield* Ref.make(new Map<CheckpointIdentifier, CheckpointRecord>())
      return {
        put: (identifier, record) => Ref.update(records, (map) => new Map(map).set(identifier, record)),
        get: (identifier) => Ref.get(records).pipe(Effect.map((map) => Option.fromNullable(map.get(identifier)))),
        remove: (identifier) =>
          Ref.update(records, (map) => {
            const next = new Map(map)
            next.delete(identifier)
            return next
          }),
        entries: Ref.get(records).pipe(
          Effect.map((map) => Array.from(map, ([identifier, record]) => ({ identifier, record })))
        ),
        checkWritable: Effect.void
      }
    })
  )
}
