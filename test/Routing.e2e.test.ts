import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Fiber, Layer, Schedule } from "effect"
import { expectNoArchiveLeft, expectRestoredCounterContinues, tagOf } from "./Expectations.ts"
import { startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import type { MultiNodeStack } from "./harness/LocalStack.ts"
import { startMultiNodeStack } from "./harness/LocalStack.ts"
import { call, getResult, postCheckpoint } from "./HttpCalls.ts"

class Nodes extends Context.Tag("test/Nodes")<Nodes, MultiNodeStack>() {}

/** Four nodes on one machine; node-d has a kubelet but no Checkpointer. */
const NodesLive = Layer.scoped(
  Nodes,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpointer-routing-" })
    return yield* startMultiNodeStack({
      dir,
      nodes: ["node-a", "node-b", "node-c", "node-d"],
      withoutCheckpointer: ["node-d"]
    })
  })
).pipe(Layer.provideMerge(NodeContext.layer))

const kubeletCalls = (stack: MultiNodeStack, node: string, pod: string) =>
  stack.cluster.node(node).requests().pipe(
    Effect.map((requests) => requests.filter((request) => request.path.startsWith(`/checkpoint/default/${pod}/`)))
  )

const storedResults = (node: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const stack = yield* Nodes
    const dir = stack.checkpointer(node).env.STORAGE_BASE_PATH!
    return yield* fs.readDirectory(dir).pipe(Effect.orElseSucceed(() => []))
  })

describeE2E("requests reach the Checkpointer on the pod's node", () => {
  layer(NodesLive, { excludeTestServices: true, timeout: "180 seconds" })((it) => {
    it.scoped("a sync request sent to node A for a pod on node C is served by C, and its image restores", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        const { container } = yield* startCounterPod(stack.cluster, {
          namespace: "default",
          name: "route-sync",
          nodeName: "node-c"
        })
        const before = yield* container.waitAbove(10)
        const response = yield* postCheckpoint(stack.checkpointer("node-a").url, "default/route-sync/counter")
        expect(response.status, response.text).toBe(201)
        const image = JSON.parse(response.text).containerImageName
        expect(yield* kubeletCalls(stack, "node-c", "route-sync")).toHaveLength(1)
        expect(yield* kubeletCalls(stack, "node-a", "route-sync")).toHaveLength(0)
        expect(yield* storedResults("node-c")).toContain(`node-c:${tagOf(image)}.json`)
        expect(yield* storedResults("node-a")).not.toContain(`node-a:${tagOf(image)}.json`)
        yield* expectNoArchiveLeft(stack.cluster.node("node-c").checkpointsDir)
        yield* expectRestoredCounterContinues(stack, image, "route-restored-sync", before)
      }))

    it.scoped("an async request sent to B for a pod on C names C; GET of it sent to A is answered by C", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "route-async", nodeName: "node-c" })
        const accepted = yield* postCheckpoint(stack.checkpointer("node-b").url, "default/route-async/counter", {
          async: true
        })
        expect(accepted.status, accepted.text).toBe(202)
        const { checkpointIdentifier } = JSON.parse(accepted.text)
        expect(checkpointIdentifier).toMatch(/^node-c:[0-9a-f]{16}$/)
        const result = yield* getResult(stack.checkpointer("node-a").url, checkpointIdentifier)
        expect(result.status, result.text).toBe(200)
        expect(tagOf(JSON.parse(result.text).containerImageName)).toBe(checkpointIdentifier.split(":")[1])
        expect(yield* storedResults("node-c")).toContain(`${checkpointIdentifier}.json`)
        expect(yield* kubeletCalls(stack, "node-b", "route-async")).toHaveLength(0)
      }))

    it.scoped("with DISABLE_ROUTE_FORWARD=true node A tries locally and answers 404 for a pod it does not have", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "route-local", nodeName: "node-c" })
        const standalone = yield* stack.startCheckpointerOn("node-a", {
          port: stack.port + 1,
          extra: { DISABLE_ROUTE_FORWARD: "true" }
        })
        const response = yield* postCheckpoint(standalone.url, "default/route-local/counter")
        expect(response.status, response.text).toBe(404)
        expect(yield* kubeletCalls(stack, "node-a", "route-local")).toHaveLength(1)
        expect(yield* kubeletCalls(stack, "node-c", "route-local")).toHaveLength(0)
      }))

    it.scoped("a pod on a node without a running Checkpointer answers 404, as does a pod that does not exist", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "route-orphan", nodeName: "node-d" })
        const orphan = yield* postCheckpoint(stack.checkpointer("node-a").url, "default/route-orphan/counter")
        expect(orphan.status).toBe(404)
        expect(orphan.text).toBe("no Checkpointer is running on node node-d, where pod default/route-orphan is")
        const missing = yield* postCheckpoint(stack.checkpointer("node-a").url, "default/route-nobody/counter")
        expect(missing.status).toBe(404)
        expect(missing.text).toBe("pod default/route-nobody does not exist")
        const elsewhere = yield* getResult(stack.checkpointer("node-a").url, "node-z:0123456789abcdef")
        expect(elsewhere.status).toBe(404)
        expect(elsewhere.text).toContain("no Checkpointer is running on node node-z")
      }))

    it.scoped("a request that was already forwarded is never forwarded again", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "route-loop", nodeName: "node-c" })
        const response = yield* call(`${stack.checkpointer("node-a").url}/checkpoint/default/route-loop/counter`, {
          method: "POST",
          headers: { "x-checkpointer-forwarded-from": "node-b" }
        })
        expect(response.status).toBe(421)
        expect(response.text).toContain("already forwarded")
        expect(yield* kubeletCalls(stack, "node-c", "route-loop")).toHaveLength(0)
      }))

    it.scoped("a peer killed mid-request answers 502 and the other nodes keep serving", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "route-crash", nodeName: "node-c" })
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "route-after", nodeName: "node-a" })
        yield* stack.cluster.node("node-c").setFault("hang")
        const pending = yield* Effect.fork(
          postCheckpoint(stack.checkpointer("node-b").url, "default/route-crash/counter")
        )
        yield* kubeletCalls(stack, "node-c", "route-crash").pipe(
          Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: (calls) => calls.length > 0 }),
          Effect.timeout("30 seconds")
        )
        yield* stack.checkpointer("node-c").kill
        const answer = yield* Fiber.join(pending)
        expect(answer.status).toBe(502)
        expect(answer.text).toContain("the Checkpointer on node node-c")
        yield* stack.cluster.node("node-c").setFault(null)
        const after = yield* postCheckpoint(stack.checkpointer("node-b").url, "default/route-after/counter")
        expect(after.status, after.text).toBe(201)
        expect((yield* call(`${stack.checkpointer("node-a").url}/healthz`)).text).toBe("ok")
      }))
  })
})
