import { ImageBuildError, ImageBuilder } from "@checkpointer/core"
import type { CheckpointerConfig, Cluster } from "@checkpointer/core"
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { Duration, Effect, Layer, Option } from "effect"
import type { ConfigError } from "effect"
import { buildContext, describeContextArchive } from "./KanikoContext.ts"
import { kanikoContainer, makeKanikoBuilder } from "./KanikoPod.ts"
import type { KanikoStrategy } from "./KanikoPod.ts"

const strategy: KanikoStrategy = {
  name: "kaniko",
  buildTimeout: (settings) => Duration.seconds(settings.kanikoTimeoutSeconds),
  prepare: ({ format, request }) =>
    describeContextArchive(request.archive, format).pipe(
      Effect.map((archive) => ({ context: { _tag: "Stdin" as const }, archive })),
      Effect.mapError((error) => new ImageBuildError({ phase: "read archive", message: error.message, cause: error }))
    ),
  stream: Option.some(({ archive, cluster, files, name, namespace }) =>
    cluster.attachStdin(namespace, name, kanikoContainer, buildContext(archive, files)).pipe(
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

/**
 * The `kaniko` strategy (the seed's default): the build context goes to the Kaniko pod's stdin over pod attach, as a
 * tar.gz made while it is sent.
 */
export const layer: Layer.Layer<ImageBuilder, ConfigError.ConfigError, CheckpointerConfig | Cluster> = Layer.effect(
  ImageBuilder,
  makeKanikoBuilder(strategy)
).pipe(Layer.provide([NodeFileSystem.layer, NodePath.layer]))
