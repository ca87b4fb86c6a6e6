// Checkpoints a container in this process through the library, without a Checkpointer server: the kubelet at
// CHECKPOINTER_NODE_IP writes the archive, the builder CHECKPOINT_BUILDER names pushes it as an image.
// Settings come from the environment, as the server's do; the image goes to stdout, logs to stderr.
// Run: node checkpoint.ts NAMESPACE POD CONTAINER
import {
  Checkpointer,
  checkpointerLayer,
  CheckpointOptions,
  CheckpointResult,
  ContainerRef,
  ResultStore
} from "@checkpointer/core"
import { ImageBuilderLayer } from "@checkpointer/strategies"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Layer, Logger, Schema } from "effect"

const [namespace = "default", pod = "counter", container = "counter"] = process.argv.slice(2)

const program = Effect.gen(function*() {
  const checkpointer = yield* Checkpointer
  const target = yield* Schema.decodeUnknown(ContainerRef)({ namespace, pod, container })

  // Answers once the image is in the registry; with { async: true } it would answer an identifier for `result`.
  const result = yield* checkpointer.checkpoint(target, new CheckpointOptions({})).pipe(
    Effect.filterOrDie(Schema.is(CheckpointResult), () => "a synchronous checkpoint answers its result")
  )
  yield* Console.log(`${result.containerImageName}@${result.containerImageDigest}`)
})

const CheckpointerLive = checkpointerLayer({ imageBuilder: ImageBuilderLayer, resultStore: ResultStore.Memory })
const LogsToStderr = Logger.replace(Logger.defaultLogger, Logger.prettyLogger({ stderr: true }))

program.pipe(
  Effect.provide(CheckpointerLive.pipe(Layer.provide(NodeContext.layer))),
  Effect.tapErrorCause(Effect.logError),
  Effect.provide(LogsToStderr),
  NodeRuntime.runMain({ disablePrettyLogger: true, disableErrorReporting: true })
)
