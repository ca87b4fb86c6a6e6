import { Context, Data, Effect, Layer, Option, Order, Ref } from "effect"
import { deletesImages, imageRetentionConfig } from "../config/Config.ts"
import type { ImageRetentionSettings } from "../config/Config.ts"
import type { CheckpointIdentifier, ContainerRef } from "../domain/Domain.ts"
import type { CheckpointRecord, StoredRecord } from "./ResultStore.ts"
import { ResultStore, SucceededRecord } from "./ResultStore.ts"

/** An image this Checkpointer pushed: its name (`PREFIX:<tag>`) and the manifest digest the registry confirmed. */
export interface PushedImage {
  readonly name: string
  readonly digest?: string | undefined
}

/** `retagged`: the tag names another manifest now (someone else pushed it): nothing was deleted. */
export type ImageRemoval = "deleted" | "already gone" | "retagged"

/** A deletion the registry refused or could not be asked; `unsupported` when it does not delete at all (405). */
export class ImageRemovalError extends Data.TaggedError("ImageRemovalError")<{
  readonly message: string
  readonly unsupported: boolean
  readonly cause?: unknown
}> {}

/** Deletes a pushed image's manifest from its registry (strategies: RegistryImageRemover). */
export class ImageRemover extends Context.Tag("checkpointer/ImageRemover")<ImageRemover, {
  readonly remove: (image: PushedImage) => Effect.Effect<ImageRemoval, ImageRemovalError>
}>() {}

/** What happens to the images of results: kept (IMAGE_RETENTION=keep), or deleted with them and beyond a cap. */
export class ImageRetention extends Context.Tag("checkpointer/ImageRetention")<ImageRetention, {
  /** A result outlived RESULT_TTL: whether its record may be removed now (false: try again at the next sweep). */
  readonly resultExpired: (identifier: CheckpointIdentifier, record: CheckpointRecord) => Effect.Effect<boolean>
  /** A checkpoint of `container` succeeded and is recorded; older images beyond the cap go, in the background. */
  readonly checkpointed: (container: ContainerRef) => Effect.Effect<void>
}>() {
  /** Images stay in the registry (the default). */
  static readonly Keep = Layer.succeed(ImageRetention, {
    resultExpired: () => Effect.succeed(true),
    checkpointed: () => Effect.void
  })

  static readonly deleting = (settings: ImageRetentionSettings) => Layer.scoped(ImageRetention, makeDeleting(settings))

  /** Keep, or deleting as IMAGE_RETENTION and MAX_CHECKPOINTS_PER_CONTAINER say, with the given remover. */
  static readonly layer = <E, R>(remover: Layer.Layer<ImageRemover, E, R>) =>
    Layer.unwrapEffect(
      Effect.map(
        imageRetentionConfig,
        (settings): Layer.Layer<ImageRetention, E, R | ResultStore> =>
          deletesImages(settings)
            ? ImageRetention.deleting(settings).pipe(Layer.provide(remover))
            : ImageRetention.Keep
      )
    )
}

const pushedAt = (record: SucceededRecord) => record.pushedAtMillis ?? record.result.endTimestamp * 1000

const newestFirst = Order.reverse(Order.mapInput(Order.number, (stored: ImagesOf) => pushedAt(stored.record)))

interface ImagesOf {
  readonly identifier: CheckpointIdentifier
  readonly record: SucceededRecord
}

const liveImageOf = (container: ContainerRef) => (stored: StoredRecord): Option.Option<ImagesOf> =>
  stored.record._tag === "Succeeded" && stored.record.imageDeleted !== true &&
    String(stored.record.result.containerIdentifier) === String(container)
    ? Option.some({ identifier: stored.identifier, record: stored.record })
    : Option.none()

