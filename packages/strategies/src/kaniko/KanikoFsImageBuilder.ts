import { ImageBuildError, reasonOf } from "@checkpointer/core"
import { FileSystem, Path } from "@effect/platform"
import { Duration, Effect, Option, Stream } from "effect"
import { kanikoBuilderLayers } from "./KanikoBuilder.ts"
import type { KanikoStrategy } from "./KanikoBuilder.ts"
import { contextArchiveBytes } from "./KanikoContext.ts"

const strategy: KanikoStrategy = {
  name: "kaniko-fs",
  buildTimeout: ({ timeoutSeconds }) => Duration.seconds(2 * timeoutSeconds),
  prepare: ({ files, format, request, settings }) =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      yield* fs.makeDirectory(settings.buildContextDir, { recursive: true })
      const dir = yield* Effect.acquireRelease(
        fs.makeTempDirectory({ directory: settings.buildContextDir, prefix: "checkpoint-" }),
        (dir) =>
          fs.remove(dir, { recursive: true }).pipe(
            Effect.tapError((error) =>
              Effect.logWarning("could not remove the build context").pipe(
                Effect.annotateLogs({ dir, error: reasonOf(error) })
              )
            ),
            Effect.ignore
          )
      )
      yield* Effect.forEach(files, (file) => fs.writeFileString(path.join(dir, file.name), file.text))
      const name = path.basename(request.archive)
      const target = path.join(dir, name)
      yield* format === "zstd"
        // ADD cannot extract zstd: the context holds the plain tar, decompressed while it is written.
        ? Stream.run(contextArchiveBytes(request.archive, format), fs.sink(target))
        // A hard link costs nothing; another filesystem needs a copy.
        : fs.link(request.archive, target).pipe(Effect.orElse(() => fs.copyFile(request.archive, target)))
      const size = Number((yield* fs.stat(target)).size)
      return {
        context: { _tag: "HostPath" as const, path: dir, nodeName: settings.node },
        archive: { path: target, name, size, compression: "none" as const }
      }
    }).pipe(
      Effect.mapError((error) =>
        new ImageBuildError({
          step: "build context",
          message: `cannot prepare the build context under ${settings.buildContextDir}: ${
            error._tag === "BuildContextError" ? error.message : reasonOf(error)
          }`,
          cause: error
        })
      )
    ),
  stream: Option.none()
}

/**
 * The `kaniko-fs` strategy (the Go service's USE_KANIKO_FS=true): the build context is written to a fresh directory
 * under KANIKO_BUILD_CTX_DIR, which a Kaniko pod pinned to this node mounts as a hostPath volume.
 */
export const { layer, layerWithoutDependencies } = kanikoBuilderLayers(strategy)
