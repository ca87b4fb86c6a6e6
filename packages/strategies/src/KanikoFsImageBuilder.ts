import { FileSystem, Path } from "@effect/platform"
import { ImageBuildError, ImageBuilder } from "@checkpointer/core"
import type { CheckpointerConfig, Cluster } from "@checkpointer/core"
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { Duration, Effect, Layer, Option } from "effect"
import type { ConfigError } from "effect"
import { dockerfileName, makeKanikoBuilder } from "./KanikoPod.ts"
import type { KanikoStrategy } from "./KanikoPod.ts"
import { platformReason } from "./RegistryAuth.ts"

const strategy: KanikoStrategy = {
  name: "kaniko-fs",
  buildTimeout: ({ kanikoTimeoutSeconds }) => Duration.seconds(2 * kanikoTimeoutSeconds),
  prepare: ({ dockerfile, request, settings }) =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      yield* fs.makeDirectory(settings.kanikoBuildContextDir, { recursive: true })
      const dir = yield* Effect.acquireRelease(
        fs.makeTempDirectory({ directory: settings.kanikoBuildContextDir, prefix: "checkpoint-" }),
        (dir) =>
          fs.remove(dir, { recursive: true }).pipe(
            Effect.tapError((error) =>
              Effect.logWarning("could not remove the build context").pipe(
                Effect.annotateLogs({ dir, error: platformReason(error) })
              )
            ),
            Effect.ignore
          )
      )
      yield* fs.writeFileString(path.join(dir, dockerfileName), dockerfile)
      const target = path.join(dir, path.basename(request.archive))
      // A hard link costs nothing; another filesystem needs a copy.
      yield* fs.link(request.archive, target).pipe(Effect.orElse(() => fs.copyFile(request.archive, target)))
      return { _tag: "HostPath" as const, path: dir, nodeName: settings.node }
    }).pipe(
      Effect.mapError((error) =>
        new ImageBuildError({
          phase: "build context",
          message: `cannot prepare the build context under ${settings.kanikoBuildContextDir}: ${platformReason(error)}`,
          cause: error
        })
      )
    ),
  stream: Option.none()
}

/**
 * The `kaniko-fs` strategy (the seed's USE_KANIKO_FS=true): the build context is written to a fresh directory under
 * KANIKO_BUILD_CTX_DIR, which a Kaniko pod pinned to this node mounts as a hostPath volume.
 */
export const layer: Layer.Layer<ImageBuilder, ConfigError.ConfigError, CheckpointerConfig | Cluster> = Layer.effect(
  ImageBuilder,
  makeKanikoBuilder(strategy)
).pipe(Layer.provide([NodeFileSystem.layer, NodePath.layer]))
