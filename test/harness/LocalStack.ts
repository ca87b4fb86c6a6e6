import { FileSystem, Path } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { Context, Effect, Layer } from "effect"
import type { CheckpointerProcess } from "./CheckpointerProcess.ts"
import { freePort, freePortOnAll, startCheckpointer } from "./CheckpointerProcess.ts"
import type { LocalCluster } from "./Cluster.ts"
import { startLocalCluster } from "./Cluster.ts"
import type { RuntimeKind } from "./CriRuntime.ts"
import type { KubeletNode } from "./KubeletNode.ts"
import type { RegistryAuthMode, TestRegistry } from "./Registry.ts"
import { startRegistry } from "./Registry.ts"

export const checkpointRepository = "checkpoints/counter"

/**
 * The environment README tells users to set for `pnpm start` outside a cluster, for one node of the local stack. The
 * server listens on the node's address only: every stack's first node is 127.0.0.2, and a server on all interfaces
 * would take its port on the other nodes' addresses too, where a concurrent test's stack may have found it free.
 */
export const checkpointerEnv = (options: {
  readonly registry: TestRegistry
  readonly cluster: LocalCluster
  readonly node: KubeletNode
  readonly port: number
  readonly storage: string
  readonly authFile?: string
  readonly extra?: Readonly<Record<string, string>>
}): Record<string, string> => ({
  CHECKPOINT_IMAGE_PREFIX: `${options.registry.host}/${checkpointRepository}`,
  CHECKPOINTER_NODE: options.node.nodeName,
  CHECKPOINTER_NODE_IP: options.node.address,
  CHECKPOINTER_PORT: String(options.port),
  CHECKPOINTER_NAMESPACE: "kube-system",
  KUBELET_PORT: String(options.node.port),
  KUBELET_CERT_FILE: options.node.clientCert,
  KUBELET_KEY_FILE: options.node.clientKey,
  KUBELET_CA_FILE: options.node.caFile,
  KUBELET_CHECKPOINT_DIR: options.node.checkpointsDir,
  KUBECONFIG: options.cluster.apiServer.kubeconfigPath,
  STORAGE_BASE_PATH: options.storage,
  CHECKPOINT_BUILDER: "native",
  REGISTRY_AUTH_FILE: options.authFile ?? options.registry.authFile,
  REGISTRY_CA_FILE: options.registry.caFile,
  DISABLE_ROUTE_FORWARD: "true",
  CHECKPOINTER_LISTEN_ADDRESS: options.node.address,
  ...options.extra
})

export interface LocalStack {
  readonly dir: string
  readonly registry: TestRegistry
  readonly cluster: LocalCluster
  readonly node: KubeletNode
  readonly checkpointer: CheckpointerProcess
  /** Starts one more Checkpointer process for the same node (e.g. with other credentials). */
  readonly startAnotherCheckpointer: (options: {
    readonly authFile?: string
    readonly extra?: Readonly<Record<string, string>>
    /** Variables to leave unset. */
    readonly without?: ReadonlyArray<string>
  }) => ReturnType<typeof startCheckpointer>
}

const startInfrastructure = (options: {
  readonly dir: string
  readonly registryAuth: RegistryAuthMode
  readonly nodes: ReadonlyArray<string>
  readonly runtime?: RuntimeKind
  readonly kaniko?: boolean
  /** The nodes hold the checkpoint registry's credentials themselves (restored pods need no imagePullSecret). */
  readonly nodesPullCheckpoints?: boolean
  readonly restoreSupport?: boolean
}) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    yield* fs.makeDirectory(options.dir, { recursive: true })
    const registry = yield* startRegistry({ dir: path.join(options.dir, "registry"), auth: options.registryAuth })
    const cluster = yield* startLocalCluster({
      dir: path.join(options.dir, "cluster"),
      nodes: options.nodes,
      registries: [{ host: registry.host, caFile: registry.caFile }],
      ...(options.runtime === undefined ? {} : { runtime: options.runtime }),
      ...(options.kaniko === undefined ? {} : { kaniko: options.kaniko }),
      ...(options.nodesPullCheckpoints === true ? { nodeCredentials: registry.authFile } : {}),
      ...(options.restoreSupport === undefined ? {} : { restoreSupport: options.restoreSupport })
    })
    return { registry, cluster }
  })

/**
 * A real registry, one node on a real container runtime (CRI-O by default) behind a kubelet endpoint, the simulated API
 * server, and the real
 * Checkpointer server process started the way README tells users to. Everything stops when the scope closes.
 */