const unsupportedAdvice = "the registry does not delete images (it answered 405 UNSUPPORTED): no image will be " +
  "deleted until Checkpointer restarts with a registry that allows deletes (distribution: storage.delete.enabled: " +
  "true, or REGISTRY_STORAGE_DELETE_ENABLED=true), or set IMAGE_RETENTION=keep and unset MAX_CHECKPOINTS_PER_CONTAINER"

const makeDeleting = (settings: ImageRetentionSettings) =>
  Effect.gen(function*() {
    const store = yield* ResultStore
    const remover = yield* ImageRemover
    const scope = yield* Effect.scope
    const unsupported = yield* Ref.make(false)
    const oneAtATime = yield* Effect.makeSemaphore(1)

    /** Deletes a result's image and marks its record; false when it must be tried again later. */
    const removeImage = (identifier: CheckpointIdentifier, record: SucceededRecord, why: string) =>
      Effect.gen(function*() {
        if (record.imageDeleted === true) return true
        if (yield* Ref.get(unsupported)) return true
        const image = { name: record.result.containerImageName, digest: record.result.containerImageDigest }
        return yield* remover.remove(image).pipe(
          Effect.tap((removal) =>
            Effect.logInfo(removal === "deleted" ? "image deleted" : `image not deleted: ${removal}`).pipe(
              Effect.annotateLogs({ image: image.name, digest: image.digest ?? "unknown", why })
            )
          ),
          Effect.zipRight(
            store.put(identifier, new SucceededRecord({ ...record, imageDeleted: true })).pipe(
              Effect.as(true),
              Effect.catchAll((error) =>
                Effect.logWarning("image deleted, but its record could not be updated").pipe(
                  Effect.annotateLogs({ error: error.message }),
                  Effect.as(true)
                )
              )
            )
          ),
          Effect.catchAll((error) =>
            error.unsupported
              ? Ref.getAndSet(unsupported, true).pipe(
                Effect.flatMap((reported) =>
                  reported ? Effect.void : Effect.logError(unsupportedAdvice).pipe(
                    Effect.annotateLogs({ image: image.name, error: error.message })
                  )
                ),
                Effect.as(true)
              )
              : Effect.logWarning("could not delete an image; tried again later").pipe(
                Effect.annotateLogs({ image: image.name, error: error.message }),
                Effect.as(false)
              )
          )
        )
      }).pipe(oneAtATime.withPermits(1), Effect.annotateLogs({ service: "ImageRetention", identifier }))

    const resultExpired = (identifier: CheckpointIdentifier, record: CheckpointRecord) =>
      settings.policy === "with-result" && record._tag === "Succeeded"
        ? removeImage(identifier, record, "its result expired (RESULT_TTL)")
        : Effect.succeed(true)

    const pruneImagesOf = (container: ContainerRef, cap: number) =>
      Effect.gen(function*() {
        const entries = yield* store.entries
        const older = entries.flatMap((stored) => Option.toArray(liveImageOf(container)(stored)))
          .sort(newestFirst)
          .slice(cap)
        for (const { identifier, record } of older) {
          yield* removeImage(
            identifier,
            record,
            `more than ${cap} images of ${container} (MAX_CHECKPOINTS_PER_CONTAINER)`
          )
        }
      }).pipe(
        Effect.catchAll((error) =>
          Effect.logWarning("could not read the results to prune images").pipe(
            Effect.annotateLogs({ error: error.message })
          )
        )
      )

    const checkpointed = (container: ContainerRef) =>
      Option.match(settings.maxPerContainer, {
        onNone: () => Effect.void,
        onSome: (cap) => Effect.asVoid(Effect.forkIn(pruneImagesOf(container, cap), scope))
      })

    yield* Effect.logInfo("images are deleted by this Checkpointer").pipe(
      Effect.annotateLogs({
        imageRetention: settings.policy,
        maxCheckpointsPerContainer: Option.getOrElse(settings.maxPerContainer, () => "unlimited")
      })
    )
    return { resultExpired, checkpointed }
  }).pipe(Effect.annotateLogs({ service: "ImageRetention" }))
