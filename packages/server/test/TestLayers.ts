import {
  checkpointDirConfig,
  CheckpointDirectory,
  Checkpointer,
  CheckpointImages,
  Cluster,
  ContainerMissing,
  ImageBuilder,
  ImageBuildError,
  ImageMissing,
  ImageRetention,
  ImageUnusable,
  KubeletServiceTest,
  KubernetesApiError,
  parsePodRecord,
  PodEvents,
  podRecordAnnotation,
  Readiness,
  Restorer,
  ResultStore,
  ServerConfig
} from "@checkpointer/core"
import type { Access, BuildRequest, ContainerRef, PodEventRecord } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { NodeContext, NodeHttpServer } from "@effect/platform-node"
import type { V1Pod, V1ResourceAttributes } from "@kubernetes/client-node"
import { ConfigProvider, Effect, Either, Layer, Option, Queue, Ref } from "effect"
import type { ConfigError, Scope } from "effect"
import { AppLive } from "../src/http/HttpServer.ts"

/** The environment of the Checkpointer under test (KUBELET_CHECKPOINT_DIR is a fresh directory per test layer). */
export const testEnvironment: Readonly<Record<string, string>> = {
  CHECKPOINT_IMAGE_PREFIX: "registry.test/checkpoints",
  CHECKPOINTER_NODE: "node-a",
  CHECKPOINTER_NODE_IP: "127.0.0.1",
  CHECKPOINTER_NAMESPACE: "default",
  CHECKPOINT_BUILDER: "native",
  DISABLE_ROUTE_FORWARD: "true",
  KUBELET_TIMEOUT: "5",
  SHUTDOWN_GRACE_SECONDS: "5"
}

/** The default client time bounds and connection cap. */
export const testClientLimits = {
  requestTimeoutSeconds: 30,
  headersTimeoutSeconds: 10,
  keepAliveTimeoutSeconds: 5,
  maxConnections: 256
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
  /** Every bearer token the API server was asked to review. */
  readonly tokenReviews: Ref.Ref<ReadonlyArray<string>>
  /** Pods created through the API, by `namespace/name`; they run at once (on node-c unless pinned). */
  readonly createdPods: Ref.Ref<ReadonlyMap<string, V1Pod>>
  /** Every Kubernetes event written. */
  readonly podEvents: Ref.Ref<ReadonlyArray<PodEventRecord>>
}

export class World extends Effect.Service<World>()("test/World", {
  effect: Effect.gen(function*() {
    return {
      archives: yield* Ref.make<ReadonlyArray<string>>([]),
      builds: yield* Ref.make<ReadonlyArray<BuildRequest>>([]),
      deletedPods: yield* Ref.make<ReadonlyArray<string>>([]),
      missingContainers: yield* Ref.make<ReadonlySet<string>>(new Set()),
      buildBehaviour: yield* Ref.make<(request: BuildRequest) => Effect.Effect<void, ImageBuildError>>(() =>
        Effect.void
      ),
      kubeletCalls: yield* Ref.make<ReadonlyArray<ContainerRef>>([]),
      kubeletLie: yield* Ref.make(Option.none<(checkpointDir: string) => string>()),
      tokenReviews: yield* Ref.make<ReadonlyArray<string>>([]),
      createdPods: yield* Ref.make<ReadonlyMap<string, V1Pod>>(new Map()),
      podEvents: yield* Ref.make<ReadonlyArray<PodEventRecord>>([])
    } satisfies FakeWorld
  })
}) {}

/** A kubelet that writes a small real archive file into KUBELET_CHECKPOINT_DIR, like the real one does. */
const FakeKubelet = Layer.unwrapEffect(Effect.gen(function*() {
  const world = yield* World
  const fs = yield* FileSystem.FileSystem
  const dir = yield* checkpointDirConfig
  return KubeletServiceTest((container: ContainerRef) =>
    Effect.gen(function*() {
      yield* Ref.update(world.kubeletCalls, (all) => [...all, container])
      const lie = yield* Ref.get(world.kubeletLie)
      if (Option.isSome(lie)) return lie.value(dir)
      if ((yield* Ref.get(world.missingContainers)).has(container.container)) {
        return yield* new ContainerMissing({ container, message: `container ${container} not found on node node-a` })
      }
      const archive =
        `${dir}/checkpoint-${container.pod}_${container.namespace}-${container.container}-${Date.now()}.tar`
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
            return yield* new ImageBuildError({ step: "read archive", message: `${request.archive} is missing` })
          }
          yield* Ref.update(world.builds, (all) => [...all, request])
          yield* Effect.flatMap(Ref.get(world.buildBehaviour), (behaviour) => behaviour(request))
          return { name: request.imageName, digest: `sha256:${"ab".repeat(32)}`, size: 13 }
        })
    }
  })
)

