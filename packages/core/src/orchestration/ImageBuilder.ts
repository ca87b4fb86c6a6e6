import { Context, Data } from "effect"
import type { Effect } from "effect"
import type { ContainerRef } from "../domain/Domain.ts"
import type { BuildStep } from "../domain/Errors.ts"

export interface BuildRequest {
  /** Path of the checkpoint archive on this node; the builder reads it, the caller deletes it. */
  readonly archive: string
  readonly container: ContainerRef
  /** Full destination, `CHECKPOINT_IMAGE_PREFIX:<tag>`. */
  readonly imageName: string
  /** Manifest annotations to add to those the archive gives (e.g. the pod record). */
  readonly annotations?: Readonly<Record<string, string>>
}

export interface BuiltImage {
  readonly name: string
  readonly digest: string
  /** Bytes pushed for the image's layers. */
  readonly size: number
}

/** A failed build; `step` says where, `message` says why (never a credential). */
export class ImageBuildError extends Data.TaggedError("ImageBuildError")<{
  readonly step: BuildStep
  readonly message: string
  readonly cause?: unknown
}> {}

/** Turns a checkpoint archive into an image in the registry. One layer per strategy (packages/strategies). */
export class ImageBuilder extends Context.Tag("checkpointer/ImageBuilder")<ImageBuilder, {
  readonly name: string
  readonly build: (request: BuildRequest) => Effect.Effect<BuiltImage, ImageBuildError>
}>() {}
