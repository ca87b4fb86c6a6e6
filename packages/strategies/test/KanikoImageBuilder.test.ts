import {
  ContainerName,
  ContainerRef,
  describeConfigError,
  ImageBuilder,
  Namespace,
  NodeName,
  PodName
} from "@checkpointer/core"
import type { BuildRequest, KubernetesApiError } from "@checkpointer/core"
import { FileSystem, Path } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import type { V1Pod } from "@kubernetes/client-node"
import {
  ConfigProvider,
  Deferred,
  Duration,
  Effect,
  Either,
  Fiber,
  Layer,
  Option,
  Ref,
  Stream,
  TestClock
} from "effect"
import { createHash, randomBytes } from "node:crypto"
import { gunzipSync, zstdCompressSync } from "node:zlib"
import { create, Parser } from "tar"
import type { ReadEntry } from "tar"
import { readArchiveMetadata } from "../src/archive/CheckpointMetadata.ts"
import {
  contextFiles,
  describePodState,
  dockerfile,
  kanikoArgs,
  kanikoMemory,
  kanikoMemoryBytes,
  kanikoPod,
  noRegistryTrust,
  registryHost,
  reportedDigest,
  sizeAllowance
} from "../src/kaniko/KanikoBuilder.ts"
import type { KanikoPodSettings } from "../src/kaniko/KanikoBuilder.ts"
import { buildContext } from "../src/kaniko/KanikoContext.ts"
import * as KanikoFsImageBuilder from "../src/kaniko/KanikoFsImageBuilder.ts"
import * as KanikoImageBuilder from "../src/kaniko/KanikoImageBuilder.ts"
import { KanikoPods } from "../src/kaniko/KanikoPods.ts"

const container = ContainerRef.make({
  namespace: Namespace.make("team-a"),
  pod: PodName.make("notebook-0"),
  container: ContainerName.make("lab")
})

const digest = `sha256:${"ab".repeat(32)}`

const settings: KanikoPodSettings = {
  namespace: "kube-system",
  node: NodeName.make("worker-1"),
  image: "ghcr.io/osscontainertools/kaniko:v1.28.3",
  secretName: "kaniko-secret",
  timeoutSeconds: 30,
  buildContextDir: "/tmp/build-contexts",
  maxMemoryBytes: 8 * 1024 ** 3,
  cpuRequest: "500m",
  baseImage: "registry.test/checkpoint-base:1.0.0"
}

/** The same settings as the builders read them. */
const environment: Readonly<Record<string, string>> = {
  CHECKPOINTER_NAMESPACE: "kube-system",
  CHECKPOINTER_NODE: "worker-1",
  KANIKO_IMAGE: "ghcr.io/osscontainertools/kaniko:v1.28.3",
  KANIKO_SECRET_NAME: "kaniko-secret",
  KANIKO_TIMEOUT: "30",
  KANIKO_BUILD_CTX_DIR: "/tmp/build-contexts",
  KANIKO_MAX_MEMORY: "8Gi",
  KANIKO_CPU_REQUEST: "500m",
  CHECKPOINT_BASE_IMAGE: "registry.test/checkpoint-base:1.0.0"
}

const configured = (variables: Readonly<Record<string, string>> = {}) =>
  Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries({ ...environment, ...variables }))))

const mib = 1024 * 1024

/** What every pod of these tests gets besides its context: no registry CA, 1 GiB, amd64. */
const podDefaults = { trust: noRegistryTrust, memoryBytes: 1024 * mib, architecture: "amd64" }

const request = (archive: string): BuildRequest => ({
  archive,
  container,
  imageName: "registry.test/checkpoints/app:0123456789abcdef"
})

const annotations = {
  "io.kubernetes.cri-o.annotations.checkpoint.name": "lab",
  "org.criu.checkpoint.container.name": "c"
}

