import { KanikoPods } from "@checkpointer/strategies"
import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Context, Deferred, Effect, Layer, Option, Stream } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { readFileSync } from "node:fs"
import { WebSocket } from "ws"
import type { LocalCluster } from "./harness/Cluster.ts"
import { startLocalCluster } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import type { PodHandle } from "./harness/PodRuntime.ts"

/** What the test runner saw on a pod's stdin: its sha256 and size once stdin was closed. */
interface Received {
  readonly sha256: string
  readonly bytes: number
}

class TestCluster extends Context.Tag("PodAttach.e2e/TestCluster")<TestCluster, {
  readonly cluster: LocalCluster
  readonly received: (pod: string) => Effect.Effect<Received>
}>() {}

/**
 * A local cluster whose pods with image `test/stdin-sink` run: Running at once, they hash their stdin, log a line
 * per MiB, and succeed when stdin closes.
 */
const TestClusterLive = Layer.scoped(
  TestCluster,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpointer-attach-" })
    const cluster = yield* startLocalCluster({ dir, nodes: ["node-a"] })
    const results = new Map<string, Deferred.Deferred<Received>>()
    const resultOf = (pod: string) => {
      const found = results.get(pod) ?? Deferred.unsafeMake<Received>(Effect.runSync(Effect.fiberId))
      results.set(pod, found)
      return found
    }
    const run = (handle: PodHandle) =>
      Effect.gen(function*() {
        const name = handle.pod.spec.containers[0]!.name
        yield* handle.setStatus((status) => ({ ...status, phase: "Running" }))
        const hash = createHash("sha256")
        let bytes = 0
        yield* Stream.runForEach(handle.stdin(name), (chunk) =>
          Effect.gen(function*() {
            hash.update(chunk)
            const before = Math.floor(bytes / (1024 * 1024))
            bytes += chunk.length
            if (Math.floor(bytes / (1024 * 1024)) > before) yield* handle.log(name, `received ${bytes} bytes\n`)
          }))
        yield* Deferred.succeed(resultOf(handle.pod.metadata.name), { sha256: hash.digest("hex"), bytes })
        yield* handle.setStatus((status) => ({ ...status, phase: "Succeeded" }))
      })
    yield* Effect.acquireRelease(
      cluster.apiServer.setPodRunner({ accepts: (pod) => pod.spec.containers[0]?.image === "test/stdin-sink", run }),
      () => cluster.apiServer.setPodRunner(undefined)
    )
    return { cluster, received: (pod: string) => Deferred.await(resultOf(pod)) }
  })
).pipe(Layer.provideMerge(NodeContext.layer))

/** Checkpointer's KanikoPods service, configured like the server outside a cluster: through KUBECONFIG. */
const kanikoPodsService = (kubeconfig: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const previous = process.env.KUBECONFIG
      process.env.KUBECONFIG = kubeconfig
      return previous
    }),
    (previous) =>
      Effect.sync(() => {
        if (previous === undefined) delete process.env.KUBECONFIG
        else process.env.KUBECONFIG = previous
      })
  ).pipe(Effect.zipRight(Effect.provide(KanikoPods, KanikoPods.Default)))

const sinkPod = (name: string, stdinOnce = true) => ({
  metadata: { name },
  spec: { containers: [{ name: "sink", image: "test/stdin-sink", stdin: true, stdinOnce }] }
})

