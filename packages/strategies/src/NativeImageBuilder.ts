import { FileSystem, HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeFileSystem, NodeHttpClient } from "@effect/platform-node"
import { Agent } from "@effect/platform-node/Undici"
import { ImageBuildError, ImageBuilder } from "@checkpointer/core"
import type { BuildRequest, ContainerRef } from "@checkpointer/core"
import type { ConfigError} from "effect"
import { Clock, Config, Effect, Either, Layer, Option, Stream } from "effect"
import { rootCertificates } from "node:tls"
import { checkpointFacts, inspectWhileStreaming, readArchive } from "./CheckpointArchive.ts"
import type { ArchiveDescription, ArchiveError, CheckpointFacts } from "./CheckpointArchive.ts"
import { formatReference, makeSession, parseImageReference } from "./OciRegistry.ts"
import type { RegistryError } from "./OciRegistry.ts"
import { credentialsFor, platformReason, readAuthFile, readRegistryCa, registryTrustConfig } from "./RegistryAuth.ts"

export interface NativeImageBuilderOptions {
  /** Docker config JSON with `auths` (REGISTRY_AUTH_FILE). */
  readonly authFile: Option.Option<string>
  /** Extra CA certificates (PEM) trusted for registries and token servers (REGISTRY_CA_FILE). */
  readonly caFile: Option.Option<string>
  /** Plain HTTP allowed and TLS left unverified (REGISTRY_INSECURE). */
  readonly insecure: boolean
}

export const options: Config.Config<NativeImageBuilderOptions> = Config.all({
  authFile: Config.option(Config.string("REGISTRY_AUTH_FILE")),
  trust: registryTrustConfig
}).pipe(Config.map(({ authFile, trust }) => ({ authFile, ...trust })))

export const manifestMediaType = "application/vnd.oci.image.manifest.v1+json"
export const configMediaType = "application/vnd.oci.image.config.v1+json"

const ociArchitectures: Readonly<Record<string, string>> = { x64: "amd64", arm64: "arm64", arm: "arm", ia32: "386" }
export const nodeArchitecture = (): string => ociArchitectures[process.arch] ?? process.arch

