import {
  Checkpointer,
  checkpointerLayer,
  ConfigurationChecked,
  describingConfigErrors,
  Restorer,
  ResultStore,
  ServerConfig
} from "@checkpointer/core"
import { ImageBuilderLayer, RegistryImages } from "@checkpointer/strategies"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Duration, Effect, Layer, Logger, LogLevel } from "effect"
import { HttpServerLive } from "./http/HttpServer.ts"
import { ImageRetentionLayer } from "./ImageRetentionLayer.ts"
import { TracingLive } from "./Tracing.ts"

const CheckpointerLive = Restorer.Default.pipe(
  Layer.provide(RegistryImages.layer),
  Layer.provideMerge(checkpointerLayer({
    imageBuilder: ImageBuilderLayer,
    imageRetention: ImageRetentionLayer,
    resultStore: ResultStore.File
  }))
)

const LoggerLive = Layer.unwrapEffect(
  ServerConfig.pipe(
    Effect.map(({ production }) =>
      production
        // NodeRuntime.runMain has put its pretty logger in place of the default one: JSON lines only.
        ? Layer.mergeAll(Logger.json, Logger.remove(Logger.prettyLoggerDefault), Logger.minimumLogLevel(LogLevel.Info))
        : Layer.merge(Logger.pretty, Logger.minimumLogLevel(LogLevel.Debug))
    )
  )
)

/**
 * On SIGTERM, before the HTTP server closes: new checkpoints are refused (503), running ones get
 * SHUTDOWN_GRACE_SECONDS to finish, the rest are recorded as interrupted. Built after the server, so released
 * before it.
 */
const DrainOnShutdown = Layer.scopedDiscard(
  Effect.gen(function*() {
    const checkpointer = yield* Checkpointer
    const { shutdownGraceSeconds } = yield* ServerConfig
    yield* Effect.addFinalizer(() => checkpointer.drain(Duration.seconds(shutdownGraceSeconds)))
  })
)

const MainLive = DrainOnShutdown.pipe(
  Layer.provide(HttpServerLive),
  Layer.provide(CheckpointerLive),
  Layer.provide(TracingLive),
  Layer.provide(LoggerLive),
  Layer.provide(ServerConfig.Default),
  Layer.mapError(describingConfigErrors),
  Layer.provide(ConfigurationChecked),
  Layer.provide(NodeContext.layer)
)

Layer.launch(MainLive).pipe(NodeRuntime.runMain)
