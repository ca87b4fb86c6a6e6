// Checkpoints a container twice through the typed client: synchronously, then asynchronously (deleting the pod)
// while waiting for the result. Run: CHECKPOINTER_URL=http://localhost:3333 node --import tsx checkpoint.ts NS POD CONTAINER
import { CheckpointerClient } from "@checkpointer/client"
import { NodeRuntime } from "@effect/platform-node"
import { Config, Console, Effect, Layer } from "effect"

const [namespace = "default", pod = "counter", container = "counter"] = process.argv.slice(2)

const program = Effect.gen(function*() {
  const checkpointer = yield* CheckpointerClient

  // Answers when the image is in the registry.
  const first = yield* checkpointer.checkpoint({ namespace, pod, container })
  yield* Console.log(`image ${first.containerImageName} (${first.containerImageDigest})`)

  // Answers at once with an identifier; waitFor waits until the image is pushed or the checkpoint failed.
  const { checkpointIdentifier } = yield* checkpointer.checkpoint(
    { namespace, pod, container },
    { async: true, deletePod: true }
  )
  const second = yield* checkpointer.waitFor(checkpointIdentifier, { timeout: "10 minutes" })
  yield* Console.log(`image ${second.containerImageName}, pod ${namespace}/${pod} deleted`)
}).pipe(
  // Failures are typed: ContainerNotFound, CheckpointFailed, ... or CheckpointerRequestFailed (no answer).
  Effect.tapErrorTag("ContainerNotFound", (error) => Console.error(`no such container: ${error.message}`))
)

const ClientLive = Layer.unwrapEffect(
  Config.string("CHECKPOINTER_URL").pipe(
    Config.withDefault("http://localhost:3333"),
    Effect.map((baseUrl) => CheckpointerClient.layer({ baseUrl }))
  )
)

program.pipe(Effect.provide(ClientLive), NodeRuntime.runMain)