/** The manifest annotations that CRI-O, Podman and checkpointctl look for, from what the archive tells. */
export const imageAnnotations = (
  facts: CheckpointFacts,
  container: ContainerRef,
  architecture: string
): Record<string, string> => {
  const engineName = facts.containerName ?? container.container
  const optional = (entries: ReadonlyArray<readonly [string, string | undefined]>) =>
    Object.fromEntries(entries.filter((entry): entry is readonly [string, string] => entry[1] !== undefined))
  return {
    "io.kubernetes.cri-o.annotations.checkpoint.name": container.container,
    "org.criu.checkpoint.container.name": engineName,
    "org.criu.checkpoint.pod.name": facts.podName ?? container.pod,
    "org.criu.checkpoint.pod.namespace": facts.podNamespace ?? container.namespace,
    "org.criu.checkpoint.host.arch": architecture,
    ...optional([
      ["org.criu.checkpoint.engine.name", facts.engine],
      ["org.criu.checkpoint.runtime.name", facts.runtime],
      ["org.criu.checkpoint.rootfsImageName", facts.rootfsImageName],
      ["org.criu.checkpoint.rootfsImageUserRequested", facts.rootfsImageUserRequested],
      ["org.criu.checkpoint.rootfsImageID", facts.rootfsImageId],
      ["org.criu.checkpoint.rawImageName", facts.rawImageName]
    ]),
    ...(facts.runtime === undefined ? {} : {
      "io.podman.annotations.checkpoint.name": engineName,
      "io.podman.annotations.checkpoint.runtime.name": facts.runtime,
      ...optional([
        ["io.podman.annotations.checkpoint.rootfsImageName", facts.rootfsImageName],
        ["io.podman.annotations.checkpoint.rootfsImageID", facts.rootfsImageId],
        ["io.podman.annotations.checkpoint.rawImageName", facts.rawImageName]
      ])
    })
  }
}

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
  const dispatcher = yield* Effect.acquireRelease(
    Effect.sync(() =>
      new Agent({
        connect: {
          ...Option.match(extraCa, { onNone: () => ({}), onSome: (pem) => ({ ca: [...rootCertificates, pem] }) }),
          rejectUnauthorized: !settings.insecure
        }
      })
    ),
    (agent) => Effect.promise(() => agent.destroy())
  )
  const http = NodeHttpClient.makeUndici(dispatcher).pipe(
    HttpClient.mapRequest(HttpClientRequest.setHeader("user-agent", "checkpointer-native-image-builder"))
  )
  const architecture = nodeArchitecture()

  const build = Effect.fn("NativeImageBuilder.build")(function*(request: BuildRequest) {
    const started = yield* Clock.currentTimeMillis
    const pushFailed = (error: RegistryError) =>
      new ImageBuildError({
        phase: "push",
        message: `cannot push ${request.imageName}: ${error.message}`,
        cause: error
      })
    const archiveFailed = (error: ArchiveError) =>
      new ImageBuildError({
        phase: "read archive",
        message: `cannot read the checkpoint archive ${request.archive}: ${error.message}`,
        cause: error
      })
    const reference = yield* Either.match(parseImageReference(request.imageName), {
      onLeft: (error) =>
        Effect.fail(
          new ImageBuildError({ phase: "push", message: `invalid image name "${request.imageName}": ${error.message}` })
        ),
      onRight: Effect.succeed
    })
    yield* fs.stat(request.archive).pipe(
      Effect.filterOrFail((info) => info.type === "File", () => "not a regular file"),
      Effect.mapError((error) =>
        new ImageBuildError({
          phase: "read archive",
          message: `cannot read the checkpoint archive ${request.archive}: ${
            typeof error === "string" ? error : platformReason(error)
          }`,
          cause: error
        })
      )
    )
    const credentials = yield* Option.match(settings.authFile, {
      onNone: () => Effect.succeed(Option.none()),
      onSome: (path) => Effect.map(readAuthFile(path), (config) => credentialsFor(config, reference.domain))
    }).pipe(Effect.provideService(FileSystem.FileSystem, fs), Effect.mapError(pushFailed))
    const session = yield* makeSession({ http, reference, credentials, insecure: settings.insecure }).pipe(
      Effect.mapError(pushFailed)
    )

    const { description, readFailure, stream } = yield* inspectWhileStreaming(
      readArchive(request.archive, { chunkSize: archiveChunkSize, buffers: 6 }).pipe(
        Stream.provideService(FileSystem.FileSystem, fs)
      )
    )
    yield* session.pushBlobStream(stream, Effect.map(description, (d) => d.digest)).pipe(
      Effect.catchAll((error) =>
        Effect.flatMap(
          readFailure,
          Option.match({
            onSome: (archiveError) => Effect.fail(archiveFailed(archiveError)),
            onNone: () => Effect.fail(error._tag === "ArchiveError" ? archiveFailed(error) : pushFailed(error))
          })
        )
      )
    )
    const archive = yield* description.pipe(Effect.mapError(archiveFailed))

    const created = new Date(yield* Clock.currentTimeMillis)
    const configBlob = yield* session.pushBlob(encodeJson(imageConfig(archive, created, architecture)), configMediaType)
      .pipe(Effect.mapError(pushFailed))
    const manifest = {
      schemaVersion: 2,
      mediaType: manifestMediaType,
      config: configBlob,
      layers: [{ mediaType: archive.mediaType, digest: archive.digest, size: archive.size }],
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
        layer: archive.mediaType,
        bytes: archive.size,
        seconds: seconds.toFixed(2)
      })
    )
    return { name: request.imageName, digest, size: archive.size }
  }, Effect.annotateLogs({ service: "NativeImageBuilder" }))

  return ImageBuilder.of({ name: "native", build })
})

/** The native builder with explicit settings (for embedding and tests). */
export const layerWith = (settings: NativeImageBuilderOptions): Layer.Layer<ImageBuilder, ConfigError.ConfigError> =>
  Layer.scoped(ImageBuilder, make(settings)).pipe(Layer.provide(NodeFileSystem.layer))

/** The native builder, configured by REGISTRY_AUTH_FILE, REGISTRY_CA_FILE and REGISTRY_INSECURE. */
export const layer: Layer.Layer<ImageBuilder, ConfigError.ConfigError> = Layer.scoped(
  ImageBuilder,
  Effect.flatMap(options, make)
).pipe(Layer.provide(NodeFileSystem.layer))
