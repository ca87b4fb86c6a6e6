import { describeConfigError, ImageBuilder } from "@checkpointer/core"
import { ImageBuilderLayer } from "@checkpointer/strategies"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Layer } from "effect"

const withSettings = (settings: Record<string, string>) =>
  Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(settings))))

const builderName = (settings: Record<string, string>) =>
  Effect.map(ImageBuilder, (builder) => builder.name).pipe(
    Effect.provide(ImageBuilderLayer.pipe(Layer.provide(withSettings(settings)))),
    Effect.provide(NodeContext.layer)
  )

describe("ImageBuilderLayer", () => {
  it.effect("builds the builder CHECKPOINT_BUILDER names, from the settings given", () =>
    Effect.gen(function*() {
      expect(yield* builderName({ CHECKPOINT_BUILDER: "native" })).toBe("native")
    }))

  it.effect("refuses a CHECKPOINT_BUILDER that contradicts USE_KANIKO_FS=true, as the server does", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(builderName({ CHECKPOINT_BUILDER: "native", USE_KANIKO_FS: "true" }))
      expect(error._tag).toBe("ConfigError")
      expect(error._tag === "ConfigError" && describeConfigError(error)).toEqual([
        "CHECKPOINT_BUILDER: CHECKPOINT_BUILDER=native contradicts USE_KANIKO_FS=true (which selects kaniko-fs)"
      ])
    }))
})
