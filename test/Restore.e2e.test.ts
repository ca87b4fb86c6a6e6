import { FileSystem, Path } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Option } from "effect"
import { podEvents, tagOf } from "./Expectations.ts"
import { freePort, startCheckpointer } from "./harness/CheckpointerProcess.ts"
import type { LocalCluster } from "./harness/Cluster.ts"
import {
  counterOf,
  counterPodManifest,
  deletedOnClose,
  runPod,
  startCounterPod,
  startLocalCluster
} from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import type { MultiNodeStack } from "./harness/LocalStack.ts"
import { checkpointerEnv, startMultiNodeStack } from "./harness/LocalStack.ts"
import { getResult, postCheckpoint, postRestore } from "./HttpCalls.ts"
import { kubectlCheckpoint } from "./KubectlPlugin.ts"

class Nodes extends Context.Tag("test/RestoreNodes")<Nodes, MultiNodeStack>() {}

/** Two nodes whose kubelets hold the checkpoint registry's credentials (restored pods need no pull secret). */
const NodesLive = Layer.scoped(
  Nodes,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpointer-restore-" })
    return yield* startMultiNodeStack({ dir, nodes: ["node-a", "node-b"], nodesPullCheckpoints: true })
  })
).pipe(Layer.provideMerge(NodeContext.layer))

/** Checkpoints a running counter through node-a's Checkpointer; answers the identifier, image and counter value. */
const checkpointCounter = (stack: MultiNodeStack, name: string, nodeName = "node-a") =>
  Effect.gen(function*() {
    const { container } = yield* startCounterPod(stack.cluster, { namespace: "default", name, nodeName })
    const before = yield* container.waitAbove(5)
    const accepted = yield* postCheckpoint(stack.checkpointer("node-a").url, `default/${name}/counter`, {
      async: true
    })
    expect(accepted.status, accepted.text).toBe(202)
    const identifier: string = JSON.parse(accepted.text).checkpointIdentifier
    const result = yield* getResult(stack.checkpointer("node-a").url, identifier)
    expect(result.status, result.text).toBe(200)
    return { identifier, image: JSON.parse(result.text).containerImageName as string, before }
  })

/** The runtime restored the pod's container (CRI-O says so) and its counter goes on from `before`. */
const expectCountsOn = (cluster: LocalCluster, namespace: string, pod: string, before: number) =>
  Effect.gen(function*() {
    expect(yield* cluster.agent.restored(namespace, pod, "counter")).toBe(true)
    const counter = counterOf(cluster, namespace, pod)
    const first = yield* counter.value
    expect(first).toBeGreaterThanOrEqual(before)
    expect(yield* counter.waitAbove(first + 2)).toBeGreaterThan(first)
    return first
  })

