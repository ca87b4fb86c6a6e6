import { ImageBuilder, ImageBuildError, reasonOf } from "@checkpointer/core"
import type { BuildRequest, BuiltImage, ContainerRef } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import type { ConfigError } from "effect"
import { Clock, Config, Effect, Either, Layer, Option, Redacted, Stream } from "effect"
import { createHash } from "node:crypto"
import type { ArchiveError, Compression } from "../archive/ArchiveFormat.ts"
import { inspectWhileStreaming } from "../archive/ArchiveInspector.ts"
import type { ArchiveDescription } from "../archive/ArchiveInspector.ts"
import { readArchive } from "../archive/ArchiveReader.ts"
import { checkpointFacts } from "../archive/CheckpointMetadata.ts"
import { imageAnnotations, nodeArchitecture } from "../archive/ImageAnnotations.ts"
import type { Credentials } from "../registry/DockerConfig.ts"
import { formatReference, makeSession, ociManifestMediaType, parseImageReference } from "../registry/OciRegistry.ts"
import type { Established, ImageReference } from "../registry/OciRegistry.ts"
import type { RegistryError } from "../registry/RegistryError.ts"
import { credentialsOf, registryAccessConfig, registryHttpClient } from "../registry/RegistryHttp.ts"
import type { RegistryAccess } from "../registry/RegistryHttp.ts"
import { compression, compressionLevel, encodeLayer, encryptionKeys } from "./LayerEncoding.ts"
import type { LayerCompressionError } from "./LayerEncoding.ts"
import { loadRecipients } from "./LayerEncryption.ts"
import type { LayerEncryptionError } from "./LayerEncryption.ts"

export interface NativeImageBuilderOptions extends RegistryAccess {
  /** Compression of an uncompressed archive's layer (CHECKPOINT_LAYER_COMPRESSION); `none` when absent. */
  readonly compression?: Compression
  /** Its level (CHECKPOINT_LAYER_COMPRESSION_LEVEL): zstd 1–19, gzip 1–9; 1 when absent. */
  readonly compressionLevel?: number
  /** Recipients' public key files (CHECKPOINT_ENCRYPTION_KEYS); the layer is encrypted for them when there are any. */
  readonly encryptionKeys?: ReadonlyArray<string>
}

export const options: Config.Config<NativeImageBuilderOptions> = Config.all({
  access: registryAccessConfig,
  compression,
  compressionLevel,
  encryptionKeys
}).pipe(Config.map(({ access, compressionLevel, ...layer }) => ({
  ...access,
  ...layer,
  ...Option.match(compressionLevel, { onNone: () => ({}), onSome: (level) => ({ compressionLevel: level }) })
})))

export const manifestMediaType = ociManifestMediaType
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

/**
 * How the archive is read (see readArchive): in 1 MiB chunks, through a ring of three buffers, the fewest that are
 * safe. A ring of six held 3 MiB more per push: 8 concurrent pushes of 64 MiB in one process peaked about 22 MiB
 * higher. 2 MiB chunks took about a tenth off a push's CPU time in a process of its own, but raised the server's peak
 * RSS by 3 to 4 MiB: glibc kept the freed 2 MiB buffers in its heap (README, "Benchmarks").
 */
export const archiveReading = { chunkSize: 1024 * 1024, buffers: 3 } as const

/** A build request whose container may be unknown (an archive made elsewhere), reporting progress if asked. */
export interface PushRequest extends Omit<BuildRequest, "container"> {
  /** The container checkpointed; when absent, the names the archive's config.dump and spec.dump hold. */
  readonly container?: ContainerRef
  /** Called with the bytes of the archive read so far, as they are read. */
  readonly onProgress?: (bytesRead: number) => Effect.Effect<void>
}

/** Pushes checkpoint archives as images, each read once and streamed straight into the registry. */
export type Pusher = (request: PushRequest) => Effect.Effect<BuiltImage, ImageBuildError>