/** A checkpoint-shaped tar: config.dump and spec.dump first, then some CRIU image bytes. */
const makeArchive = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const dir = yield* fs.makeTempDirectoryScoped({ prefix: "kaniko-test-" })
  const content = path.join(dir, "content")
  yield* fs.makeDirectory(content)
  yield* fs.writeFileString(path.join(content, "config.dump"), JSON.stringify({ name: "lab-ctr", runtime: "runc" }))
  yield* fs.writeFileString(
    path.join(content, "spec.dump"),
    JSON.stringify({ annotations: { "io.container.manager": "libpod" } })
  )
  yield* fs.writeFile(path.join(content, "pages-1.img"), randomBytes(2 * 1024 * 1024 + 5))
  const archive = path.join(dir, "checkpoint-notebook-0_team-a-lab-2026-11-24T10:00:00Z.tar")
  yield* Effect.promise(() =>
    create({ file: archive, cwd: content, portable: true }, ["config.dump", "spec.dump", "pages-1.img"])
  )
  return { dir, archive }
})

const plainContextArchive = (path: string) => ({
  path,
  name: path.slice(path.lastIndexOf("/") + 1),
  size: 0,
  compression: "none" as const
})

/** The entries of a tar.gz: name and sha256 of the content. */
const entriesOf = (targz: Uint8Array) =>
  Effect.async<ReadonlyArray<{ readonly path: string; readonly sha256: string; readonly text: string }>>((resume) => {
    const entries: Array<{ path: string; sha256: string; text: string }> = []
    const parser = new Parser({
      onReadEntry: (entry: ReadEntry) => {
        const hash = createHash("sha256")
        const chunks: Array<Buffer> = []
        entry.on("data", (chunk: Buffer) => {
          hash.update(chunk)
          if (chunks.length < 4) chunks.push(Buffer.from(chunk))
        })
        entry.on(
          "end",
          () =>
            entries.push({ path: entry.path, sha256: hash.digest("hex"), text: Buffer.concat(chunks).toString("utf8") })
        )
      }
    })
    parser.on("end", () => resume(Effect.succeed(entries)))
    parser.end(gunzipSync(targz))
  })

const pod = (phase: string, terminated?: { readonly exitCode: number; readonly message?: string }): V1Pod => ({
  metadata: { name: "checkpointer-kaniko-abcde", namespace: "kube-system" },
  status: {
    phase,
    containerStatuses: [{
      name: "kaniko",
      image: "kaniko",
      imageID: "",
      ready: false,
      restartCount: 0,
      state: terminated === undefined ? { running: {} } : { terminated: { ...terminated, reason: "Error" } }
    }]
  }
})

