import { builderConfig } from "@checkpointer/core"
import type { BuilderName, ImageBuilder, KubernetesApiError } from "@checkpointer/core"
import type { FileSystem, Path } from "@effect/platform"
import { Effect, Layer } from "effect"
import type { ConfigError } from "effect"
import * as KanikoFsImageBuilder from "./kaniko/KanikoFsImageBuilder.ts"
import * as KanikoImageBuilder from "./kaniko/KanikoImageBuilder.ts"
import * as NativeImageBuilder from "./native/NativeImageBuilder.ts"

/** The layer of the named strategy, configured by its own variables. */
export const builderLayer = (builder: BuilderName): Layer.Layer<
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

/** The ImageBuilder that CHECKPOINT_BUILDER (or USE_KANIKO_FS) selects: the server's choice. */
export const ImageBuilderLayer = Layer.unwrapEffect(Effect.map(builderConfig, builderLayer))
