import type { CommandExecutor } from "@effect/platform"
import { FileSystem, Path } from "@effect/platform"
import type { PlatformError } from "@effect/platform/Error"
import { Data, Duration, Effect, Option, Schedule } from "effect"
import type { Scope } from "effect"
import type { ApiServer, ApiServerError } from "./ApiServer.ts"
import { startApiServer } from "./ApiServer.ts"
import type { Pod } from "./apiserver/Resources.ts"
import type { Pki } from "./Certificates.ts"
import { makePki } from "./Certificates.ts"
import type { CriRuntime, CriRuntimeError, RegistryAccess, RuntimeKind } from "./CriRuntime.ts"
import { defaultRuntimeKind, startCriRuntime } from "./CriRuntime.ts"
import type { HttpsServerError } from "./HttpsServer.ts"
import type { KubeletNode } from "./KubeletNode.ts"
import { startKubeletNode } from "./KubeletNode.ts"
import type { CheckpointFailure, NodeAgent } from "./NodeAgent.ts"
import { startNodeAgent } from "./NodeAgent.ts"
import type { ProcessError } from "./Process.ts"
import { pollUntil } from "./Process.ts"
import type { RegistryHarnessError, TestRegistry } from "./Registry.ts"
import type { Workloads } from "./Workloads.ts"
import { startWorkloads } from "./Workloads.ts"

/** The Kaniko executor image the harness preloads into CRI-O (scripts/setup.sh loads it into podman's storage). */
export const kanikoExecutorImage = "ghcr.io/osscontainertools/kaniko:v1.28.3"

export interface LocalCluster {
  readonly dir: string
  readonly pki: Pki
  readonly apiServer: ApiServer
  readonly workloads: Workloads
  /** The container runtime every node of this cluster shares. */
  readonly runtime: CriRuntime
  readonly agent: NodeAgent
  /** One per requested node, in order, on 127.0.0.2, 127.0.0.3, ... */
  readonly nodes: ReadonlyArray<KubeletNode>
  readonly node: (name: string) => KubeletNode
}

export class PodFailure extends Data.TaggedError("PodFailure")<{ readonly message: string }> {}

type Requirements = CommandExecutor.CommandExecutor | FileSystem.FileSystem | Path.Path

export type ClusterError =
  | Error
  | PlatformError
  | HttpsServerError
  | CriRuntimeError
  | ProcessError
  | RegistryHarnessError

/**
 * An API server on 127.0.0.1, a workloads registry, one real container runtime (CRI-O or containerd) with a node agent
 * playing the kubelet, and one kubelet endpoint per node on its own loopback address, sharing one PKI under `dir`.
 * The runtime also pulls from `registries` (e.g. the registry checkpoint images are pushed to).
 */
export const startLocalCluster = (options: {
  readonly dir: string
  readonly nodes: ReadonlyArray<string>
  readonly runtime?: RuntimeKind
  readonly registries?: ReadonlyArray<RegistryAccess>
  /** Preload the Kaniko executor image into the runtime (CRI-O only). */
  readonly kaniko?: boolean
  /** The nodes' own registry credentials (docker config JSON), e.g. for the checkpoint registry. */
  readonly nodeCredentials?: string
  /** CRI-O only: whether the runtime restores checkpoint images (enable_criu_support), default true. */
  readonly restoreSupport?: boolean
}): Effect.Effect<LocalCluster, ClusterError, Requirements | Scope.Scope> =>
  Effect.gen(function*() {
    const path = yield* Path.Path
    const fs = yield* FileSystem.FileSystem
    const dir = path.resolve(options.dir)
    yield* fs.makeDirectory(dir, { recursive: true })
    const pki = yield* makePki(path.join(dir, "pki"))
    const apiServer = yield* startApiServer({ pki, dir: path.join(dir, "apiserver") })
    const workloads = yield* startWorkloads({ dir: path.join(dir, "workloads") })
    const addresses = options.nodes.map((name, i) => ({ name, address: `127.0.0.${i + 2}` }))
    const runtime = yield* startCriRuntime({
      kind: options.runtime ?? defaultRuntimeKind(),
      dir: path.join(dir, "runtime"),
      pauseImage: workloads.pauseImage,
      registries: [{ host: workloads.registry.host, insecure: true }, ...(options.registries ?? [])],
      ...(options.kaniko === true ? { preload: [kanikoExecutorImage] } : {}),
      ...(options.restoreSupport === undefined ? {} : { restoreSupport: options.restoreSupport })
    })
    for (const registry of options.registries ?? []) yield* runtime.trustRegistry(registry)
    const agent = yield* startNodeAgent({
      apiServer,
      runtime,
      nodes: addresses,
      dir: path.join(dir, "agent"),
      ...(options.nodeCredentials === undefined ? {} : { nodeCredentials: options.nodeCredentials })
    })
    const nodes = yield* Effect.forEach(addresses, ({ address, name: nodeName }) =>
      Effect.gen(function*() {
        yield* apiServer.addNode({ name: nodeName, address })
        return yield* startKubeletNode({
          nodeName,
          address,
          pki,
          agent,
          checkpointsDir: path.join(dir, "nodes", nodeName, "checkpoints"),
          lookupPod: (namespace, pod) =>
            apiServer.findPod(namespace, pod).pipe(
              Effect.map((found) =>
                Option.getOrUndefined(Option.filter(found, (p) => p.spec.nodeName === nodeName))?.spec.containers.map(
                  (container) => container.name
                )
              )
            )
        })
      }))
    const node = (name: string) => {
      const found = nodes.find((n) => n.nodeName === name)
      if (found === undefined) throw new Error(`no node ${name} in this cluster`)
      return found
    }
    return { dir, pki, apiServer, workloads, runtime, agent, nodes, node } satisfies LocalCluster
  }).pipe(Effect.withSpan("Cluster.start"))

