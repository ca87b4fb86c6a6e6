import {
  CheckpointImages,
  ImageLookupFailed,
  ImageMissing,
  ImageUnusable,
  parsePodRecord,
  podRecordAnnotation
} from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import type { ConfigError } from "effect"
import { Effect, Either, Layer, Option, Schema } from "effect"
import { formatReference, makeSession, parseImageReference } from "./OciRegistry.ts"
import type { RegistryError } from "./RegistryError.ts"
import { credentialsOf, registryAccessConfig, registryHttpClient } from "./RegistryHttp.ts"
import type { RegistryAccess } from "./RegistryHttp.ts"

const ManifestAnnotations = Schema.parseJson(Schema.Struct({
  annotations: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.String }))
}))

/** Reads checkpoint images' manifests back from their registry, with the credentials and trust pushes use. */
export const make = Effect.fn("RegistryImages.make")(function*(access: RegistryAccess) {
  const fs = yield* FileSystem.FileSystem
  const http = yield* registryHttpClient(access, "checkpointer")

  const podRecord = Effect.fn("RegistryImages.podRecord")(function*(image: string) {
    const reference = yield* Either.match(parseImageReference(image), {
      onLeft: (error) => Effect.fail(new ImageUnusable({ message: `invalid image name "${image}": ${error.message}` })),
      onRight: Effect.succeed
    })
    const lookupFailed = (error: RegistryError) =>
      new ImageLookupFailed({ message: `cannot read ${formatReference(reference)}: ${error.message}`, cause: error })
    const credentials = yield* credentialsOf(access, reference).pipe(
      Effect.provideService(FileSystem.FileSystem, fs),
      Effect.mapError(lookupFailed)
    )
    const session = yield* makeSession({ http, reference, credentials, insecure: access.insecure, actions: "pull" })
      .pipe(Effect.mapError(lookupFailed))
    const manifest = yield* session.getManifest.pipe(Effect.mapError(lookupFailed))
    if (Option.isNone(manifest)) {
      return yield* new ImageMissing({ message: `image ${formatReference(reference)} does not exist` })
    }
    const annotations = yield* Schema.decodeUnknown(ManifestAnnotations)(manifest.value).pipe(
      Effect.mapError(() =>
        new ImageUnusable({ message: `${formatReference(reference)} has no OCI image manifest (an index?)` })
      )
    )
    const recorded = annotations.annotations?.[podRecordAnnotation]
    if (recorded === undefined) {
      return yield* new ImageUnusable({
        message: `${formatReference(reference)} does not record its pod (no ${podRecordAnnotation} annotation): ` +
          "it was not made by Checkpointer, or its pod could not be read when it was"
      })
    }
    return yield* Either.match(parsePodRecord(recorded), {
      onLeft: (reason) => Effect.fail(new ImageUnusable({ message: `${formatReference(reference)}: ${reason}` })),
      onRight: Effect.succeed
    })
  })

  return CheckpointImages.of({ podRecord })
})

/** Checkpoint images read with REGISTRY_AUTH_FILE, REGISTRY_CA_FILE and REGISTRY_INSECURE. */
export const layer: Layer.Layer<CheckpointImages, ConfigError.ConfigError, FileSystem.FileSystem> = Layer.scoped(
  CheckpointImages,
  Effect.flatMap(registryAccessConfig, make)
)
