import { configProviderOf, describingConfigErrors, ImageBuildError, reasonOf } from "@checkpointer/core"
import type { BuiltImage, CheckpointerSettings, InvalidConfiguration } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { Context, Effect, Layer } from "effect"
import { checkpointFacts, readArchiveMetadata } from "../archive/CheckpointMetadata.ts"
import { makePusher, options } from "./NativeImageBuilder.ts"
import type { NativeImageBuilderOptions, PushRequest } from "./NativeImageBuilder.ts"

/** The archive cannot be pushed: it is missing, unreadable, or not a checkpoint archive. Nothing was sent. */
const rejected = (archive: string, reason: string, cause?: unknown) =>
  new ImageBuildError({ step: "read archive", message: `${archive} ${reason}`, cause })

/**
 * A checkpoint archive of CRI-O, containerd or Podman: a tar (plain, gzip or zstd) whose config.dump or spec.dump
 * names the container. Only the archive's start is read (the runtimes write those files first).
 */
const checkArchive = Effect.fn("ArchivePusher.checkArchive")(function*(archive: string) {
  const fs = yield* FileSystem.FileSystem
  const info = yield* fs.stat(archive).pipe(
    Effect.mapError((error) => rejected(archive, `cannot be read: ${reasonOf(error)}`, error))
  )
  if (info.type !== "File") return yield* rejected(archive, "is not a regular file")
  const metadata = yield* readArchiveMetadata(archive).pipe(
    Effect.mapError((error) => rejected(archive, `is not a checkpoint archive: ${error.message}`, error))
  )
  if (checkpointFacts(metadata).containerName === undefined) {
    return yield* rejected(archive, "is not a checkpoint archive: no config.dump or spec.dump names its container")
  }
})

/**
 * The native builder alone: pushes a checkpoint archive that already exists (written by the kubelet, `crictl
 * checkpoint` or `podman container checkpoint --export`) as a restorable image, with the server's registry options.
 */
export class ArchivePusher extends Context.Tag("checkpointer/ArchivePusher")<ArchivePusher, {
  /**
   * Pushes `archive` as `imageName`. A missing file or one that is not a checkpoint archive fails (step
   * `read archive`, naming it) before anything is sent to the registry.
   */
  readonly push: (
    archive: string,
    imageName: string,
    options?: Pick<PushRequest, "onProgress">
  ) => Effect.Effect<BuiltImage, ImageBuildError>
}>() {
  /** With explicit options; an unreadable CA or key file fails with InvalidConfiguration, as at server startup. */
  static readonly layerWith = (
    settings: NativeImageBuilderOptions
  ): Layer.Layer<ArchivePusher, InvalidConfiguration, FileSystem.FileSystem> =>
    Layer.scoped(ArchivePusher, makeArchivePusher(settings)).pipe(Layer.mapError(describingConfigErrors))

  /**
   * Configured as the server's native builder: REGISTRY_AUTH_FILE, REGISTRY_CA_FILE, REGISTRY_INSECURE,
   * CHECKPOINT_LAYER_COMPRESSION, CHECKPOINT_LAYER_COMPRESSION_LEVEL and CHECKPOINT_ENCRYPTION_KEYS, from `settings`
   * (the environment when absent). Wrong values fail with InvalidConfiguration and the server's startup messages.
   */
  static readonly layer = (
    settings?: CheckpointerSettings
  ): Layer.Layer<ArchivePusher, InvalidConfiguration, FileSystem.FileSystem> => {
    const layer = Layer.scoped(ArchivePusher, Effect.flatMap(options, makeArchivePusher)).pipe(
      Layer.mapError(describingConfigErrors)
    )
    return settings === undefined ? layer : Layer.provide(layer, Layer.setConfigProvider(configProviderOf(settings)))
  }
}

const makeArchivePusher = (settings: NativeImageBuilderOptions) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const push = yield* makePusher(settings)
    return ArchivePusher.of({
      push: (archive, imageName, options) =>
        checkArchive(archive).pipe(
          Effect.zipRight(push({ archive, imageName, ...options })),
          Effect.provideService(FileSystem.FileSystem, fs)
        )
    })
  })

/** Pushes a checkpoint archive as `imageName` with the ArchivePusher in context. */
export const pushArchive = (archive: string, imageName: string, options?: Pick<PushRequest, "onProgress">) =>
  Effect.flatMap(ArchivePusher, (pusher) => pusher.push(archive, imageName, options))