/** Polls (bounded) until the pod is Running with every container running; fails with its last status otherwise. */
export const waitForPodRunning = (
  cluster: Pick<LocalCluster, "apiServer">,
  namespace: string,
  name: string,
  timeout: Duration.DurationInput = Duration.seconds(60)
) => {
  let last: Pod | undefined
  return pollUntil(
    Effect.map(cluster.apiServer.findPod(namespace, name), (found) => (last = Option.getOrUndefined(found))),
    (pod) =>
      pod?.status.phase === "Running" &&
      ((pod.status["containerStatuses"] ?? []) as ReadonlyArray<{ readonly state?: { readonly running?: unknown } }>)
        .every((status) => status.state?.running !== undefined),
    {
      every: Duration.millis(200),
      timeout,
      onTimeout: () =>
        new PodFailure({
          message: `pod ${namespace}/${name} is not running: ${JSON.stringify(last?.status ?? "gone")}`
        })
    }
  ).pipe(Effect.map((pod) => pod!))
}

/** A counter container of a pod run by the node agent. */
export interface Counter {
  readonly namespace: string
  readonly pod: string
  readonly container: string
  /** The value the counter last wrote to /count. */
  readonly value: Effect.Effect<number, ProcessError | CheckpointFailure>
  /** Polls (bounded: `timeout`, default 30 s) until the counter shows a value greater than `value`; returns it. */
  readonly waitAbove: (
    value: number,
    timeout?: Duration.DurationInput
  ) => Effect.Effect<number, ProcessError | CheckpointFailure | PodFailure>
}

export const counterOf = (
  cluster: Pick<LocalCluster, "agent">,
  namespace: string,
  pod: string,
  container = "counter"
): Counter => {
  const value = cluster.agent.exec(namespace, pod, container, ["cat", "/count"]).pipe(
    Effect.flatMap((text) => {
      const parsed = Number.parseInt(text, 10)
      return Number.isNaN(parsed)
        ? Effect.fail(new PodFailure({ message: `not a counter value: ${JSON.stringify(text)}` }))
        : Effect.succeed(parsed)
    }),
    Effect.retry({ schedule: Schedule.spaced(Duration.millis(50)), times: 20 }),
    Effect.catchTag("PodFailure", (error) => Effect.die(error))
  )
  return {
    namespace,
    pod,
    container,
    value,
    waitAbove: (above, timeout = Duration.seconds(30)) =>
      pollUntil(value, (current) => current > above, {
        timeout,
        onTimeout: () => new PodFailure({ message: `counter of ${namespace}/${pod} did not exceed ${above}` })
      })
  }
}

/** The pod spec of a counter pod, as a workload's manifest would have it. */
export const counterPodManifest = (options: {
  readonly name: string
  readonly image: string
  readonly nodeName?: string
  readonly container?: string
  readonly labels?: Readonly<Record<string, string>>
  readonly imagePullSecrets?: ReadonlyArray<string>
  readonly command?: ReadonlyArray<string>
  readonly imagePullPolicy?: string
}): { readonly metadata: { readonly name: string }; readonly spec: unknown } => ({
  metadata: { name: options.name, ...(options.labels === undefined ? {} : { labels: options.labels }) },
  spec: {
    ...(options.nodeName === undefined ? {} : { nodeName: options.nodeName }),
    terminationGracePeriodSeconds: 5,
    ...(options.imagePullSecrets === undefined
      ? {}
      : { imagePullSecrets: options.imagePullSecrets.map((name) => ({ name })) }),
    containers: [{
      name: options.container ?? "counter",
      image: options.image,
      ...(options.command === undefined ? {} : { command: options.command }),
      ...(options.imagePullPolicy === undefined ? {} : { imagePullPolicy: options.imagePullPolicy })
    }]
  }
})

/** Deletes a pod when the scope closes (and waits until it is gone). */
export const deletedOnClose = (cluster: Pick<LocalCluster, "apiServer">, namespace: string, name: string) =>
  Effect.addFinalizer(() =>
    Effect.ignore(
      cluster.apiServer.deletePod(namespace, name, 0).pipe(
        Effect.zipRight(
          pollUntil(cluster.apiServer.findPod(namespace, name), Option.isNone, {
            timeout: Duration.seconds(30),
            onTimeout: () => new PodFailure({ message: `pod ${namespace}/${name} was not removed` })
          })
        )
      )
    )
  )