/** A registry that has the images the fake builder built, with the annotations the Checkpointer gave them. */
const FakeCheckpointImages = Layer.effect(
  CheckpointImages,
  Effect.gen(function*() {
    const world = yield* World
    return CheckpointImages.of({
      podRecord: (image) =>
        Effect.gen(function*() {
          const build = (yield* Ref.get(world.builds)).find((request) => request.imageName === image)
          if (build === undefined) return yield* new ImageMissing({ message: `image ${image} does not exist` })
          const recorded = build.annotations?.[podRecordAnnotation]
          if (recorded === undefined) {
            return yield* new ImageUnusable({ message: `${image} does not record its pod` })
          }
          return yield* Either.match(parsePodRecord(recorded), {
            onLeft: (message) => Effect.fail(new ImageUnusable({ message })),
            onRight: Effect.succeed
          })
        })
    })
  })
)

/** A pod as the fake node runs it: scheduled (the scheduler picks node-c unless it is pinned), containers running. */
const runningPod = (pod: V1Pod): V1Pod => ({
  ...pod,
  spec: { ...pod.spec!, nodeName: pod.spec?.nodeName ?? "node-c" },
  status: {
    phase: "Running",
    containerStatuses: (pod.spec?.containers ?? []).map((container) => ({
      name: container.name,
      image: container.image ?? "",
      imageID: "",
      ready: true,
      restartCount: 0,
      state: { running: {} }
    }))
  }
})

/** What the fake API server knows. */
export interface FakeClusterState {
  /** Pods by `namespace/name`. */
  readonly pods?: Readonly<Record<string, V1Pod>>
  /** The pod IP of the Checkpointer on each node. */
  readonly checkpointers?: Readonly<Record<string, string>>
  /** Callers by bearer token, with everything they may do. */
  readonly users?: Readonly<Record<string, { readonly username: string; readonly allow: ReadonlyArray<Access> }>>
  /** The API server does not answer (pod lookups and reviews fail). */
  readonly unreachable?: boolean
}

const allows = (allowed: Access, wanted: V1ResourceAttributes) =>
  allowed.verb === wanted.verb && allowed.resource === wanted.resource &&
  allowed.subresource === wanted.subresource && allowed.namespace === wanted.namespace

const makeFakeCluster = (state: FakeClusterState) =>
  Layer.effect(
    Cluster,
    Effect.gen(function*() {
      const world = yield* World
      const unreachable = (what: string) =>
        Effect.fail(new KubernetesApiError({ status: undefined, message: `${what}: connect ECONNREFUSED` }))
      return Cluster.make({
        getPod: (namespace: string, name: string) =>
          state.unreachable ? unreachable("get pod") : Effect.map(
            Ref.get(world.createdPods),
            (created) =>
              Option.fromNullable(state.pods?.[`${namespace}/${name}`] ?? created.get(`${namespace}/${name}`))
          ),
        createPod: (namespace: string, pod: V1Pod) =>
          Effect.gen(function*() {
            const key = `${namespace}/${pod.metadata?.name}`
            if (state.pods?.[key] !== undefined || (yield* Ref.get(world.createdPods)).has(key)) {
              return yield* new KubernetesApiError({ status: 409, message: `create pod ${key}: 409 already exists` })
            }
            const created = { ...pod, metadata: { ...pod.metadata, uid: `uid-${pod.metadata?.name}` } }
            yield* Ref.update(world.createdPods, (all) => new Map(all).set(key, runningPod(created)))
            return created
          }),
        podEvents: () => Effect.succeed([]),
        checkpointerPodsOn: (node: string) =>
          Effect.succeed(Option.match(Option.fromNullable(state.checkpointers?.[node]), {
            onNone: (): Array<V1Pod> => [],
            onSome: (podIP) => [{ status: { phase: "Running", podIP } }]
          })),
        deletePod: (namespace: string, name: string) =>
          name === "undeletable"
            ? Effect.fail(
              new KubernetesApiError({ status: 403, message: `delete pod ${namespace}/${name}: 403 forbidden` })
            )
            : Ref.update(world.deletedPods, (all) => [...all, `${namespace}/${name}`]).pipe(
              Effect.zipRight(Ref.update(world.createdPods, (all) => {
                const next = new Map(all)
                next.delete(`${namespace}/${name}`)
                return next
              }))
            ),
        reviewToken: (token: string) =>
          Effect.gen(function*() {
            yield* Ref.update(world.tokenReviews, (all) => [...all, token])
            if (state.unreachable) return yield* unreachable("token review")
            return Option.map(Option.fromNullable(state.users?.[token]), ({ username }) => ({ username }))
          }),
        recordPodEvent: (event: PodEventRecord) =>
          state.unreachable ? unreachable("record event") : Ref.update(world.podEvents, (all) => [...all, event]),
        reviewAccess: (user, access) =>
          Effect.succeed(
            Object.values(state.users ?? {}).some((known) =>
              known.username === user.username && known.allow.some((allowed) => allows(allowed, access))
            )
          )
      })
    })
  )

