import { ImageBuildError, ImageBuilder } from "@checkpointer/core"
import type { CheckpointerConfig, Cluster } from "@checkpointer/core"
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { Data, Duration, Effect, Layer, Option, Stream } from "effect"
import type { ConfigError } from "effect"
import { basename, dirname } from "node:path"
import { Header, Pack, ReadEntry } from "tar"
import { dockerfileName, kanikoContainer, makeKanikoBuilder } from "./KanikoPod.ts"
import type { KanikoStrategy } from "./KanikoPod.ts"

export class BuildContextError extends Data.TaggedError("BuildContextError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** node-tar reads files in slices of at most this size (its default allocates 16 MiB at a time). */
const readSize = 1024 * 1024
/** gzip output in 256 KiB pieces (node:zlib's chunkSize, passed on by node-tar): fewer, larger WebSocket messages. */
const gzipOptions = { level: 1, chunkSize: 256 * 1024 }

/**
 * The build context as a tar.gz made while it is read: the Dockerfile, then the archive straight from its file (never
 * copied). gzip level 1 keeps the CPU from holding the stream up; checkpointed memory still compresses well.
 */
export const buildContext = (archive: string, dockerfileText: string): Stream.Stream<Uint8Array, BuildContextError> =>
  Stream.unwrapScoped(
    Effect.acquireRelease(
      Effect.sync(() => {
        const pack = new Pack({
          cwd: dirname(archive),
          gzip: gzipOptions,
          portable: true,
          maxReadSize: readSize
        })
        // Failures reach the reader through the async iterator; this listener only keeps a late one from throwing.
        pack.on("error", () => undefined)
        const text = Buffer.from(dockerfileText, "utf8")
        const entry = new ReadEntry(
          new Header({ path: dockerfileName, type: "File", size: text.length, mode: 0o644, mtime: new Date() })
        )
        entry.end(text)
        pack.add(entry)
        pack.add(basename(archive))
        pack.end()
        return pack
      }),
      // A pack left unfinished reads (and drops) the rest, so that it closes the archive file.
      (pack) => Effect.sync(() => pack.resume())
    ).pipe(
      Effect.map((pack) =>
        Stream.fromAsyncIterable(
          pack,
          (cause) =>
            new BuildContextError({
              message: `cannot read the checkpoint archive ${archive}: ${
                cause instanceof Error ? cause.message : String(cause)
              }`,
              cause
            })
        )
      )
    )
  )

const strategy: KanikoStrategy = {
  name: "kaniko",
  buildTimeout: (settings) => Duration.seconds(settings.kanikoTimeoutSeconds),
  prepare: () => Effect.succeed({ _tag: "Stdin" }),
  stream: Option.some(({ cluster, dockerfile, name, namespace, request }) =>
    cluster.attachStdin(namespace, name, kanikoContainer, buildContext(request.archive, dockerfile)).pipe(
      Effect.mapError((error) =>
        new ImageBuildError({
          phase: "streaming",
          message: `cannot send the build context to Kaniko pod ${namespace}/${name}: ${error.message}`,
          cause: error
        })
      )
    )
  )
}

/** The `kaniko` strategy (the seed's default): the build context goes to the Kaniko pod's stdin over pod attach. */
export const layer: Layer.Layer<ImageBuilder, ConfigError.ConfigError, CheckpointerConfig | Cluster> = Layer.effect(
  ImageBuilder,
  makeKanikoBuilder(strategy)
).pipe(Layer.provide([NodeFileSystem.layer, NodePath.layer]))