describe("Kaniko pod", () => {
  it("kaniko: stdin open, the build context from tar://stdin, annotations, digest to the termination log", () => {
    const spec = kanikoPod({
      settings,
      builder: "kaniko",
      request: request("/a.tar"),
      context: { _tag: "Stdin" },
      annotations,
      ...podDefaults
    })
    expect(spec.metadata?.generateName).toBe("checkpointer-kaniko-")
    expect(spec.metadata?.namespace).toBe("kube-system")
    expect(spec.metadata?.labels).toMatchObject({
      "app.kubernetes.io/name": "checkpointer-kaniko",
      "checkpointer/builder": "kaniko",
      "checkpointer/node": "worker-1"
    })
    expect(spec.metadata?.annotations?.["checkpointer/container"]).toBe("team-a/notebook-0/lab")
    expect(spec.spec?.restartPolicy).toBe("Never")
    expect(spec.spec?.nodeName).toBeUndefined()
    expect(spec.spec?.nodeSelector).toEqual({ "kubernetes.io/arch": "amd64" })
    const [kaniko] = spec.spec?.containers ?? []
    expect(kaniko?.image).toBe("ghcr.io/osscontainertools/kaniko:v1.28.3")
    expect(kaniko?.stdin).toBe(true)
    expect(kaniko?.stdinOnce).toBe(true)
    expect(kaniko?.args).toEqual([
      "--dockerfile=Dockerfile",
      "--context=tar://stdin",
      "--destination=registry.test/checkpoints/app:0123456789abcdef",
      "--image-format=oci",
      "--digest-file=/dev/termination-log",
      "--annotation=io.kubernetes.cri-o.annotations.checkpoint.name=lab",
      "--annotation=org.criu.checkpoint.container.name=c"
    ])
    expect(kaniko?.volumeMounts).toEqual([{ name: "docker-config", mountPath: "/kaniko/.docker", readOnly: true }])
    expect(spec.spec?.volumes).toEqual([{
      name: "docker-config",
      secret: { secretName: "kaniko-secret", items: [{ key: ".dockerconfigjson", path: "config.json" }] }
    }])
  })

  it("kaniko-fs: pinned to the node, the build context from a hostPath directory", () => {
    const spec = kanikoPod({
      settings,
      builder: "kaniko-fs",
      request: request("/a.tar"),
      context: { _tag: "HostPath", path: "/tmp/build-contexts/checkpoint-x", nodeName: "worker-1" },
      annotations,
      ...podDefaults
    })
    expect(spec.spec?.nodeName).toBe("worker-1")
    expect(spec.spec?.nodeSelector).toEqual({ "kubernetes.io/arch": "amd64" })
    const [kaniko] = spec.spec?.containers ?? []
    expect(kaniko?.stdin).toBeUndefined()
    expect(kaniko?.args).toContain("--context=dir:///workspace")
    expect(kaniko?.volumeMounts).toContainEqual({ name: "build-context", mountPath: "/workspace", readOnly: true })
    expect(spec.spec?.volumes).toContainEqual({
      name: "build-context",
      hostPath: { path: "/tmp/build-contexts/checkpoint-x", type: "Directory" }
    })
  })

  it("memory requested and limited from the archive, CPU requested, GOMEMLIMIT below the limit", () => {
    const spec = kanikoPod({
      settings,
      builder: "kaniko",
      request: request("/a.tar"),
      context: { _tag: "Stdin" },
      annotations,
      ...podDefaults,
      memoryBytes: kanikoMemoryBytes(600 * mib),
      architecture: "arm64"
    })
    expect(spec.spec?.nodeSelector).toEqual({ "kubernetes.io/arch": "arm64" })
    const [kaniko] = spec.spec?.containers ?? []
    expect(kaniko?.resources).toEqual({ requests: { memory: "2956Mi", cpu: "500m" }, limits: { memory: "2956Mi" } })
    expect(kaniko?.env).toEqual([{ name: "GOMEMLIMIT", value: "1773MiB" }])
  })

  it("memory is 4.5 x the archive + 256 MiB in whole MiB, refused over KANIKO_MAX_MEMORY with the numbers", () => {
    expect(kanikoMemoryBytes(0)).toBe(256 * mib)
    expect(kanikoMemoryBytes(1)).toBe(257 * mib)
    expect(kanikoMemoryBytes(600 * mib)).toBe(2956 * mib)
    expect(kanikoMemory(1024 * mib, 8192 * mib)).toEqual(Either.right(4864 * mib))
    expect(kanikoMemory(4096 * mib, 8192 * mib)).toEqual(Either.left(
      "the archive Kaniko would ADD is 4096 MiB: the executor needs 4.5 x that + 256 MiB = 18688 MiB of memory, " +
        "more than KANIKO_MAX_MEMORY (8192 MiB); raise KANIKO_MAX_MEMORY or use CHECKPOINT_BUILDER=native, " +
        "which streams the archive"
    ))
  })

  it("the build timeout grows by 10 s per started 100 MiB of the archive", () => {
    expect(Duration.toSeconds(sizeAllowance(0))).toBe(0)
    expect(Duration.toSeconds(sizeAllowance(1))).toBe(10)
    expect(Duration.toSeconds(sizeAllowance(100 * mib))).toBe(10)
    expect(Duration.toSeconds(sizeAllowance(100 * mib + 1))).toBe(20)
    expect(Duration.toSeconds(sizeAllowance(600 * mib))).toBe(60)
  })

  it("REGISTRY_CA_FILE: --registry-certificate for the destination's and the base image's registry", () => {
    const withCa = { caPem: Option.some("-----BEGIN CERTIFICATE-----"), insecure: false }
    const stdin = kanikoArgs({
      context: { _tag: "Stdin" },
      destination: "registry.test:5443/checkpoints/app:0123456789abcdef",
      baseImage: "pbaran555/checkpoint-base:1.0.0",
      annotations: {},
      trust: withCa
    })
    expect(stdin.filter((arg) => arg.startsWith("--registry-certificate"))).toEqual([
      "--registry-certificate=registry.test:5443=/kaniko/buildcontext/registry-ca.pem",
      "--registry-certificate=index.docker.io=/kaniko/buildcontext/registry-ca.pem"
    ])
    expect(stdin.some((arg) => arg.includes("insecure") || arg.includes("skip-tls"))).toBe(false)
    const hostPath = kanikoArgs({
      context: { _tag: "HostPath", path: "/tmp/build-contexts/checkpoint-x", nodeName: "worker-1" },
      destination: "registry.test/checkpoints/app:0123456789abcdef",
      baseImage: "registry.test/checkpoint-base:1.0.0",
      annotations: {},
      trust: withCa
    })
    expect(hostPath.filter((arg) => arg.startsWith("--registry-certificate"))).toEqual([
      "--registry-certificate=registry.test=/workspace/registry-ca.pem"
    ])
    expect(contextFiles("FROM x\n", withCa)).toEqual([
      { name: "Dockerfile", text: "FROM x\n" },
      { name: "registry-ca.pem", text: "-----BEGIN CERTIFICATE-----" }
    ])
  })

  it("REGISTRY_INSECURE=true: plain HTTP and unverified TLS for the push and the base image's pull", () => {
    const args = kanikoArgs({
      context: { _tag: "Stdin" },
      destination: "registry.test/checkpoints/app:0123456789abcdef",
      baseImage: "registry.test/checkpoint-base:1.0.0",
      annotations: { a: "b" },
      trust: { caPem: Option.none(), insecure: true }
    })
    expect(args.slice(5)).toEqual([
      "--insecure",
      "--skip-tls-verify",
      "--insecure-pull",
      "--skip-tls-verify-pull",
      "--annotation=a=b"
    ])
  })

  it("names registries as the executor does (Docker Hub is index.docker.io)", () => {
    expect(registryHost("pbaran555/checkpoint-base:1.0.0")).toBe("index.docker.io")
    expect(registryHost("docker.io/library/busybox")).toBe("index.docker.io")
    expect(registryHost("busybox")).toBe("index.docker.io")
    expect(registryHost("localhost/x/y:1")).toBe("localhost")
    expect(registryHost("127.0.0.1:5000/x@sha256:00")).toBe("127.0.0.1:5000")
    expect(registryHost("quay.io/team/app")).toBe("quay.io")
  })

  it("the Dockerfile adds the archive to the base image", () => {
    expect(dockerfile("registry.test/checkpoint-base:1.0.0", "checkpoint.tar")).toBe(
      "FROM registry.test/checkpoint-base:1.0.0\nADD checkpoint.tar /\n"
    )
  })

  it("reads the digest from the termination message and describes the pod's state", () => {
    expect(reportedDigest(pod("Succeeded", { exitCode: 0, message: `${digest}\n` }))).toEqual(Option.some(digest))
    expect(reportedDigest(pod("Succeeded", { exitCode: 0, message: "INFO pushed" }))).toEqual(Option.none())
    expect(describePodState(pod("Failed", { exitCode: 1 }))).toBe("Failed (exit code 1: Error)")
    expect(describePodState({ status: { phase: "Pending" } })).toBe("Pending")
  })
})

