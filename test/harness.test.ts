import { Command, FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { CoreV1Api, KubeConfig, Watch } from "@kubernetes/client-node"
import type { V1Pod } from "@kubernetes/client-node"
import { Context, Data, Duration, Effect, Either, Layer, Queue, Schedule } from "effect"
import { randomBytes } from "node:crypto"
import * as https from "node:https"
import type { LocalCluster } from "./harness/Cluster.ts"
import { startCounterPod, startLocalCluster } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import type { KubeletNode } from "./harness/KubeletNode.ts"
import { archivedCounterValue } from "./harness/Podman.ts"

class TestCluster extends Context.Tag("harness.test/TestCluster")<TestCluster, LocalCluster>() {}

const TestClusterLive = Layer.scoped(
  TestCluster,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpointer-harness-" })
    return yield* startLocalCluster({ dir, nodes: ["node-a", "node-b"] })
  })
).pipe(Layer.provideMerge(NodeContext.layer))

/** Pod names unique to this run. */
const run = randomBytes(3).toString("hex")
const podName = (name: string) => `hx-${run}-${name}`

class RequestFailed extends Data.TaggedError("RequestFailed")<{ readonly cause: Error }> {}

/** One HTTPS request with node:https; client certificate optional. */
const httpsRequest = (options: {
  readonly url: string
  readonly method: string
  readonly caFile: string
  readonly clientCert?: { readonly cert: string; readonly key: string }
}) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const ca = yield* fs.readFileString(options.caFile)
    const client = options.clientCert === undefined ? {} : {
      cert: yield* fs.readFileString(options.clientCert.cert),
      key: yield* fs.readFileString(options.clientCert.key)
    }
    return yield* Effect.async<{ readonly status: number; readonly body: string }, RequestFailed>((resume) => {
      const request = https.request(options.url, { method: options.method, ca, ...client }, (response) => {
        const chunks: Array<Buffer> = []
        response.on("data", (chunk: Buffer) => chunks.push(chunk))
        response.on("end", () =>
          resume(Effect.succeed({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") })))
        response.on("error", (cause) =>
          resume(Effect.fail(new RequestFailed({ cause }))))
      })
      request.on("error", (cause) => resume(Effect.fail(new RequestFailed({ cause }))))
      request.end()
      return Effect.sync(() => request.destroy())
    })
  })

const checkpointRequest = (node: KubeletNode, path: string, method = "POST") =>
  httpsRequest({
    url: `${node.url}${path}`,
    method,
    caFile: node.caFile,
    clientCert: { cert: node.clientCert, key: node.clientKey }
  })

const coreApi = (cluster: LocalCluster) => {
  const config = new KubeConfig()
  config.loadFromFile(cluster.apiServer.kubeconfigPath)
  return config
}

const call = <A>(request: () => Promise<A>) =>
  Effect.tryPromise({ try: request, catch: (cause) => cause as { readonly code?: number; readonly body?: unknown } })

describeE2E("local cluster harness", () => {
  layer(TestClusterLive, { excludeTestServices: true, timeout: Duration.minutes(3) })((it) => {
    it.scoped("the loopback nodes listen on their own addresses", () =>
      Effect.gen(function*() {
        const cluster = yield* TestCluster
        expect(cluster.nodes.map((node) => node.address)).toEqual(["127.0.0.2", "127.0.0.3"])
        expect(cluster.node("node-b").url).toMatch(/^https:\/\/127\.0\.0\.3:\d+$/)
      }))

    it.scoped("a kubelet checkpoint with the client certificate writes a real CRIU archive", () =>
      Effect.gen(function*() {
        const cluster = yield* TestCluster
        const node = cluster.node("node-a")
        const name = podName("archive")
        const { container } = yield* startCounterPod(cluster, { namespace: "default", name, nodeName: "node-a" })

        const response = yield* checkpointRequest(node, `/checkpoint/default/${name}/counter?timeout=60`)
        expect(response.status).toBe(200)
        const { items } = JSON.parse(response.body) as { readonly items: ReadonlyArray<string> }
        expect(items).toHaveLength(1)
        const archive = items[0]!
        expect(archive.startsWith(node.checkpointsDir + "/")).toBe(true)
        expect(archive).toMatch(
          new RegExp(`/checkpoint-${name}_default-counter-\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ\\.tar$`)
        )
        const entries = yield* Command.lines(Command.make("tar", "-tf", archive))
        expect(entries).toContain("config.dump")
        expect(entries).toContain("spec.dump")
        expect(entries.some((entry) => entry.startsWith("checkpoint/"))).toBe(true)
        expect(entries).toContain("checkpoint/inventory.img")

        const logged = (yield* node.requests()).find((request) => request.archive === archive)
        expect(logged).toMatchObject({
          method: "POST",
          path: `/checkpoint/default/${name}/counter`,
          query: "timeout=60",
          clientCommonName: "checkpointer-client-node-a",
          status: 200
        })
        // The runtime's archive: what CRI-O (or containerd) writes for the kubelet, a CRIU image of the running counter
        const config = JSON.parse(yield* Command.string(Command.make("tar", "-xOf", archive, "config.dump")))
        expect(JSON.stringify(config)).toContain(name)
        // the original goes on counting
        const value = yield* container.value
        yield* container.waitAbove(value)
      }))

    it.scoped("without a client certificate or an accepted token the kubelet answers 401 and checkpoints nothing", () =>
      Effect.gen(function*() {
        const node = (yield* TestCluster).node("node-a")
        const result = yield* httpsRequest({
          url: `${node.url}/checkpoint/default/anything/counter`,
          method: "POST",
          caFile: node.caFile
        })
        expect(result.status).toBe(401)
        const last = (yield* node.requests()).at(-1)!
        expect(last).toMatchObject({ status: 401, clientCommonName: undefined })
        expect(last.archive).toBeUndefined()
      }))

    it.scoped("unknown pods and containers answer 404, other methods 405, other paths 404", () =>
      Effect.gen(function*() {
        const cluster = yield* TestCluster
        const name = podName("missing")
        yield* startCounterPod(cluster, { namespace: "default", name, nodeName: "node-a" })
        const nodeA = cluster.node("node-a")

        const noContainer = yield* checkpointRequest(nodeA, `/checkpoint/default/${name}/nope`)
        expect(noContainer).toEqual({ status: 404, body: "container nope does not exist" })
        const noPod = yield* checkpointRequest(nodeA, `/checkpoint/default/${podName("ghost")}/counter`)
        expect(noPod).toEqual({ status: 404, body: "pod does not exist" })
        const otherNamespace = yield* checkpointRequest(nodeA, `/checkpoint/other/${name}/counter`)
        expect(otherNamespace.status).toBe(404)
        // the pod is bound to node-a: node-b's kubelet does not know it
        const otherNode = yield* checkpointRequest(cluster.node("node-b"), `/checkpoint/default/${name}/counter`)
        expect(otherNode).toEqual({ status: 404, body: "pod does not exist" })
        expect((yield* checkpointRequest(nodeA, `/checkpoint/default/${name}/counter`, "GET")).status).toBe(405)
        expect((yield* checkpointRequest(nodeA, "/pods", "GET")).status).toBe(404)
      }))

    it.scoped("injected kubelet faults: 500, dropped connection, no answer", () =>
      Effect.gen(function*() {
        const cluster = yield* TestCluster
        const node = cluster.node("node-b")
        const name = podName("faults")
        yield* startCounterPod(cluster, { namespace: "default", name, nodeName: "node-b" })
        yield* Effect.acquireRelease(node.setFault("500"), () => node.setFault(null))
        const failed = yield* checkpointRequest(node, `/checkpoint/default/${name}/counter`)
        expect(failed.status).toBe(500)
        yield* node.setFault("close")
        const closed = yield* checkpointRequest(node, `/checkpoint/default/${name}/counter`).pipe(Effect.either)
        expect(Either.isLeft(closed)).toBe(true)
        yield* node.setFault("hang")
        const hung = yield* checkpointRequest(node, `/checkpoint/default/${name}/counter`).pipe(
          Effect.timeout(Duration.seconds(1)),
          Effect.either
        )
        expect(Either.isLeft(hung) && hung.left._tag).toBe("TimeoutException")
        yield* node.setFault(null)
        expect((yield* checkpointRequest(node, `/checkpoint/default/${name}/counter`)).status).toBe(200)
        const statuses = (yield* node.requests()).filter((r) => r.path.includes(name)).map((r) => r.status ?? null)
        expect(statuses).toEqual([500, null, null, 200])
      }))

    it.scoped("the real @kubernetes/client-node reads, lists with selectors and deletes pods", () =>
      Effect.gen(function*() {
        const cluster = yield* TestCluster
        const core = coreApi(cluster).makeApiClient(CoreV1Api)
        const web = podName("web")
        const { container } = yield* startCounterPod(cluster, {
          namespace: "default",
          name: web,
          nodeName: "node-a",
          labels: { app: web, tier: "front" }
        })
        yield* cluster.apiServer.addPod({
          namespace: "checkpointer",
          name: podName("agent-b"),
          nodeName: "node-b",
          podIP: "127.0.0.3",
          labels: { app: `checkpointer-${run}` },
          containers: [{ name: "checkpointer" }]
        })

        const pod = yield* call(() => core.readNamespacedPod({ namespace: "default", name: web }))
        expect(pod.metadata?.name).toBe(web)
        expect(pod.metadata?.labels).toEqual({ app: web, tier: "front" })
        expect(pod.spec?.nodeName).toBe("node-a")
        expect(pod.status?.phase).toBe("Running")
        expect(pod.status?.hostIP).toBe("127.0.0.2")
        const id = yield* cluster.agent.containerId("default", web, "counter")
        const scheme = cluster.runtime.kind === "containerd" ? "containerd" : "cri-o"
        expect(pod.status?.containerStatuses?.[0]?.containerID).toBe(`${scheme}://${id}`)
        expect(yield* container.value).toBeGreaterThan(0)

        const names = (pods: ReadonlyArray<V1Pod>) => pods.map((p) => `${p.metadata?.namespace}/${p.metadata?.name}`)
        const byLabel = yield* call(() => core.listNamespacedPod({ namespace: "default", labelSelector: `app=${web}` }))
        expect(byLabel.kind).toBe("PodList")
        expect(names(byLabel.items)).toEqual([`default/${web}`])
        const byLabels = yield* call(() => core.listPodForAllNamespaces({ labelSelector: `app=${web},tier=back` }))
        expect(byLabels.items).toEqual([])
        const agents = yield* call(() =>
          core.listPodForAllNamespaces({
            labelSelector: `app=checkpointer-${run}`,
            fieldSelector: "spec.nodeName=node-b"
          })
        )
        expect(agents.items.map((p) => p.status?.podIP)).toEqual(["127.0.0.3"])
        const noAgents = yield* call(() =>
          core.listPodForAllNamespaces({
            labelSelector: `app=checkpointer-${run}`,
            fieldSelector: "spec.nodeName=node-a"
          })
        )
        expect(noAgents.items).toEqual([])
        const byName = yield* call(() =>
          core.listNamespacedPod({ namespace: "default", fieldSelector: `metadata.name=${web},status.phase=Running` })
        )
        expect(names(byName.items)).toEqual([`default/${web}`])
        const unsupported = yield* call(() => core.listNamespacedPod({ namespace: "default", fieldSelector: "x.y=z" }))
          .pipe(Effect.flip)
        expect(unsupported.code).toBe(400)

        const missing = yield* call(() => core.readNamespacedPod({ namespace: "default", name: podName("ghost") }))
          .pipe(Effect.flip)
        expect(missing.code).toBe(404)
        expect(JSON.parse(String(missing.body))).toMatchObject({ kind: "Status", reason: "NotFound", code: 404 })

        const deleted = yield* call(() => core.deleteNamespacedPod({ namespace: "default", name: web }))
        expect(deleted.metadata?.deletionTimestamp).toBeInstanceOf(Date)
        expect(deleted.metadata?.deletionGracePeriodSeconds).toBe(5)
        // Poll the API; the moment it answers 404 the container must already be gone.
        const containerWhenGone = yield* call(() => core.readNamespacedPod({ namespace: "default", name: web })).pipe(
          Effect.flatMap(() => Effect.fail("still there" as const)),
          Effect.catchIf(
            (error) => error !== "still there" && error.code === 404,
            () => cluster.runtime.crictl(["ps", "--all", "--quiet", "--id", id!]).pipe(Effect.map((out) => out !== ""))
          ),
          Effect.retry({
            while: (error) => error === "still there",
            schedule: Schedule.spaced("50 millis"),
            times: 600
          })
        )
        expect(containerWhenGone).toBe(false)
      }))

    it.scoped("watch, create with generateName and secrets through client-node", () =>
      Effect.gen(function*() {
        const cluster = yield* TestCluster
        const config = coreApi(cluster)
        const core = config.makeApiClient(CoreV1Api)
        const app = podName("watched")
        const events = yield* Queue.unbounded<string>()
        const controller = yield* Effect.acquireRelease(
          call(() =>
            new Watch(config).watch(
              "/api/v1/namespaces/default/pods",
              { labelSelector: `app=${app}` },
              (type, object: V1Pod) => Queue.unsafeOffer(events, `${type} ${object.metadata?.name}`),
              () => undefined
            )
          ),
          (controller) => Effect.sync(() => controller.abort())
        )
        expect(controller).toBeDefined()
        const created = yield* call(() =>
          core.createNamespacedPod({
            namespace: "default",
            body: {
              metadata: { generateName: `${app}-`, labels: { app } },
              spec: {
                // no node has this label: the pod stays unscheduled and no node agent touches it
                nodeSelector: { "kubernetes.io/hostname": "no-such-node" },
                containers: [{ name: "kaniko", image: "gcr.io/kaniko-project/executor" }]
              }
            }
          })
        )
        const name = created.metadata?.name ?? ""
        expect(name).toMatch(new RegExp(`^${app}-[a-z0-9]{5}$`))
        expect(created.status?.phase).toBe("Pending")
        const next = Queue.take(events).pipe(Effect.timeout(Duration.seconds(10)))
        expect(yield* next).toBe(`ADDED ${name}`)
        yield* call(() => core.deleteNamespacedPod({ namespace: "default", name }))
        expect(yield* next).toBe(`MODIFIED ${name}`)
        expect(yield* next).toBe(`DELETED ${name}`)

        const secretName = podName("secret")
        yield* call(() =>
          core.createNamespacedSecret({
            namespace: "default",
            body: { metadata: { name: secretName }, type: "Opaque", stringData: { token: "s3cr3t" } }
          })
        )
        const secret = yield* call(() => core.readNamespacedSecret({ namespace: "default", name: secretName }))
        expect(Buffer.from(secret.data?.["token"] ?? "", "base64").toString()).toBe("s3cr3t")
      }))

    it.scoped("the archive holds the counter's checkpointed value; a failing runtime call leaves no archive", () =>
      Effect.gen(function*() {
        const cluster = yield* TestCluster
        const node = cluster.node("node-a")
        const name = podName("value")
        const { container } = yield* startCounterPod(cluster, { namespace: "default", name, nodeName: "node-a" })
        // Far enough from 1 that a counter starting over could not pass for a continued one.
        const before = yield* container.waitAbove(10)
        const response = yield* checkpointRequest(node, `/checkpoint/default/${name}/counter`)
        expect(response.status).toBe(200)
        const archive = (JSON.parse(response.body) as { readonly items: ReadonlyArray<string> }).items[0]!
        expect(yield* archivedCounterValue(archive)).toBeGreaterThanOrEqual(before)

        // The container is gone from the runtime but the pod is still known: the runtime's error, no archive.
        const id = yield* cluster.agent.containerId("default", name, "counter")
        yield* cluster.runtime.crictl(["rm", "--force", id!])
        // Archives are named by the second, as the kubelet names them: take the one above away, as Checkpointer does.
        const fs = yield* FileSystem.FileSystem
        yield* fs.remove(archive)
        const archivesBefore = yield* fs.readDirectory(node.checkpointsDir)
        const failed = yield* checkpointRequest(node, `/checkpoint/default/${name}/counter`)
        expect(failed.status).toBe(500)
        expect(failed.body).toMatch(new RegExp(`^checkpointing of default/${name}/counter failed \\(.+\\)$`))
        expect(yield* fs.readDirectory(node.checkpointsDir)).toEqual(archivesBefore)
      }))
  })
})
