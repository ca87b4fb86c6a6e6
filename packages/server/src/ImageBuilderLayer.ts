import { CheckpointerConfig, Cluster } from "@checkpointer/core"
import type { BuilderName, ImageBuilder, KubernetesApiError } from "@checkpointer/core"
import { KanikoFsImageBuilder, KanikoImageBuilder, NativeImageBuilder } from "@checkpointer/strategies"
import { Effect, Layer } from "effect"
import type { ConfigError } from "effect"

const builderLayer = (
  builder: BuilderName
): Layer.Layer<ImageBuilder, ConfigError.ConfigError | KubernetesApiError, CheckpointerConfig> => {
  switch (builder) {
    case "native":
      return NativeImageBuilder.layer
    case "kaniko":
      return KanikoImageBuilder.layer.pipe(Layer.provide(Cluster.Default))
    case "kaniko-fs":
      return KanikoFsImageBuilder.layer.pipe(Layer.provide(Cluster.Default))
  }
}

/** The ImageBuilder that CHECKPOINT_BUILDER (or USE_KANIKO_FS) selects. */
export const ImageBuilderLayer = Layer.unwrapEffect(
  CheckpointerConfig.pipe(Effect.map(({ builder }) => builderLayer(builder)))
)