describe("build context and archive metadata", () => {
  it.scoped("the tar.gz holds the Dockerfile and the archive, byte for byte", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const { archive } = yield* makeArchive
      const text = dockerfile("base:1", "x.tar")
      const chunks = yield* Stream.runCollect(
        buildContext(plainContextArchive(archive), contextFiles(text, noRegistryTrust))
      )
      const entries = yield* entriesOf(Buffer.concat([...chunks]))
      const archiveBytes = yield* fs.readFile(archive)
      expect(entries.map((entry) => entry.path)).toEqual(["Dockerfile", archive.slice(archive.lastIndexOf("/") + 1)])
      expect(entries[0]!.text).toBe(text)
      expect(entries[1]!.sha256).toBe(createHash("sha256").update(archiveBytes).digest("hex"))
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("a missing archive fails the build context stream", () =>
    Effect.gen(function*() {
      const error = yield* Stream.runDrain(
        buildContext(plainContextArchive("/nonexistent/x.tar"), contextFiles("FROM x\n", noRegistryTrust))
      ).pipe(Effect.flip)
      expect(error.message).toContain("/nonexistent/x.tar")
    }))

  it.scoped("metadata is read from the start of the archive only", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const { archive } = yield* makeArchive
      // Garbage after the dumps: a reader that went on would fail on it.
      const bytes = yield* fs.readFile(archive)
      yield* fs.writeFile(archive, Buffer.concat([bytes.subarray(0, 4 * 512), randomBytes(64 * 1024)]))
      const metadata = yield* readArchiveMetadata(archive)
      expect(Option.map(metadata.configDump, (dump) => dump["name"])).toEqual(Option.some("lab-ctr"))
      expect(Option.isSome(metadata.specDump)).toBe(true)
    }).pipe(Effect.provide(NodeContext.layer)))
})

