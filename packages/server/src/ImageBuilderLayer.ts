import { CheckpointerConfig } from "@checkpointer/core"
import { NativeImageBuilder } from "@checkpointer/strategies"
import { Data, Effect, Layer } from "effect"

export class BuilderUnavailable extends Data.TaggedError("BuilderUnavailable")<{ readonly message: string }> {}

/** The ImageBuilder that CHECKPOINT_BUILDER (or USE_KANIKO_FS) selects. */
export const ImageBuilderLayer = Layer.unwrapEffect(
  Effect.gen(function*() {
    const { builder } = yield* CheckpointerConfig
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
  })
)
