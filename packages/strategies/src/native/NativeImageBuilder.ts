import { ImageBuilder, ImageBuildError, reasonOf } from "@checkpointer/core"
import type { BuildRequest } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import type { ConfigError } from "effect"
import { Clock, Config, Effect, Either, Layer, Option, Stream } from "effect"
import type { ArchiveError, Compression } from "../archive/ArchiveFormat.ts"
import { inspectWhileStreaming } from "../archive/ArchiveInspector.ts"
import type { ArchiveDescription } from "../archive/ArchiveInspector.ts"
import { readArchive } from "../archive/ArchiveReader.ts"
import { checkpointFacts } from "../archive/CheckpointMetadata.ts"
import { imageAnnotations, nodeArchitecture } from "../archive/ImageAnnotations.ts"
import { credentialsFromFile } from "../registry/DockerConfig.ts"
import { formatReference, makeSession, parseImageReference } from "../registry/OciRegistry.ts"
import type { RegistryError } from "../registry/RegistryError.ts"
import { readRegistryCa, registryHttpClient, registryTrustConfig } from "../registry/RegistryTrust.ts"
import { compression, encodeLayer, encryptionKeys } from "./LayerEncoding.ts"
import type { LayerCompressionError } from "./LayerEncoding.ts"
import { loadRecipients } from "./LayerEncryption.ts"
import type { LayerEncryptionError } from "./LayerEncryption.ts"

export interface NativeImageBuilderOptions {
  /** Docker config JSON with `auths` (REGISTRY_AUTH_FILE). */
  readonly authFile: Option.Option<string>
  /** Extra CA certificates (PEM) trusted for registries and token servers (REGISTRY_CA_FILE). */
  readonly caFile: Option.Option<string>
  /** Plain HTTP allowed and TLS left unverified (REGISTRY_INSECURE). */
  readonly insecure: boolean
  /** Compression of an uncompressed archive's layer (CHECKPOINT_LAYER_COMPRESSION); `none` when absent. */
  readonly compression?: Compression
  /** Recipients' public key files (CHECKPOINT_ENCRYPTION_KEYS); the layer is encrypted for them when there are any. */
  readonly encryptionKeys?: ReadonlyArray<string>
}

export const options: Config.Config<NativeImageBuilderOptions> = Config.all({
  authFile: Config.option(Config.string("REGISTRY_AUTH_FILE")),
  trust: registryTrustConfig,
  compression,
  encryptionKeys
}).pipe(Config.map(({ authFile, compression, encryptionKeys, trust }) => ({
  authFile,
  ...trust,
  compression,
  encryptionKeys
})))

export const manifestMediaType = "application/vnd.oci.image.manifest.v1+json"
export const configMediaType = "application/vnd.oci.image.config.v1+json"

const encodeJson = (value: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(value))

export const imageConfig = (description: ArchiveDescription, created: Date, architecture: string) => ({
  created: created.toISOString(),
  architecture,
  os: "linux",
  config: {},
  rootfs: { type: "layers", diff_ids: [description.diffId] },
  history: [{ created: created.toISOString(), created_by: "checkpointer native image builder" }]
})

const archiveChunkSize = 1024 * 1024