/** Scripted Kaniko pods: the pod goes through `phases` when waited for; what was called is recorded. */
const fakePods = (options: {
  readonly waits: ReadonlyArray<Effect.Effect<V1Pod, KubernetesApiError>>
  readonly calls: Ref.Ref<ReadonlyArray<string>>
  readonly streamed?: Ref.Ref<number>
  readonly waiting?: Deferred.Deferred<void>
  /** The pods created, and the bytes sent to stdin (copied). */
  readonly pods?: Ref.Ref<ReadonlyArray<V1Pod>>
  readonly received?: Ref.Ref<ReadonlyArray<Uint8Array>>
}) =>
  Effect.gen(function*() {
    const waits = yield* Ref.make(options.waits)
    const record = (call: string) => Ref.update(options.calls, (calls) => [...calls, call])
    return KanikoPods.make({
      getPod: () => Effect.succeed(Option.some(pod("Pending"))),
      createPod: (_namespace, spec) =>
        Effect.as(
          Effect.zipRight(
            Ref.update(options.pods ?? Ref.unsafeMake<ReadonlyArray<V1Pod>>([]), (pods) => [...pods, spec]),
            record(`create ${spec.metadata?.labels?.["checkpointer/builder"]}`)
          ),
          {
            ...spec,
            metadata: { ...spec.metadata, name: "checkpointer-kaniko-abcde" }
          }
        ),
      requestPodDeletion: (namespace, name) => record(`delete ${namespace}/${name}`),
      waitForPod: () =>
        Effect.flatMap(Ref.modify(waits, ([next, ...rest]) => [next ?? Effect.never, rest]), (wait) => wait).pipe(
          Effect.zipLeft(options.waiting === undefined ? Effect.void : Deferred.succeed(options.waiting, undefined), {
            concurrent: true
          })
        ),
      podLogTail: () => Effect.succeed("INFO[0000] Retrieving image manifest\nerror building image: boom\n"),
      attachStdin: (_namespace, _name, _container, input) =>
        Stream.runForEach(input, (chunk) =>
          Effect.zipRight(
            Ref.update(options.streamed ?? Ref.unsafeMake(0), (n) => n + chunk.length),
            Ref.update(options.received ?? Ref.unsafeMake<ReadonlyArray<Uint8Array>>([]), (all) => [
              ...all,
              Uint8Array.from(chunk)
            ])
          )).pipe(Effect.zipRight(record("attach")))
    })
  })

/** The builders with a fake KanikoPods in place of the API server's. */
const kanikoLayer = KanikoImageBuilder.layerWithoutDependencies
const kanikoFsLayer = KanikoFsImageBuilder.layerWithoutDependencies

const builderWith = (
  layer: typeof kanikoLayer,
  pods: Effect.Effect<KanikoPods>,
  variables: Readonly<Record<string, string>> = {}
) =>
  Layer.provide(
    layer,
    Layer.mergeAll(
      Layer.effect(KanikoPods, pods),
      configured(variables),
      NodeContext.layer
    )
  ).pipe(Layer.orDie)

const build = (archive: string) => Effect.flatMap(ImageBuilder, (builder) => builder.build(request(archive)))

/** A build whose pod never gets anywhere, forked; returns once the build waits for the pod. */
const stuckBuild = (
  layer: typeof kanikoLayer,
  archive: string,
  variables: Readonly<Record<string, string>> = {}
) =>
  Effect.gen(function*() {
    const calls = yield* Ref.make<ReadonlyArray<string>>([])
    const waiting = yield* Deferred.make<void>()
    const fiber = yield* build(archive).pipe(
      Effect.provide(builderWith(layer, fakePods({ waits: [], calls, waiting }), variables)),
      Effect.flip,
      Effect.fork
    )
    yield* Deferred.await(waiting)
    return { calls, fiber }
  })

/** Moves the TestClock on by `seconds`, one second at a time, letting the build's fibers run in between. */
const advance = (seconds: number) =>
  Effect.yieldNow().pipe(Effect.zipRight(TestClock.adjust(Duration.seconds(1))), Effect.repeatN(seconds - 1))

