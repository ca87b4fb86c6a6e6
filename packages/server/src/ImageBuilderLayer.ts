import { ServerConfig } from "@checkpointer/core"
import type { BuilderName, ImageBuilder, KubernetesApiError } from "@checkpointer/core"
import { KanikoFsImageBuilder, KanikoImageBuilder, NativeImageBuilder } from "@checkpointer/strategies"
import type { FileSystem, Path } from "@effect/platform"
import { Effect, Layer } from "effect"
import type { ConfigError } from "effect"

const builderLayer = (builder: BuilderName): Layer.Layer<
  ImageBuilder,
  ConfigError.ConfigError | KubernetesApiError,
  FileSystem.FileSystem | Path.Path
> => {
  switch (builder) {
    case "native":
      return NativeImageBuilder.layer
    case "kaniko":
      return KanikoImageBuilder.layer
    case "kaniko-fs":
      return KanikoFsImageBuilder.layer
  }
}

/** The ImageBuilder that CHECKPOINT_BUILDER (or USE_KANIKO_FS) selects. */
export const ImageBuilderLayer = Layer.unwrapEffect(
  ServerConfig.pipe(Effect.map(({ builder }) => builderLayer(builder)))
)
