import { FileSystem } from "@effect/platform"
import { NodeContext, NodeHttpServer } from "@effect/platform-node"
import {
  CheckpointDirectory,
  Checkpointer,
  CheckpointerConfig,
  Cluster,
  ContainerMissing,
  ImageBuildError,
  ImageBuilder,
  KubeletServiceTest,
  KubernetesApiError,
  podRunningNotFaked,
  Readiness,
  ResultStore
} from "@checkpointer/core"
import type { BuildRequest, CheckpointerSettings, ContainerRef } from "@checkpointer/core"
import { Effect, Layer, Option, Ref } from "effect"
import { AppLive } from "../src/HttpServer.ts"

export const testSettings: CheckpointerSettings = {
  imagePrefix: "registry.test/checkpoints",
  node: "node-a" as CheckpointerSettings["node"],
  nodeIp: "127.0.0.1",
  port: 0,
  kubeletPort: 10250,
  kubeletCertFile: "/nonexistent/tls.crt",
  kubeletKeyFile: "/nonexistent/tls.key",
  kubeletCaFile: Option.none(),
  listenAddress: Option.none(),
  kubeletAllowInsecure: false,
  kubeletTimeoutSeconds: 5,
  kubeletCheckpointDir: "/nonexistent/checkpoints",
  baseImage: "pbaran555/checkpoint-base:1.0.0",
  kanikoSecretName: "kaniko-secret",
  kanikoTimeoutSeconds: 30,
  kanikoImage: "ghcr.io/osscontainertools/kaniko:v1.28.3",
  kanikoMaxMemoryBytes: 8 * 1024 ** 3,
  kanikoCpuRequest: "500m",
  kanikoBuildContextDir: "/tmp/build-contexts",
  storageBasePath: "/nonexistent",
  disableRouteForward: true,
  builder: "native",
  namespace: "default",
  production: false,
  maxConcurrentCheckpoints: 2,
  resultTtlSeconds: 7 * 24 * 3600,
  shutdownGraceSeconds: 5,
  authMode: "none",
  kubeletAuth: "certificate",
  kubeletTokenFile: "/nonexistent/token",
  clientLimits: {
    requestTimeoutSeconds: 30,
    headersTimeoutSeconds: 10,
    keepAliveTimeoutSeconds: 5,
    maxConnections: 256
  },
  tls: Option.none(),
  tlsCaFile: Option.none(),
  tlsServerName: "checkpoint-service.default.svc"
}

/** What the fake node, builder and API server saw and what they should do next. */
export interface FakeWorld {
  readonly archives: Ref.Ref<ReadonlyArray<string>>
  readonly builds: Ref.Ref<ReadonlyArray<BuildRequest>>
  readonly deletedPods: Ref.Ref<ReadonlyArray<string>>
  readonly missingContainers: Ref.Ref<ReadonlySet<string>>
  readonly buildBehaviour: Ref.Ref<(request: BuildRequest) => Effect.Effect<void, ImageBuildError>>
  /** Every container the kubelet was asked to checkpoint. */
  readonly kubeletCalls: Ref.Ref<ReadonlyArray<ContainerRef>>
  /** The path the kubelet answers instead of the archive it wrote (a lying kubelet), given its checkpoint directory. */
  readonly kubeletLie: Ref.Ref<Option.Option<(checkpointDir: string) => string>>
}

export class World extends Effect.Service<World>()("test/World", {
  effect: Effect.gen(function*() {
    return {
      archives: yield* Ref.make<ReadonlyArray<string>>([]),
      builds: yield* Ref.make<ReadonlyArray<BuildRequest>>([]),
      deletedPods: yield* Ref.make<ReadonlyArray<string>>([]),
      missingContainers: yield* Ref.make<ReadonlySet<string>>(new Set()),
      buildBehaviour: yield* Ref.make<(request: BuildRequest) => Effect.Effect<void, ImageBuildError>>(() => Effect.void),
      kubeletCalls: yield* Ref.make<ReadonlyArray<ContainerRef>>([]),
      kubeletLie: yield* Ref.make(Option.none<(checkpointDir: string) => string>())
    } satisfies FakeWorld
  })
}) {}

