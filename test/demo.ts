/**
 * The local demo (README's first command): a real registry, a real node (CRI-O with CRIU) behind a kubelet endpoint,
 * the simulated API server and Checkpointer started with `pnpm start`. A counter pod is checkpointed through the HTTP
 * API (sync, then async + GET) and each checkpoint is restored through the API (`POST /restore`, from the image name,
 * then from the identifier): CRI-O restores it as a new pod, which goes on counting.
 */
import { FileSystem } from "@effect/platform"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Logger, LogLevel } from "effect"
import type { Counter } from "./harness/Cluster.ts"
import { counterOf, deletedOnClose, startCounterPod } from "./harness/Cluster.ts"
import type { LocalStack } from "./harness/LocalStack.ts"
import { startLocalStack } from "./harness/LocalStack.ts"
import type { Answer } from "./HttpCalls.ts"
import { getResult, postCheckpoint, postRestore } from "./HttpCalls.ts"

const bold = (text: string) => `\u001b[1m${text}\u001b[0m`
const step = (text: string) => Console.log(`\n${bold(`==> ${text}`)}`)
const show = (request: string, answer: Answer) =>
  Console.log(`${request}\n<- ${answer.status}  ${answer.contentType}\n${indentJson(answer.text)}`)
const indentJson = (text: string) => {
  try {
    return JSON.stringify(JSON.parse(text), null, 2).replace(/^/gm, "   ")
  } catch {
    return `   ${text}`
  }
}

const counterValues = (counter: Counter, count: number) =>
  Effect.forEach(Array.from({ length: count }), () => Effect.zipLeft(counter.value, Effect.sleep("400 millis")))

const restoreAndWatch = (
  stack: LocalStack,
  source: { readonly image: string } | { readonly checkpointIdentifier: string },
  name: string,
  valueAtCheckpoint: number
) =>
  Effect.gen(function*() {
    yield* step(`Restore through the HTTP API as pod ${name}; ${stack.cluster.runtime.version} pulls and restores it`)
    const body = { ...source, pod: name }
    const answer = yield* postRestore(stack.checkpointer.url, body)
    yield* show(`-> POST ${stack.checkpointer.url}/restore ${JSON.stringify(body)}`, answer)
    if (answer.status !== 201) return yield* Effect.fail(new Error(`restore failed: ${answer.status} ${answer.text}`))
    yield* deletedOnClose(stack.cluster, "default", name)
    const restored = yield* stack.cluster.agent.restored("default", name, "counter")
    yield* Console.log(`pod ${name} is running; CRI-O says its container was restored from a checkpoint: ${restored}`)
    const values = yield* counterValues(counterOf(stack.cluster, "default", name), 5)
    yield* Console.log(`counter when checkpointed: ${valueAtCheckpoint}; restored counter: ${values.join(", ")}`)
    if (values[0]! < valueAtCheckpoint || values[values.length - 1]! <= values[0]!) {
      return yield* Effect.fail(new Error(`the restored counter did not continue from ${valueAtCheckpoint}`))
    }
    yield* Console.log(
      bold(`the restored container went on counting from ${values[0]} (a fresh start would begin at 1)`)
    )
  })

const demo = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpointer-demo-" })

  yield* step("Start a real registry, the simulated Kubernetes API server, a CRI-O node with CRIU, and Checkpointer")
  // The node pulls checkpoint images with its own registry credentials, as a kubelet configured for the registry does.
  const stack = yield* startLocalStack({ dir, registryAuth: "token", viaPnpm: true, nodesPullCheckpoints: true })
  yield* Console.log(`registry:           https://${stack.registry.host} (docker-registry, TLS, token auth)`)
  const { apiServer, runtime } = stack.cluster
  yield* Console.log(`API server:         ${apiServer.url} (simulated; kubeconfig ${apiServer.kubeconfigPath})`)
  yield* Console.log(`kubelet of node-a:  ${stack.node.url} (client certificate required; ${runtime.version} + CRIU)`)
  yield* Console.log(`Checkpointer:       ${stack.checkpointer.url}, started as:`)
  yield* Console.log(
    Object.entries(stack.checkpointer.env).map(([key, value]) => `  ${key}=${value} \\`).join("\n") + "\n  pnpm start"
  )

  yield* step(`Run a counter pod on node-a (image ${stack.cluster.workloads.counterImage}: 1, 2, 3, ... every 0.2 s)`)
  const { container } = yield* startCounterPod(stack.cluster, {
    namespace: "default",
    name: "counter",
    nodeName: "node-a"
  })
  yield* Console.log(`counter: ${(yield* counterValues(container, 4)).join(", ")}`)
  yield* container.waitAbove(15)

  yield* step("Synchronous checkpoint through the HTTP API")
  const before = yield* container.value
  const sync = yield* postCheckpoint(stack.checkpointer.url, "default/counter/counter")
  yield* show(`-> POST ${stack.checkpointer.url}/checkpoint/default/counter/counter  (counter was at ${before})`, sync)
  if (sync.status !== 201) return yield* Effect.fail(new Error(`checkpoint failed: ${sync.status} ${sync.text}`))
  const syncResult = JSON.parse(sync.text)
  yield* Console.log(`image ${syncResult.containerImageName}\ndigest ${syncResult.containerImageDigest}`)
  yield* restoreAndWatch(stack, { image: syncResult.containerImageName }, "counter-restored-sync", before)

  yield* step("Asynchronous checkpoint, then GET of its result")
  const beforeAsync = yield* container.value
  const accepted = yield* postCheckpoint(stack.checkpointer.url, "default/counter/counter", { async: true })
  yield* show(`-> POST ${stack.checkpointer.url}/checkpoint/default/counter/counter {"async": true}`, accepted)
  const { checkpointIdentifier } = JSON.parse(accepted.text)
  const result = yield* getResult(stack.checkpointer.url, checkpointIdentifier)
  yield* show(`-> GET ${stack.checkpointer.url}/checkpoint?checkpointIdentifier=${checkpointIdentifier}`, result)
  if (result.status !== 200) return yield* Effect.fail(new Error(`checkpoint failed: ${result.status} ${result.text}`))
  const asyncResult = JSON.parse(result.text)
  yield* Console.log(`digest ${asyncResult.containerImageDigest}`)
  yield* restoreAndWatch(stack, { checkpointIdentifier }, "counter-restored-async", beforeAsync)

  yield* step("Clean up: pods, runtime, registries, API server, node and Checkpointer stop")
})

demo.pipe(
  Effect.scoped,
  Effect.zipRight(Console.log(`\n${bold("demo finished: everything it started is stopped and removed")}`)),
  Effect.provide(NodeContext.layer),
  Logger.withMinimumLogLevel(LogLevel.Warning),
  NodeRuntime.runMain
)
