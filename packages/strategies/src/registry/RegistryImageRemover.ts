import { ImageRemovalError, ImageRemover } from "@checkpointer/core"
import type { ImageRemoval, PushedImage } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import type { Config, ConfigError } from "effect"
import { Effect, Either, Layer, Option } from "effect"
import { makeSession, parseImageReference } from "./OciRegistry.ts"
import type { RegistryError } from "./RegistryError.ts"
import { credentialsOf, registryAccessConfig, registryHttpClient } from "./RegistryHttp.ts"
import type { RegistryAccess } from "./RegistryHttp.ts"

/** REGISTRY_AUTH_FILE (its credentials need the right to delete), REGISTRY_CA_FILE and REGISTRY_INSECURE. */
export type RegistryImageRemoverOptions = RegistryAccess

/** REGISTRY_AUTH_FILE, REGISTRY_CA_FILE and REGISTRY_INSECURE, as the native builder reads them. */
export const options: Config.Config<RegistryImageRemoverOptions> = registryAccessConfig

const isUnsupported = (error: RegistryError) => error.status === 405 || error.code === "UNSUPPORTED"

/**
 * Deletes checkpoint images through the distribution API: the tag's manifest digest (HEAD), then
 * DELETE /v2/<name>/manifests/<digest>, only when that digest is the one that was pushed.
 */
export const make = Effect.fn("RegistryImageRemover.make")(function*(settings: RegistryImageRemoverOptions) {
  const fs = yield* FileSystem.FileSystem
  const http = yield* registryHttpClient(settings, "checkpointer-image-retention")

  const remove = Effect.fn("RegistryImageRemover.remove")(function*(image: PushedImage) {
    const reference = yield* Either.mapLeft(
      parseImageReference(image.name),
      (error) =>
        new ImageRemovalError({ message: `invalid image name "${image.name}": ${error.message}`, unsupported: false })
    )
    const removal = Effect.gen(function*() {
      const credentials = yield* credentialsOf(settings, reference)
      const session = yield* makeSession({
        http,
        reference,
        credentials,
        insecure: settings.insecure,
        actions: "pull,delete"
      })
      const current = yield* session.manifestDigest(reference.tag)
      if (Option.isNone(current)) return "already gone" satisfies ImageRemoval
      if (image.digest !== undefined && current.value !== image.digest) return "retagged" satisfies ImageRemoval
      const deleted = yield* session.deleteManifest(current.value)
      return deleted ? "deleted" as const : "already gone" as const
    })
    return yield* removal.pipe(
      Effect.provideService(FileSystem.FileSystem, fs),
      Effect.mapError((error) =>
        new ImageRemovalError({
          message: `cannot delete ${image.name}: ${error.message}`,
          unsupported: isUnsupported(error),
          cause: error
        })
      )
    )
  })

  return ImageRemover.of({ remove })
})

/** The remover with explicit settings (for embedding and tests). */
export const layerWith = (
  settings: RegistryImageRemoverOptions
): Layer.Layer<ImageRemover, ConfigError.ConfigError, FileSystem.FileSystem> =>
  Layer.scoped(ImageRemover, make(settings))

/** The remover, configured by REGISTRY_AUTH_FILE, REGISTRY_CA_FILE and REGISTRY_INSECURE. */
export const layer: Layer.Layer<ImageRemover, ConfigError.ConfigError, FileSystem.FileSystem> = Layer.scoped(
  ImageRemover,
  Effect.flatMap(options, make)
)