export const startLocalStack = (options: {
  readonly dir: string
  readonly registryAuth: RegistryAuthMode
  readonly viaPnpm?: boolean
  readonly runtime?: RuntimeKind
  readonly kaniko?: boolean
  readonly nodesPullCheckpoints?: boolean
}) =>
  Effect.gen(function*() {
    const path = yield* Path.Path
    const { cluster, registry } = yield* startInfrastructure({ ...options, nodes: ["node-a"] })
    const node = cluster.node("node-a")
    const start = (extra: {
      readonly authFile?: string
      readonly extra?: Readonly<Record<string, string>>
      readonly without?: ReadonlyArray<string>
      readonly viaPnpm?: boolean
    }) =>
      Effect.gen(function*() {
        const port = yield* freePort(node.address)
        const storage = path.join(options.dir, `storage-${port}`)
        const env = checkpointerEnv({ registry, cluster, node, port, storage, ...extra })
        for (const name of extra.without ?? []) delete env[name]
        return yield* startCheckpointer({
          env,
          address: node.address,
          port,
          viaPnpm: extra.viaPnpm ?? false
        })
      })
    const checkpointer = yield* start({ viaPnpm: options.viaPnpm ?? false })
    return {
      dir: options.dir,
      registry,
      cluster,
      node,
      checkpointer,
      startAnotherCheckpointer: start
    } satisfies LocalStack
  })

/** The local stack as a test layer, in a temporary directory removed afterwards. */
export class Stack extends Context.Tag("test/LocalStack")<Stack, LocalStack>() {
  static readonly layer = (options: {
    readonly registryAuth: RegistryAuthMode
    readonly runtime?: RuntimeKind
    readonly nodesPullCheckpoints?: boolean
  }) =>
    Layer.scoped(
      Stack,
      Effect.gen(function*() {
        const fs = yield* FileSystem.FileSystem
        const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpointer-stack-" })
        return yield* startLocalStack({ dir, ...options })
      })
    ).pipe(Layer.provideMerge(NodeContext.layer))
}

export interface MultiNodeStack {
  readonly registry: TestRegistry
  readonly cluster: LocalCluster
  /** The port every Checkpointer listens on, each on its own node's address. */
  readonly port: number
  /** The Checkpointer process of a node that has one. */
  readonly checkpointer: (node: string) => CheckpointerProcess
  /**
   * Starts one more Checkpointer on `node` (same port, same storage) with extra settings, e.g. DISABLE_ROUTE_FORWARD.
   */
  readonly startCheckpointerOn: (
    node: string,
    options: { readonly extra?: Readonly<Record<string, string>>; readonly port?: number }
  ) => ReturnType<typeof startCheckpointer>
}

/**
 * Several nodes on one machine: one kubelet endpoint per node on 127.0.0.2, 127.0.0.3, ..., and on each node but
 * `withoutCheckpointer` a real Checkpointer process on the node's address, registered with the API server as a
 * Running pod labelled app.kubernetes.io/name=checkpointer (how Checkpointers find each other), route forwarding on.
 */
export const startMultiNodeStack = (options: {
  readonly dir: string
  readonly nodes: ReadonlyArray<string>
  readonly withoutCheckpointer?: ReadonlyArray<string>
  /** Settings for every Checkpointer of the stack. */
  readonly extra?: Readonly<Record<string, string>>
  readonly nodesPullCheckpoints?: boolean
  readonly restoreSupport?: boolean
}) =>
  Effect.gen(function*() {
    const path = yield* Path.Path
    const { cluster, registry } = yield* startInfrastructure({ ...options, registryAuth: "htpasswd" })
    const port = yield* freePortOnAll(cluster.nodes.map((node) => node.address))
    const startCheckpointerOn = (
      name: string,
      extra: { readonly extra?: Readonly<Record<string, string>>; readonly port?: number }
    ) =>
      Effect.gen(function*() {
        const node = cluster.node(name)
        const env = checkpointerEnv({
          registry,
          cluster,
          node,
          port: extra.port ?? port,
          storage: path.join(options.dir, `storage-${name}`)
        })
        delete env.DISABLE_ROUTE_FORWARD
        return yield* startCheckpointer({
          env: { ...env, ...options.extra, ...extra.extra },
          address: node.address,
          port: extra.port ?? port
        })
      })
    const processes = new Map<string, CheckpointerProcess>()
    for (const name of options.nodes.filter((node) => !(options.withoutCheckpointer ?? []).includes(node))) {
      processes.set(name, yield* startCheckpointerOn(name, {}))
      yield* cluster.apiServer.addPod({
        namespace: "kube-system",
        name: `checkpointer-${name}`,
        nodeName: name,
        podIP: cluster.node(name).address,
        labels: { "app.kubernetes.io/name": "checkpointer" },
        containers: [{ name: "checkpointer" }]
      })
    }
    const checkpointer = (name: string) => {
      const found = processes.get(name)
      if (found === undefined) throw new Error(`no Checkpointer on ${name}`)
      return found
    }
    return { registry, cluster, port, checkpointer, startCheckpointerOn } satisfies MultiNodeStack
  })
