import { Context, Data } from "effect"
import type { Effect } from "effect"
import type { PodRecord } from "../domain/PodRecord.ts"

/** The registry has no such image. */
export class ImageMissing extends Data.TaggedError("ImageMissing")<{ readonly message: string }> {}

/** The name is not an image reference, or the image is not a checkpoint image that records its pod. */
export class ImageUnusable extends Data.TaggedError("ImageUnusable")<{ readonly message: string }> {}

/** The registry could not be asked (unreachable, refused the credentials, answered garbage). */
export class ImageLookupFailed extends Data.TaggedError("ImageLookupFailed")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** Reads checkpoint images back from the registry (packages/strategies implements it). */
export class CheckpointImages extends Context.Tag("checkpointer/CheckpointImages")<CheckpointImages, {
  /** The pod the image was checkpointed from (its `io.checkpointer.pod` annotation). */
  readonly podRecord: (image: string) => Effect.Effect<PodRecord, ImageMissing | ImageUnusable | ImageLookupFailed>
}>() {}