/** The native strategy: streams the archive straight into the registry as the single layer of an OCI image. */
export const make = Effect.fn("NativeImageBuilder.make")(function*(settings: NativeImageBuilderOptions) {
  const fs = yield* FileSystem.FileSystem
  const extraCa = yield* readRegistryCa(settings.caFile)
  const http = yield* registryHttpClient({
    extraCa,
    insecure: settings.insecure,
    userAgent: "checkpointer-native-image-builder"
  })
  const architecture = nodeArchitecture()
  const recipients = yield* loadRecipients(settings.encryptionKeys ?? [])
  const encoding = { compression: settings.compression ?? "none", recipients } as const
  if (recipients.length > 0) {
    yield* Effect.logInfo("layers are encrypted").pipe(
      Effect.annotateLogs({ service: "NativeImageBuilder", recipients: recipients.map((r) => r.file).join(",") })
    )
  }

  const build = Effect.fn("NativeImageBuilder.build")(function*(request: BuildRequest) {
    const started = yield* Clock.currentTimeMillis
    const pushFailed = (error: RegistryError) =>
      new ImageBuildError({
        step: "push",
        message: `cannot push ${request.imageName}: ${error.message}`,
        cause: error
      })
    const archiveFailed = (error: ArchiveError) =>
      new ImageBuildError({
        step: "read archive",
        message: `cannot read the checkpoint archive ${request.archive}: ${error.message}`,
        cause: error
      })
    const encodingFailed = (error: ArchiveError | RegistryError | LayerCompressionError | LayerEncryptionError) => {
      switch (error._tag) {
        case "ArchiveError":
          return archiveFailed(error)
        case "RegistryError":
          return pushFailed(error)
        case "LayerCompressionError":
          return new ImageBuildError({ step: "compress layer", message: error.message, cause: error })
        case "LayerEncryptionError":
          return new ImageBuildError({ step: "encrypt layer", message: error.message, cause: error })
      }
    }
    const reference = yield* Either.match(parseImageReference(request.imageName), {
      onLeft: (error) =>
        Effect.fail(
          new ImageBuildError({ step: "push", message: `invalid image name "${request.imageName}": ${error.message}` })
        ),
      onRight: Effect.succeed
    })
    yield* fs.stat(request.archive).pipe(
      Effect.filterOrFail((info) => info.type === "File", () => "not a regular file"),
      Effect.mapError((error) =>
        new ImageBuildError({
          step: "read archive",
          message: `cannot read the checkpoint archive ${request.archive}: ${
            typeof error === "string" ? error : reasonOf(error)
          }`,
          cause: error
        })
      )
    )
    const credentials = yield* credentialsFromFile(settings.authFile, reference.domain).pipe(
      Effect.provideService(FileSystem.FileSystem, fs),
      Effect.mapError(pushFailed)
    )
    const session = yield* makeSession({ http, reference, credentials, insecure: settings.insecure }).pipe(
      Effect.mapError(pushFailed)
    )

    const { description, readFailure, stream } = yield* inspectWhileStreaming(
      readArchive(request.archive, { chunkSize: archiveChunkSize, buffers: 6 }).pipe(
        Stream.provideService(FileSystem.FileSystem, fs)
      )
    )
    const encoded = yield* encodeLayer(stream, encoding)
    const described = yield* Effect.cached(
      Effect.flatMap(description, (archive) => Effect.map(encoded.layer(archive), (layer) => ({ archive, layer })))
    )
    const pushed = session.pushBlobStream(encoded.stream, Effect.map(described, (d) => d.layer.digest))
    const { archive, layer } = yield* pushed.pipe(
      Effect.zipRight(described),
      Effect.catchAll((error) =>
        Effect.flatMap(
          readFailure,
          Option.match({
            onSome: (archiveError) => Effect.fail(archiveFailed(archiveError)),
            onNone: () => Effect.fail(encodingFailed(error))
          })
        )
      )
    )

    const created = new Date(yield* Clock.currentTimeMillis)
    const configBlob = yield* session.pushBlob(encodeJson(imageConfig(archive, created, architecture)), configMediaType)
      .pipe(Effect.mapError(pushFailed))
    const manifest = {
      schemaVersion: 2,
      mediaType: manifestMediaType,
      config: configBlob,
      layers: [layer],
      annotations: imageAnnotations(checkpointFacts(archive), request.container, architecture)
    }
    const digest = yield* session.putManifest(encodeJson(manifest), manifestMediaType).pipe(
      Effect.mapError(pushFailed)
    )
    const seconds = ((yield* Clock.currentTimeMillis) - started) / 1000
    yield* Effect.logInfo("pushed checkpoint image").pipe(
      Effect.annotateLogs({
        image: formatReference(reference),
        digest,
        layer: layer.mediaType,
        bytes: layer.size,
        seconds: seconds.toFixed(2)
      })
    )
    return { name: request.imageName, digest, size: layer.size }
  }, Effect.annotateLogs({ service: "NativeImageBuilder" }))

  return ImageBuilder.of({ name: "native", build })
})

/** The native builder with explicit settings (for embedding and tests). */
export const layerWith = (
  settings: NativeImageBuilderOptions
): Layer.Layer<ImageBuilder, ConfigError.ConfigError, FileSystem.FileSystem> =>
  Layer.scoped(ImageBuilder, make(settings))

/**
 * The native builder, configured by REGISTRY_AUTH_FILE, REGISTRY_CA_FILE, REGISTRY_INSECURE,
 * CHECKPOINT_LAYER_COMPRESSION and CHECKPOINT_ENCRYPTION_KEYS.
 */
export const layer: Layer.Layer<ImageBuilder, ConfigError.ConfigError, FileSystem.FileSystem> = Layer.scoped(
  ImageBuilder,
  Effect.flatMap(options, make)
)
