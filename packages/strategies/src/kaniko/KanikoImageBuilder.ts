import { ImageBuildError } from "@checkpointer/core"
import { Duration, Effect, Option } from "effect"
import { kanikoBuilderLayers, kanikoContainer } from "./KanikoBuilder.ts"
import type { KanikoStrategy } from "./KanikoBuilder.ts"
import { buildContext, describeContextArchive } from "./KanikoContext.ts"

const strategy: KanikoStrategy = {
  name: "kaniko",
  buildTimeout: (settings) => Duration.seconds(settings.timeoutSeconds),
  prepare: ({ format, request }) =>
    describeContextArchive(request.archive, format).pipe(
      Effect.map((archive) => ({ context: { _tag: "Stdin" as const }, archive })),
      Effect.mapError((error) => new ImageBuildError({ step: "read archive", message: error.message, cause: error }))
    ),
  stream: Option.some(({ archive, files, name, namespace, pods }) =>
    pods.attachStdin(namespace, name, kanikoContainer, buildContext(archive, files)).pipe(
      Effect.mapError((error) =>
        new ImageBuildError({
          step: "streaming",
          message: `cannot send the build context to Kaniko pod ${namespace}/${name}: ${error.message}`,
          cause: error
        })
      )
    )
  )
}

/**
 * The `kaniko` strategy (the Go service's default): the build context goes to the Kaniko pod's stdin over pod attach,
 * as a tar.gz made while it is sent.
 */
export const { layer, layerWithoutDependencies } = kanikoBuilderLayers(strategy)