/** Creates a pod (deleted when the scope closes) and waits until it runs. */
export const runPod = (
  cluster: Pick<LocalCluster, "apiServer">,
  namespace: string,
  manifest: { readonly metadata: { readonly name: string }; readonly spec: unknown }
): Effect.Effect<Pod, ApiServerError | PodFailure, Scope.Scope> =>
  Effect.gen(function*() {
    yield* deletedOnClose(cluster, namespace, manifest.metadata.name)
    yield* cluster.apiServer.createPod(namespace, manifest)
    return yield* waitForPodRunning(cluster, namespace, manifest.metadata.name)
  })

export interface RestoreOptions {
  readonly nodeName?: string
  readonly namespace?: string
  readonly container?: string
}

/** The imagePullSecret `checkpoint-registry` in `namespace`, with the credentials of `registry` (kept if it exists). */
export const addPullSecret = (
  stack: { readonly cluster: LocalCluster; readonly registry: TestRegistry },
  namespace: string
) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    yield* Effect.ignore(stack.cluster.apiServer.addSecret({
      namespace,
      name: "checkpoint-registry",
      type: "kubernetes.io/dockerconfigjson",
      stringData: { ".dockerconfigjson": yield* fs.readFileString(stack.registry.authFile) }
    }))
    return "checkpoint-registry"
  })

/**
 * Restores a checkpoint image the way a cluster does: a pod (deleted when the scope closes) whose container image is
 * the checkpoint image, pulled with an imagePullSecret for `registry` and run by the node's runtime, which restores
 * the process. Answers what the runtime says of the container: restored or not (undefined where it does not say).
 */
export const runRestoredPod = (
  stack: { readonly cluster: LocalCluster; readonly registry: TestRegistry },
  image: string,
  name: string,
  options: RestoreOptions = {}
) =>
  Effect.gen(function*() {
    const { agent, nodes } = stack.cluster
    const namespace = options.namespace ?? "default"
    const container = options.container ?? "counter"
    const pullSecret = yield* addPullSecret(stack, namespace)
    yield* runPod(
      stack.cluster,
      namespace,
      counterPodManifest({
        name,
        image,
        container,
        nodeName: options.nodeName ?? nodes[0]!.nodeName,
        imagePullSecrets: [pullSecret]
      })
    )
    return yield* agent.restored(namespace, name, container)
  })

/**
 * A running counter pod on `nodeName` (the workloads' counter image, run by the node's runtime), deleted when the
 * scope closes; waits until it has counted at least once.
 */
export const startCounterPod = (
  cluster: LocalCluster,
  options: {
    readonly namespace: string
    readonly name: string
    readonly nodeName: string
    readonly container?: string
    readonly labels?: Readonly<Record<string, string>>
  }
): Effect.Effect<
  { readonly pod: Pod; readonly container: Counter },
  ApiServerError | PodFailure | ProcessError | CheckpointFailure,
  Scope.Scope
> =>
  Effect.gen(function*() {
    const pod = yield* runPod(
      cluster,
      options.namespace,
      counterPodManifest({ ...options, image: cluster.workloads.counterImage })
    )
    const container = counterOf(cluster, options.namespace, options.name, options.container)
    yield* container.waitAbove(0)
    return { pod, container }
  }).pipe(Effect.withSpan("Cluster.startCounterPod", { attributes: { name: options.name } }))

/**
 * A Running pod whose container `main` holds `bytes` random bytes in its rootfs: they end up in the checkpoint
 * archive's rootfs-diff.tar (and do not compress), which makes archives of a chosen size.
 */
export const startBallastPod = (
  cluster: LocalCluster,
  options: { readonly namespace: string; readonly name: string; readonly nodeName: string; readonly bytes: number }
): Effect.Effect<Pod, ApiServerError | PodFailure | ProcessError | CheckpointFailure, Scope.Scope> =>
  Effect.gen(function*() {
    const pod = yield* runPod(
      cluster,
      options.namespace,
      counterPodManifest({
        name: options.name,
        nodeName: options.nodeName,
        container: "main",
        image: cluster.workloads.counterImage,
        command: [
          "sh",
          "-c",
          `trap "exit 0" TERM; head -c ${options.bytes} /dev/urandom > /ballast && echo > /ready; ` +
          "while true; do sleep 0.2; done"
        ]
      })
    )
    yield* pollUntil(
      Effect.either(cluster.agent.exec(options.namespace, options.name, "main", ["cat", "/ready"])),
      (result) => result._tag === "Right",
      {
        every: Duration.millis(500),
        timeout: Duration.minutes(2),
        onTimeout: () => new PodFailure({ message: `ballast of ${options.name} was not written` })
      }
    )
    return pod
  })