/** The native strategy's push with these settings; the HTTP connections live as long as the scope. */
export const makePusher = Effect.fn("NativeImageBuilder.makePusher")(function*(settings: NativeImageBuilderOptions) {
  const fs = yield* FileSystem.FileSystem
  const http = yield* registryHttpClient(settings, "checkpointer-native-image-builder")
  const architecture = nodeArchitecture()
  const recipients = yield* loadRecipients(settings.encryptionKeys ?? [])
  const encoding = {
    compression: settings.compression ?? "none",
    ...(settings.compressionLevel === undefined ? {} : { level: settings.compressionLevel }),
    recipients
  } as const
  if (recipients.length > 0) {
    yield* Effect.logInfo("layers are encrypted").pipe(
      Effect.annotateLogs({ service: "NativeImageBuilder", recipients: recipients.map((r) => r.file).join(",") })
    )
  }

  /**
   * What the last successful push to a repository with the same credentials established (base URL, authorization,
   * token until it expires): the next push starts without a ping or a token request. A failed push starts afresh.
   */
  const established = new Map<string, Established>()

  const push: Pusher = Effect.fn("NativeImageBuilder.push")(function*(request: PushRequest) {
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
    const credentials = yield* credentialsOf(settings, reference).pipe(
      Effect.provideService(FileSystem.FileSystem, fs),
      Effect.mapError(pushFailed)
    )
    const sessionKey = establishedKey(reference, credentials)
    const session = yield* makeSession({
      http,
      reference,
      credentials,
      insecure: settings.insecure,
      established: established.get(sessionKey)
    }).pipe(Effect.mapError(pushFailed))

    const { description, readFailure, stream } = yield* inspectWhileStreaming(
      readArchive(request.archive, archiveReading).pipe(
        Stream.provideService(FileSystem.FileSystem, fs),
        reportingProgress(request.onProgress)
      )
    )
    const encoded = yield* encodeLayer(stream, encoding)
    const described = yield* Effect.cached(
      Effect.flatMap(description, (archive) => Effect.map(encoded.layer(archive), (layer) => ({ archive, layer })))
    )
    const layerPushed = session.pushBlobStream(encoded.stream, Effect.map(described, (d) => d.layer.digest)).pipe(
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
    // Its creation time makes every config new: uploaded without asking whether the registry has it. Its upload
    // opens next to the layer's and closes next to it, once the archive is described (a failure there is the
    // layer's to report).
    const configBytes = Effect.gen(function*() {
      const archive = yield* Effect.orElse(description, () => Effect.never)
      const created = new Date(yield* Clock.currentTimeMillis)
      return encodeJson(imageConfig(archive, created, architecture))
    })
    const [{ archive, layer }, configBlob] = yield* Effect.all([
      layerPushed,
      session.uploadBlob(configBytes, configMediaType).pipe(Effect.mapError(pushFailed))
    ], { concurrency: 2 })
    const manifest = {
      schemaVersion: 2,
      mediaType: manifestMediaType,
      config: configBlob,
      layers: [layer],
      annotations: {
        ...request.annotations,
        ...imageAnnotations(checkpointFacts(archive), request.container, architecture)
      }
    }
    const digest = yield* session.putManifest(encodeJson(manifest), manifestMediaType).pipe(
      Effect.mapError(pushFailed)
    )
    established.set(sessionKey, session.established)
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
  const pushReusingSessions: Pusher = (request) =>
    push(request).pipe(Effect.tapError(() => Effect.sync(() => established.clear())))

  return pushReusingSessions
})

/** Sessions are reused per registry, repository and credentials (a rotated password starts a new one). */
const establishedKey = (reference: ImageReference, credentials: Option.Option<Credentials>) =>
  [
    reference.apiHost,
    reference.repository,
    Option.match(credentials, {
      onNone: () => "",
      onSome: ({ password, username }) =>
        `${username}:${createHash("sha256").update(Redacted.value(password)).digest("hex")}`
    })
  ].join(" ")

const reportingProgress =
  (onProgress: PushRequest["onProgress"]) =>
  <E, R>(bytes: Stream.Stream<Uint8Array, E, R>): Stream.Stream<Uint8Array, E, R> =>
    onProgress === undefined ? bytes : bytes.pipe(
      Stream.mapAccumEffect(0, (read, chunk) => {
        const total = read + chunk.byteLength
        return Effect.as(onProgress(total), [total, chunk] as const)
      })
    )

/** The native strategy: streams the archive straight into the registry as the single layer of an OCI image. */
export const make = (settings: NativeImageBuilderOptions) =>
  Effect.map(makePusher(settings), (push) => ImageBuilder.of({ name: "native", build: push }))

/** The native builder with explicit settings (for embedding and tests). */
export const layerWith = (
  settings: NativeImageBuilderOptions
): Layer.Layer<ImageBuilder, ConfigError.ConfigError, FileSystem.FileSystem> =>
  Layer.scoped(ImageBuilder, make(settings))

/**
 * The native builder, configured by REGISTRY_AUTH_FILE, REGISTRY_CA_FILE, REGISTRY_INSECURE,
 * CHECKPOINT_LAYER_COMPRESSION, CHECKPOINT_LAYER_COMPRESSION_LEVEL and CHECKPOINT_ENCRYPTION_KEYS.
 */
export const layer: Layer.Layer<ImageBuilder, ConfigError.ConfigError, FileSystem.FileSystem> = Layer.scoped(
  ImageBuilder,
  Effect.flatMap(options, make)
)