describeE2E("pod attach, logs and watches of the simulated API server through Checkpointer's KanikoPods", () => {
  layer(TestClusterLive, { excludeTestServices: true, timeout: "120 seconds" })((it) => {
    it.scoped("attachStdin streams 24 MiB unchanged (v5.channel.k8s.io) and the pod's log and phases follow", () =>
      Effect.gen(function*() {
        const { cluster, received } = yield* TestCluster
        const api = yield* kanikoPodsService(cluster.apiServer.kubeconfigPath)
        const name = `attach-${randomBytes(3).toString("hex")}`
        yield* api.createPod("default", sinkPod(name))
        const running = yield* api.waitForPod("default", name, (pod) => pod.status?.phase === "Running")
        expect(running.status?.phase).toBe("Running")
        const data = randomBytes(24 * 1024 * 1024)
        const chunks = Array.from({ length: 96 }, (_, i) => data.subarray(i * 256 * 1024, (i + 1) * 256 * 1024))
        yield* api.attachStdin("default", name, "sink", Stream.fromIterable(chunks))
        const done = yield* api.waitForPod("default", name, (pod) => pod.status?.phase === "Succeeded")
        expect(done.status?.phase).toBe("Succeeded")
        expect(yield* received(name)).toEqual({
          sha256: createHash("sha256").update(data).digest("hex"),
          bytes: data.length
        })
        expect(yield* api.podLogTail("default", name, "sink", 2)).toBe(
          `received ${23 * 1024 * 1024} bytes\nreceived ${24 * 1024 * 1024} bytes\n`
        )
        const attaches = (yield* cluster.apiServer.requests()).filter((request) => request.path.endsWith("/attach"))
        expect(attaches.map((request) => request.status)).toEqual([101])
        yield* api.requestPodDeletion("default", name)
        yield* api.requestPodDeletion("default", name)
      }))

    it.scoped("a v4.channel.k8s.io client ends stdin by closing the connection (stdinOnce)", () =>
      Effect.gen(function*() {
        const { cluster, received } = yield* TestCluster
        const api = yield* kanikoPodsService(cluster.apiServer.kubeconfigPath)
        const name = `attach-v4-${randomBytes(3).toString("hex")}`
        yield* api.createPod("default", sinkPod(name))
        yield* api.waitForPod("default", name, (pod) => pod.status?.phase === "Running")
        const base = cluster.apiServer.url.replace("https://", "wss://")
        const url = `${base}/api/v1/namespaces/default/pods/${name}/attach?container=sink&stdin=true&stdout=true`
        const socket = new WebSocket(url, ["v4.channel.k8s.io"], {
          ca: readFileSync(cluster.apiServer.caFile),
          headers: { authorization: `Bearer ${cluster.apiServer.token}` }
        })
        yield* Effect.async<void, Error>((resume) => {
          socket.once("open", () => resume(Effect.void))
          socket.once("error", (error) => resume(Effect.fail(error)))
        })
        expect(socket.protocol).toBe("v4.channel.k8s.io")
        socket.send(Buffer.concat([Buffer.from([0]), Buffer.from("hello ")]))
        socket.send(Buffer.concat([Buffer.from([0]), Buffer.from("world")]))
        socket.close()
        expect(yield* received(name)).toEqual({
          sha256: createHash("sha256").update("hello world").digest("hex"),
          bytes: 11
        })
        yield* api.requestPodDeletion("default", name)
      }))

    it.scoped("attaching to a pod that is not running is refused, and a pod that goes ends the wait", () =>
      Effect.gen(function*() {
        const { cluster } = yield* TestCluster
        const api = yield* kanikoPodsService(cluster.apiServer.kubeconfigPath)
        const name = `attach-pending-${randomBytes(3).toString("hex")}`
        const notRun = { metadata: { name }, spec: { containers: [{ name: "sink", image: "x/other" }] } }
        yield* api.createPod("default", notRun)
        const refused = yield* Effect.flip(api.attachStdin("default", name, "sink", Stream.make(new Uint8Array([1]))))
        expect(refused.message).toMatch(/attach to pod default\/.*400/)
        const waiting = yield* Effect.fork(api.waitForPod("default", name, (pod) => pod.status?.phase === "Running"))
        yield* api.requestPodDeletion("default", name)
        const gone = yield* Effect.flip(waiting.await.pipe(Effect.flatten))
        expect(gone.message).toBe(`pod default/${name} no longer exists`)
        expect(Option.isNone(yield* api.getPod("default", name))).toBe(true)
      }))
  })
})