describeE2E("restore through the API on the real runtime", () => {
  layer(NodesLive, { excludeTestServices: true, timeout: "240 seconds" })((it) => {
    it.scoped("a counter checkpointed on node-a is restored on node-b and counts on from its value", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        const { before, identifier, image } = yield* checkpointCounter(stack, "move-me")
        const answer = yield* postRestore(stack.checkpointer("node-b").url, {
          checkpointIdentifier: identifier,
          node: "node-b"
        })
        expect(answer.status, answer.text).toBe(201)
        const result = JSON.parse(answer.text)
        yield* deletedOnClose(stack.cluster, "default", result.pod)
        expect(result).toMatchObject({ namespace: "default", node: "node-b", image, container: "counter" })
        expect(result.pod).toMatch(/^move-me-restored-[0-9a-f]{6}$/)
        const first = yield* expectCountsOn(stack.cluster, "default", result.pod, before)
        yield* Effect.log(`counter ${before} when checkpointed on node-a, ${first} restored on node-b`)
        const pod = Option.getOrThrow(yield* stack.cluster.apiServer.findPod("default", result.pod))
        expect(pod.spec.nodeName).toBe("node-b")
        expect(pod.metadata.labels?.["checkpointer.io/restored-from"]).toBe(tagOf(image))
        const events = yield* podEvents(stack.cluster, "default", result.pod, "Restored")
        expect(events.map((event) => event.reason)).toContain("Started")
        const restored = events.find((event) => event.reason === "Restored")
        expect(restored?.message).toMatch(/^Restored container counter from \S+ in \d+\.\d s$/)
        expect(restored?.involvedObject).toMatchObject({ name: result.pod, uid: pod.metadata.uid })
        expect(restored?.source).toEqual({ component: "checkpointer", host: "node-b" })
      }))

    it.scoped("an image name alone is enough: the scheduler places the pod", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        const { before, image } = yield* checkpointCounter(stack, "by-name")
        const answer = yield* postRestore(stack.checkpointer("node-b").url, { image, pod: "by-name-copy" })
        expect(answer.status, answer.text).toBe(201)
        yield* deletedOnClose(stack.cluster, "default", "by-name-copy")
        // The harness's scheduler takes the first node that fits, by name.
        expect(JSON.parse(answer.text)).toMatchObject({ pod: "by-name-copy", node: "node-a", image })
        yield* expectCountsOn(stack.cluster, "default", "by-name-copy", before)
      }))

    it.scoped("async, into another namespace: 202, then the result from any node", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        const { before, identifier } = yield* checkpointCounter(stack, "forensic")
        const accepted = yield* postRestore(stack.checkpointer("node-b").url, {
          checkpointIdentifier: identifier,
          namespace: "quarantine",
          pod: "forensic-copy",
          async: true
        })
        expect(accepted.status, accepted.text).toBe(202)
        yield* deletedOnClose(stack.cluster, "quarantine", "forensic-copy")
        const restoreIdentifier: string = JSON.parse(accepted.text).checkpointIdentifier
        expect(restoreIdentifier).toMatch(/^node-b:[0-9a-f]{16}$/)
        const result = yield* getResult(stack.checkpointer("node-a").url, restoreIdentifier)
        expect(result.status, result.text).toBe(200)
        expect(JSON.parse(result.text)).toMatchObject({ namespace: "quarantine", pod: "forensic-copy" })
        yield* expectCountsOn(stack.cluster, "quarantine", "forensic-copy", before)
      }))

    it.scoped("kubectl checkpoint POD --migrate --to node-b: checkpointed, deleted, the same pod counts on there", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        const { container } = yield* startCounterPod(stack.cluster, {
          namespace: "default",
          name: "migrant",
          nodeName: "node-a"
        })
        const before = yield* container.waitAbove(5)
        const env = { KUBECONFIG: stack.cluster.apiServer.kubeconfigPath }
        const url = stack.checkpointer("node-a").url
        const migrated = yield* kubectlCheckpoint(["migrant", "--migrate", "--to", "node-b", "--url", url], env)
        expect(migrated.code, migrated.stderr).toBe(0)
        expect(migrated.stdout.trim()).toBe("default/migrant")
        expect(migrated.stderr).toContain("checkpointed default/migrant/counter in ")
        expect(migrated.stderr).toContain(", pod deleted")
        expect(migrated.stderr).toMatch(/restored default\/migrant\/counter as default\/migrant on node node-b in /)
        const pod = Option.getOrThrow(yield* stack.cluster.apiServer.findPod("default", "migrant"))
        expect(pod.spec.nodeName).toBe("node-b")
        yield* expectCountsOn(stack.cluster, "default", "migrant", before)
      }))

    it.scoped("kubectl checkpoint restore IDENTIFIER --name ... prints the restored pod", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        const { before, identifier } = yield* checkpointCounter(stack, "plugin-source")
        const env = { KUBECONFIG: stack.cluster.apiServer.kubeconfigPath }
        const url = stack.checkpointer("node-b").url
        const restored = yield* kubectlCheckpoint(
          ["restore", identifier, "--name", "plugin-copy", "--to", "node-b", "--wait", "--url", url],
          env
        )
        expect(restored.code, restored.stderr).toBe(0)
        yield* deletedOnClose(stack.cluster, "default", "plugin-copy")
        expect(restored.stdout.trim()).toBe("default/plugin-copy")
        expect(restored.stderr).toMatch(/restore node-b:[0-9a-f]{16} of node-a:[0-9a-f]{16} started/)
        yield* expectCountsOn(stack.cluster, "default", "plugin-copy", before)
      }))

    it.scoped("a missing image answers 404 and a taken name 409; neither leaves a pod", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        const { image } = yield* checkpointCounter(stack, "conflict")
        const podsBefore = (yield* stack.cluster.apiServer.pods()).length
        const missing = yield* postRestore(stack.checkpointer("node-a").url, {
          image: `${image.slice(0, image.lastIndexOf(":"))}:0000000000000000`
        })
        expect(missing.status, missing.text).toBe(404)
        expect(missing.text).toContain("does not exist")
        const taken = yield* postRestore(stack.checkpointer("node-a").url, { image, pod: "conflict" })
        expect([taken.status, taken.text]).toEqual([409, "pod default/conflict already exists"])
        expect((yield* stack.cluster.apiServer.pods()).length).toBe(podsBefore)
      }))

    it.scoped("a pod with two containers: the checkpointed one is restored, the other starts afresh", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        const manifest = counterPodManifest({ name: "pair", image: stack.cluster.workloads.counterImage })
        const spec = manifest.spec as { readonly containers: ReadonlyArray<Record<string, unknown>> }
        yield* runPod(stack.cluster, "default", {
          metadata: manifest.metadata,
          spec: {
            ...spec,
            nodeName: "node-a",
            containers: [...spec.containers, { ...spec.containers[0], name: "helper" }]
          }
        })
        const before = yield* counterOf(stack.cluster, "default", "pair").waitAbove(15)
        const checkpointed = yield* postCheckpoint(stack.checkpointer("node-a").url, "default/pair/counter")
        expect(checkpointed.status, checkpointed.text).toBe(201)
        const answer = yield* postRestore(stack.checkpointer("node-a").url, {
          image: JSON.parse(checkpointed.text).containerImageName,
          pod: "pair-restored",
          node: "node-b"
        })
        expect(answer.status, answer.text).toBe(201)
        yield* deletedOnClose(stack.cluster, "default", "pair-restored")
        yield* expectCountsOn(stack.cluster, "default", "pair-restored", before)
        expect(yield* stack.cluster.agent.restored("default", "pair-restored", "helper")).toBe(false)
        expect(yield* counterOf(stack.cluster, "default", "pair-restored", "helper").value).toBeLessThan(before)
      }))

    it.scoped("a runtime that cannot restore: 500 naming the restore phase with the pod's events, no pod left", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        const { image } = yield* checkpointCounter(stack, "nowhere")
        const path = yield* Path.Path
        const fs = yield* FileSystem.FileSystem
        const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpointer-norestore-" })
        // A second cluster whose CRI-O runs without enable_criu_support, pulling from the same registry.
        const plain = yield* startLocalCluster({
          dir: path.join(dir, "cluster"),
          nodes: ["node-x"],
          registries: [{ host: stack.registry.host, caFile: stack.registry.caFile }],
          nodeCredentials: stack.registry.authFile,
          restoreSupport: false
        })
        const node = plain.node("node-x")
        const port = yield* freePort(node.address)
        const checkpointer = yield* startCheckpointer({
          env: checkpointerEnv({
            registry: stack.registry,
            cluster: plain,
            node,
            port,
            storage: path.join(dir, "storage")
          }),
          address: node.address,
          port
        })
        const answer = yield* postRestore(checkpointer.url, { image, pod: "cannot" })
        yield* Effect.log(`a runtime without restore support: ${answer.text}`)
        expect(answer.status, answer.text).toBe(500)
        expect(answer.text).toMatch(/^restore failed in phase "restore": /)
        expect(answer.text).toContain("events: ")
        expect(answer.text).toContain("pod default/cannot deleted")
        expect(Option.isNone(yield* plain.apiServer.findPod("default", "cannot"))).toBe(true)
      }))
  })
})