describe("Kaniko builders with a scripted cluster", () => {
  it.scoped("kaniko streams the context once the pod runs, answers the reported digest, deletes the pod", () =>
    Effect.gen(function*() {
      const { archive } = yield* makeArchive
      const calls = yield* Ref.make<ReadonlyArray<string>>([])
      const streamed = yield* Ref.make(0)
      const cluster = fakePods({
        waits: [Effect.succeed(pod("Running")), Effect.succeed(pod("Succeeded", { exitCode: 0, message: digest }))],
        calls,
        streamed
      })
      const image = yield* build(archive).pipe(Effect.provide(builderWith(kanikoLayer, cluster)))
      expect(image).toMatchObject({ name: "registry.test/checkpoints/app:0123456789abcdef", digest })
      expect(yield* Ref.get(calls)).toEqual(["create kaniko", "attach", "delete kube-system/checkpointer-kaniko-abcde"])
      expect(yield* Ref.get(streamed)).toBeGreaterThan(0)
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("a failed pod is a build failure with the container's last log lines, and the pod is deleted", () =>
    Effect.gen(function*() {
      const { archive } = yield* makeArchive
      const calls = yield* Ref.make<ReadonlyArray<string>>([])
      const cluster = fakePods({ waits: [Effect.succeed(pod("Failed", { exitCode: 1 }))], calls })
      const error = yield* build(archive).pipe(
        Effect.provide(builderWith(kanikoFsLayer, cluster)),
        Effect.flip
      )
      expect(error.step).toBe("build")
      expect(error.message).toContain("failed: it is Failed (exit code 1: Error)")
      expect(error.message).toContain("error building image: boom")
      expect(yield* Ref.get(calls)).toEqual(["create kaniko-fs", "delete kube-system/checkpointer-kaniko-abcde"])
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("KANIKO_TIMEOUT without Running is a scheduling failure (TestClock), and the pod is deleted", () =>
    Effect.gen(function*() {
      const { archive } = yield* makeArchive
      const { calls, fiber } = yield* stuckBuild(kanikoLayer, archive)
      yield* advance(32)
      const error = yield* Fiber.join(fiber)
      expect(error.step).toBe("scheduling")
      expect(error.message).toMatch(/was not running within 30s: it is Pending/)
      expect(yield* Ref.get(calls)).toEqual(["create kaniko", "delete kube-system/checkpointer-kaniko-abcde"])
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("an interrupted build deletes its pod and removes its build context directory", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      const { archive, dir } = yield* makeArchive
      const contexts = path.join(dir, "contexts")
      const { calls, fiber } = yield* stuckBuild(kanikoFsLayer, archive, { KANIKO_BUILD_CTX_DIR: contexts })
      const [context] = yield* fs.readDirectory(contexts)
      expect((yield* fs.readDirectory(path.join(contexts, context!))).sort()).toEqual(
        ["Dockerfile", path.basename(archive)].sort()
      )
      yield* Fiber.interrupt(fiber)
      expect(yield* fs.readDirectory(contexts)).toEqual([])
      expect(yield* Ref.get(calls)).toEqual(["create kaniko-fs", "delete kube-system/checkpointer-kaniko-abcde"])
      expect(yield* fs.exists(archive)).toBe(true)
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped.each([["kaniko", kanikoLayer], ["kaniko-fs", kanikoFsLayer]] as const)(
    "%s refuses to start with CHECKPOINT_ENCRYPTION_KEYS or a layer compression, naming both",
    ([name, layer]) =>
      Effect.gen(function*() {
        const calls = yield* Ref.make<ReadonlyArray<string>>([])
        const built = (variables: Readonly<Record<string, string>>) =>
          Layer.build(Layer.provide(
            layer,
            Layer.mergeAll(Layer.effect(KanikoPods, fakePods({ waits: [], calls })), configured(variables))
          ))
        const error = yield* Effect.flip(built({
          CHECKPOINT_ENCRYPTION_KEYS: "/etc/checkpointer/keys/ops.pem",
          CHECKPOINT_LAYER_COMPRESSION: "zstd",
          CHECKPOINT_LAYER_COMPRESSION_LEVEL: "3"
        }))
        expect(describeConfigError(error)).toEqual([
          `CHECKPOINT_ENCRYPTION_KEYS: the ${name} builder cannot encrypt images (Kaniko cannot); ` +
          "use CHECKPOINT_BUILDER=native, or unset it",
          `CHECKPOINT_LAYER_COMPRESSION: the ${name} builder cannot push the archive as a zstd layer (Kaniko makes ` +
          "its own gzip layer around it); use CHECKPOINT_BUILDER=native, or unset it",
          `CHECKPOINT_LAYER_COMPRESSION_LEVEL: the ${name} builder does not compress the archive (Kaniko makes its ` +
          "own gzip layer around it); use CHECKPOINT_BUILDER=native, or unset it"
        ])
        yield* built({ CHECKPOINT_LAYER_COMPRESSION: "none", CHECKPOINT_ENCRYPTION_KEYS: " " })
        expect(yield* Ref.get(calls)).toEqual([])
      }).pipe(Effect.provide(NodeContext.layer))
  )
})

/** The archive compressed with zstd, next to it; and the sha256 of the plain tar. */
const zstdArchive = (archive: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const plain = yield* fs.readFile(archive)
    const compressed = `${archive}.zst`
    yield* fs.writeFile(compressed, zstdCompressSync(plain))
    return { compressed, plainSize: plain.length, plainSha256: createHash("sha256").update(plain).digest("hex") }
  })

const caPem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

describe("Kaniko builders: archive formats, registry trust, resources", () => {
  it.scoped("kaniko: a zstd archive reaches the executor as the plain tar, next to the registry's CA", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      const { archive, dir } = yield* makeArchive
      const { compressed, plainSha256, plainSize } = yield* zstdArchive(archive)
      yield* fs.writeFileString(path.join(dir, "ca.pem"), caPem)
      const calls = yield* Ref.make<ReadonlyArray<string>>([])
      const pods = yield* Ref.make<ReadonlyArray<V1Pod>>([])
      const received = yield* Ref.make<ReadonlyArray<Uint8Array>>([])
      const cluster = fakePods({
        waits: [Effect.succeed(pod("Running")), Effect.succeed(pod("Succeeded", { exitCode: 0, message: digest }))],
        calls,
        pods,
        received
      })
      const image = yield* build(compressed).pipe(
        Effect.provide(builderWith(kanikoLayer, cluster, { REGISTRY_CA_FILE: path.join(dir, "ca.pem") }))
      )
      expect(image.digest).toBe(digest)
      const entries = yield* entriesOf(Buffer.concat([...(yield* Ref.get(received))]))
      expect(entries.map((entry) => entry.path)).toEqual(["Dockerfile", "registry-ca.pem", path.basename(compressed)])
      expect(entries[1]!.text).toBe(caPem)
      expect(entries[2]!.sha256).toBe(plainSha256)
      const [created] = yield* Ref.get(pods)
      const [kaniko] = created?.spec?.containers ?? []
      expect(kaniko?.args).toContain("--registry-certificate=registry.test=/kaniko/buildcontext/registry-ca.pem")
      expect(kaniko?.resources?.limits).toEqual({ memory: `${kanikoMemoryBytes(plainSize) / mib}Mi` })
      expect(yield* Ref.get(calls)).toEqual(["create kaniko", "attach", "delete kube-system/checkpointer-kaniko-abcde"])
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("kaniko-fs: a zstd archive is written decompressed into the build context, with the registry's CA", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      const { archive, dir } = yield* makeArchive
      const { compressed, plainSha256, plainSize } = yield* zstdArchive(archive)
      yield* fs.writeFileString(path.join(dir, "ca.pem"), caPem)
      const contexts = path.join(dir, "contexts")
      const calls = yield* Ref.make<ReadonlyArray<string>>([])
      const pods = yield* Ref.make<ReadonlyArray<V1Pod>>([])
      const waiting = yield* Deferred.make<void>()
      const cluster = fakePods({ waits: [], calls, waiting, pods })
      const fiber = yield* build(compressed).pipe(
        Effect.provide(builderWith(kanikoFsLayer, cluster, {
          KANIKO_BUILD_CTX_DIR: contexts,
          REGISTRY_CA_FILE: path.join(dir, "ca.pem"),
          REGISTRY_INSECURE: "true"
        })),
        Effect.fork
      )
      yield* Deferred.await(waiting)
      const [context] = yield* fs.readDirectory(contexts)
      const contextDir = path.join(contexts, context!)
      expect((yield* fs.readDirectory(contextDir)).sort()).toEqual(
        ["Dockerfile", "registry-ca.pem", path.basename(compressed)].sort()
      )
      const written = yield* fs.readFile(path.join(contextDir, path.basename(compressed)))
      expect(createHash("sha256").update(written).digest("hex")).toBe(plainSha256)
      expect(yield* fs.readFileString(path.join(contextDir, "registry-ca.pem"))).toBe(caPem)
      const [created] = yield* Ref.get(pods)
      const [kaniko] = created?.spec?.containers ?? []
      expect(kaniko?.args).toContain("--registry-certificate=registry.test=/workspace/registry-ca.pem")
      expect(kaniko?.args).toContain("--skip-tls-verify")
      expect(kaniko?.resources?.requests).toEqual({ memory: `${kanikoMemoryBytes(plainSize) / mib}Mi`, cpu: "500m" })
      expect(created?.spec?.nodeName).toBe("worker-1")
      yield* Fiber.interrupt(fiber)
      expect(yield* fs.readDirectory(contexts)).toEqual([])
      expect(yield* Ref.get(calls)).toEqual(["create kaniko-fs", "delete kube-system/checkpointer-kaniko-abcde"])
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("an unreadable REGISTRY_CA_FILE stops the Kaniko builder at startup, naming the variable", () =>
    Effect.gen(function*() {
      const calls = yield* Ref.make<ReadonlyArray<string>>([])
      const layer = Layer.provide(
        kanikoLayer,
        Layer.mergeAll(
          Layer.effect(KanikoPods, fakePods({ waits: [], calls })),
          configured({ REGISTRY_CA_FILE: "/nonexistent/ca.pem" }),
          NodeContext.layer
        )
      )
      const error = yield* Effect.flip(Layer.build(layer))
      expect(describeConfigError(error).join("\n")).toMatch(/^REGISTRY_CA_FILE: cannot read \/nonexistent\/ca\.pem/)
    }))

  it.scoped("an xz archive fails in \"read archive\", naming the format, before any pod", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const { archive } = yield* makeArchive
      yield* fs.writeFile(archive, Buffer.concat([Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), randomBytes(512)]))
      const calls = yield* Ref.make<ReadonlyArray<string>>([])
      const error = yield* build(archive).pipe(
        Effect.provide(builderWith(kanikoLayer, fakePods({ waits: [], calls }))),
        Effect.flip
      )
      expect(error.step).toBe("read archive")
      expect(error.message).toContain("is xz-compressed, which the Kaniko builders cannot build")
      expect(yield* Ref.get(calls)).toEqual([])
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("an archive too large for KANIKO_MAX_MEMORY fails in \"pod resources\" before any pod or context", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      const { archive, dir } = yield* makeArchive
      const contexts = path.join(dir, "contexts")
      const calls = yield* Ref.make<ReadonlyArray<string>>([])
      const error = yield* build(archive).pipe(
        Effect.provide(builderWith(kanikoFsLayer, fakePods({ waits: [], calls }), {
          KANIKO_BUILD_CTX_DIR: contexts,
          KANIKO_MAX_MEMORY: "256Mi"
        })),
        Effect.flip
      )
      expect(error.step).toBe("pod resources")
      expect(error.message).toContain("needs 4.5 x that + 256 MiB = 266 MiB of memory")
      expect(error.message).toContain("more than KANIKO_MAX_MEMORY (256 MiB)")
      expect(yield* Ref.get(calls)).toEqual([])
      expect(yield* fs.readDirectory(contexts)).toEqual([])
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("the build may take KANIKO_TIMEOUT's share plus 10 s per started 100 MiB (TestClock)", () =>
    Effect.gen(function*() {
      const { archive } = yield* makeArchive
      const { calls, fiber } = yield* stuckBuild(kanikoFsLayer, archive)
      yield* advance(69)
      expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
      yield* advance(2)
      const error = yield* Fiber.join(fiber)
      expect(error.message).toMatch(/did not finish within 1m 10s/)
      expect(yield* Ref.get(calls)).toEqual(["create kaniko-fs", "delete kube-system/checkpointer-kaniko-abcde"])
    }).pipe(Effect.provide(NodeContext.layer)))
})