/** The test environment, changed by `environment`, with a fresh KUBELET_CHECKPOINT_DIR, removed afterwards. */
const makeTestConfig = (environment: Readonly<Record<string, string>>) =>
  Layer.unwrapScoped(
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpoints-" })
      const variables = { ...testEnvironment, KUBELET_CHECKPOINT_DIR: dir, ...environment }
      return Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(variables))))
    })
  )

export interface TestOptions<E> {
  /** Default: a memory store. */
  readonly store?: Layer.Layer<ResultStore, E>
  /** Variables on top of testEnvironment, e.g. AUTH_MODE. */
  readonly environment?: Readonly<Record<string, string>>
  readonly cluster?: FakeClusterState
  /** Default: images are kept. */
  readonly retention?: Layer.Layer<ImageRetention, ConfigError.ConfigError, ResultStore>
}

/**
 * Checkpointer with fake kubelet, builder and API server, the given result store and the real orchestration. Every
 * build of this layer has a world of its own.
 */
export const makeCheckpointerTest = <E = never>(options: TestOptions<E> = {}) =>
  Restorer.Default.pipe(
    Layer.provide(FakeCheckpointImages),
    Layer.provideMerge(Layer.mergeAll(Checkpointer.Default, Readiness.Default)),
    Layer.provide([FakeKubelet, FakeBuilder, CheckpointDirectory.Default, options.retention ?? ImageRetention.Keep]),
    Layer.provideMerge(PodEvents.Default),
    Layer.provideMerge(makeFakeCluster(options.cluster ?? {})),
    Layer.provideMerge(options.store ?? ResultStore.Memory),
    Layer.provideMerge(World.Default),
    Layer.provideMerge(ServerConfig.Default),
    Layer.provideMerge(makeTestConfig(options.environment ?? {})),
    Layer.provideMerge(NodeContext.layer)
  )

/** The whole API in process (NodeHttpServer.layerTest: an HttpClient that reaches it) over `makeCheckpointerTest`. */
export const makeServerTest = <E = never>(options: TestOptions<E> = {}) =>
  AppLive.pipe(
    Layer.provideMerge(makeCheckpointerTest(options)),
    Layer.provideMerge(NodeHttpServer.layerTest)
  )

/** A memory store that offers every identifier it is asked for to `reads`. */
export const recordingReads = (reads: Queue.Enqueue<string>) =>
  Layer.effect(
    ResultStore,
    Effect.map(ResultStore, (store) =>
      ResultStore.of({
        ...store,
        get: (identifier) => Queue.offer(reads, identifier).pipe(Effect.zipRight(store.get(identifier)))
      }))
  ).pipe(Layer.provide(ResultStore.Memory))

type ServerTestServices = Layer.Layer.Success<ReturnType<typeof makeServerTest>>

/** Runs one test against a server of its own: no world, store or setting is shared with another test. */
export const onOwnServer =
  <E = never>(options: TestOptions<E> = {}) => <A, E2>(test: Effect.Effect<A, E2, ServerTestServices | Scope.Scope>) =>
    test.pipe(Effect.scoped, Effect.provide(makeServerTest(options)))
