import {
  CheckpointDirectory,
  Checkpointer,
  checkpointerConfig,
  Cluster,
  describeConfigError,
  KubeletService,
  PodEvents,
  Readiness,
  ResultStore,
  ServerConfig
} from "@checkpointer/core"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Data, Duration, Effect, Layer, Logger, LogLevel } from "effect"
import { HttpServerLive } from "./http/HttpServer.ts"
import { ImageBuilderLayer } from "./ImageBuilderLayer.ts"
import { ImageRetentionLayer } from "./ImageRetentionLayer.ts"
import { TracingLive } from "./Tracing.ts"

class StartupError extends Data.TaggedError("StartupError")<{ readonly message: string }> {}

/** Every variable read once before any service starts: every problem is listed at once. */
const ConfigChecked = Layer.effectDiscard(checkpointerConfig)

const CheckpointerLive = Layer.mergeAll(Checkpointer.Default, Readiness.Default).pipe(
  Layer.provide([
    KubeletService.Default,
    CheckpointDirectory.Default,
    ImageBuilderLayer,
    ImageRetentionLayer,
    PodEvents.Default
  ]),
  Layer.provideMerge(ResultStore.File),
  Layer.provideMerge(Cluster.Default)
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
  Layer.provide(ConfigChecked),
  Layer.provide(NodeContext.layer)
)

Layer.launch(MainLive).pipe(
  Effect.catchTag(
    "ConfigError",
    (error) => new StartupError({ message: `invalid configuration:\n  ${describeConfigError(error).join("\n  ")}` })
  ),
  NodeRuntime.runMain
)
