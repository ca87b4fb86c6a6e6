import { NodeContext, NodeRuntime } from "@effect/platform-node"
import {
  Checkpointer,
  CheckpointerConfig,
  Cluster,
  describeConfigError,
  KubeletService,
  NodeRouter,
  ResultStore
} from "@checkpointer/core"
import { Data, Effect, Layer, Logger, LogLevel } from "effect"
import { HttpServerLive } from "./HttpServer.ts"
import { ImageBuilderLayer } from "./ImageBuilderLayer.ts"

class StartupError extends Data.TaggedError("StartupError")<{ readonly message: string }> {}

const CheckpointerLive = Layer.merge(Checkpointer.Default, NodeRouter.Default).pipe(
  Layer.provide([KubeletService.DefaultWithoutDependencies, ResultStore.File, ImageBuilderLayer]),
  Layer.provide(Cluster.Default)
)

const LoggerLive = Layer.unwrapEffect(
  CheckpointerConfig.pipe(
    Effect.map(({ production }) =>
      production
        ? Layer.merge(Logger.json, Logger.minimumLogLevel(LogLevel.Info))
        : Layer.merge(Logger.pretty, Logger.minimumLogLevel(LogLevel.Debug))
    )
  )
)

const MainLive = HttpServerLive.pipe(
  Layer.provide(CheckpointerLive),
  Layer.provide(LoggerLive),
  Layer.provide(CheckpointerConfig.Default),
  Layer.provide(NodeContext.layer)
)

Layer.launch(MainLive).pipe(
  Effect.catchTag("ConfigError", (error) =>
    new StartupError({ message: `invalid configuration:\n  ${describeConfigError(error).join("\n  ")}` })),
  NodeRuntime.runMain
)