/** A kubelet that writes a small real archive file into KUBELET_CHECKPOINT_DIR, like the real one does. */
const FakeKubelet = Layer.unwrapEffect(Effect.gen(function*() {
  const world = yield* World
  const fs = yield* FileSystem.FileSystem
  const dir = (yield* CheckpointerConfig).kubeletCheckpointDir
  return KubeletServiceTest((container: ContainerRef) =>
    Effect.gen(function*() {
      yield* Ref.update(world.kubeletCalls, (all) => [...all, container])
      const lie = yield* Ref.get(world.kubeletLie)
      if (Option.isSome(lie)) return lie.value(dir)
      if ((yield* Ref.get(world.missingContainers)).has(container.container)) {
        return yield* new ContainerMissing({ container, message: `container ${container} not found on node node-a` })
      }
      const archive = `${dir}/checkpoint-${container.pod}_${container.namespace}-${container.container}-${Date.now()}.tar`
      yield* fs.writeFileString(archive, "archive bytes").pipe(Effect.orDie)
      yield* Ref.update(world.archives, (all) => [...all, archive])
      return archive
    })
  )
}))

const FakeBuilder = Layer.effect(
  ImageBuilder,
  Effect.gen(function*() {
    const world = yield* World
    const fs = yield* FileSystem.FileSystem
    return {
      name: "fake",
      build: (request: BuildRequest) =>
        Effect.gen(function*() {
          if (!(yield* fs.exists(request.archive).pipe(Effect.orDie))) {
            return yield* new ImageBuildError({ phase: "read archive", message: `${request.archive} is missing` })
          }
          yield* Ref.update(world.builds, (all) => [...all, request])
          yield* Effect.flatMap(Ref.get(world.buildBehaviour), (behaviour) => behaviour(request))
          return { name: request.imageName, digest: `sha256:${"ab".repeat(32)}`, size: 13 }
        })
    }
  })
)

const FakeCluster = Layer.effect(
  Cluster,
  Effect.gen(function*() {
    const world = yield* World
    return Cluster.make({
      ...podRunningNotFaked,
      getPod: () => Effect.succeed(Option.none()),
      checkpointerPodsOn: () => Effect.succeed([]),
      deletePod: (namespace: string, name: string) =>
        name === "undeletable"
          ? Effect.fail(new KubernetesApiError({ status: 403, message: `delete pod ${namespace}/${name}: 403 forbidden` }))
          : Ref.update(world.deletedPods, (all) => [...all, `${namespace}/${name}`])
    })
  })
)

/** The test settings with a fresh KUBELET_CHECKPOINT_DIR, removed afterwards. */
const TestConfig = Layer.scoped(
  CheckpointerConfig,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpoints-" })
    return CheckpointerConfig.make({ ...testSettings, kubeletCheckpointDir: dir })
  })
)

/** Checkpointer with fake kubelet, builder and API server, the given result store and the real orchestration. */
export const makeCheckpointerTest = <E>(store: Layer.Layer<ResultStore, E>) =>
  Layer.mergeAll(Checkpointer.Default, Readiness.Default).pipe(
    Layer.provide([FakeKubelet, FakeBuilder, CheckpointDirectory.Default]),
    Layer.provideMerge(FakeCluster),
    Layer.provideMerge(store),
    Layer.provideMerge(World.Default),
    Layer.provideMerge(TestConfig),
    Layer.provideMerge(NodeContext.layer)
  )

export const CheckpointerTest = makeCheckpointerTest(ResultStore.Memory)

/** The whole API in process (NodeHttpServer.layerTest: an HttpClient that reaches it) over `makeCheckpointerTest`. */
export const makeServerTest = <E>(store: Layer.Layer<ResultStore, E>) =>
  AppLive.pipe(
    Layer.provideMerge(makeCheckpointerTest(store)),
    Layer.provideMerge(NodeHttpServer.layerTest)
  )

export const ServerTest = makeServerTest(ResultStore.Memory)
