import { CheckpointerConfig } from "@checkpointer/core"
import type { BuilderName, ImageBuilder } from "@checkpointer/core"
import { NativeImageBuilder } from "@checkpointer/strategies"
import { Data, Effect, Layer } from "effect"
import type { ConfigError } from "effect"

export class BuilderUnavailable extends Data.TaggedError("BuilderUnavailable")<{ readonly message: string }> {}

const builderLayer = (builder: BuilderName): Layer.Layer<ImageBuilder, ConfigError.ConfigError | BuilderUnavailable> => {
  switch (builder) {
    case "native":
      return NativeImageBuilder.layer
    case "kaniko":
    case "kaniko-fs":
      return Layer.fail(
        new BuilderUnavailable({
          message: `CHECKPOINT_BUILDER=${builder} is not available yet in this version; set CHECKPOINT_BUILDER=native`
        })
      )
  }
}

/** The ImageBuilder that CHECKPOINT_BUILDER (or USE_KANIKO_FS) selects. */
export const ImageBuilderLayer = Layer.unwrapEffect(
  CheckpointerConfig.pipe(Effect.map(({ builder }) => builderLayer(builder)))
)
