import { FileSystem, Path } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import {
  CheckpointerConfig,
  Cluster,
  ContainerName,
  describeConfigError,
  ContainerRef,
  ImageBuilder,
  Namespace,
  PodName,
  podRunningNotFaked
} from "@checkpointer/core"
import type { BuildRequest, CheckpointerSettings, KubernetesApiError } from "@checkpointer/core"
import { describe, expect, it } from "@effect/vitest"
import type { V1Pod } from "@kubernetes/client-node"
import { ConfigProvider, Deferred, Duration, Effect, Fiber, Layer, Option, Ref, Stream, TestClock } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { gunzipSync } from "node:zlib"
import { create, Parser } from "tar"
import type { ReadEntry } from "tar"
import { readArchiveMetadata } from "../src/CheckpointArchive.ts"
import * as KanikoFsImageBuilder from "../src/KanikoFsImageBuilder.ts"
import * as KanikoImageBuilder from "../src/KanikoImageBuilder.ts"
import { describePodState, dockerfile, kanikoPod, reportedDigest } from "../src/KanikoPod.ts"

const container = ContainerRef.make({
  namespace: Namespace.make("team-a"),
  pod: PodName.make("notebook-0"),
  container: ContainerName.make("lab")
})

const digest = `sha256:${"ab".repeat(32)}`

const settings = {
  namespace: "kube-system",
  node: "worker-1",
  kanikoImage: "ghcr.io/osscontainertools/kaniko:v1.28.3",
  kanikoSecretName: "kaniko-secret",
  kanikoTimeoutSeconds: 30,
  kanikoBuildContextDir: "/tmp/build-contexts",
  baseImage: "registry.test/checkpoint-base:1.0.0"
} as CheckpointerSettings

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
        entry.on("end", () =>
          entries.push({ path: entry.path, sha256: hash.digest("hex"), text: Buffer.concat(chunks).toString("utf8") }))
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
      annotations
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
      annotations
    })
    expect(spec.spec?.nodeName).toBe("worker-1")
    const [kaniko] = spec.spec?.containers ?? []
    expect(kaniko?.stdin).toBeUndefined()
    expect(kaniko?.args).toContain("--context=dir:///workspace")
    expect(kaniko?.volumeMounts).toContainEqual({ name: "build-context", mountPath: "/workspace", readOnly: true })
    expect(spec.spec?.volumes).toContainEqual({
      name: "build-context",
      hostPath: { path: "/tmp/build-contexts/checkpoint-x", type: "Directory" }
    })
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
      const chunks = yield* Stream.runCollect(KanikoImageBuilder.buildContext(archive, text))
      const entries = yield* entriesOf(Buffer.concat([...chunks]))
      const archiveBytes = yield* fs.readFile(archive)
      expect(entries.map((entry) => entry.path)).toEqual(["Dockerfile", archive.slice(archive.lastIndexOf("/") + 1)])
      expect(entries[0]!.text).toBe(text)
      expect(entries[1]!.sha256).toBe(createHash("sha256").update(archiveBytes).digest("hex"))
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("a missing archive fails the build context stream", () =>
    Effect.gen(function*() {
      const error = yield* Stream.runDrain(KanikoImageBuilder.buildContext("/nonexistent/x.tar", "FROM x\n")).pipe(
        Effect.flip
      )
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

/** A scripted Cluster: the pod goes through `phases` when waited for; what was called is recorded. */
const fakeCluster = (options: {
  readonly waits: ReadonlyArray<Effect.Effect<V1Pod, KubernetesApiError>>
  readonly calls: Ref.Ref<ReadonlyArray<string>>
  readonly streamed?: Ref.Ref<number>
  readonly waiting?: Deferred.Deferred<void>
}) =>
  Effect.gen(function*() {
    const waits = yield* Ref.make(options.waits)
    const record = (call: string) => Ref.update(options.calls, (calls) => [...calls, call])
    return Cluster.make({
      ...podRunningNotFaked,
      getPod: () => Effect.succeed(Option.some(pod("Pending"))),
      deletePod: () => Effect.void,
      checkpointerPodsOn: () => Effect.succeed([]),
      createPod: (_namespace, spec) =>
        Effect.as(record(`create ${spec.metadata?.labels?.["checkpointer/builder"]}`), {
          ...spec,
          metadata: { ...spec.metadata, name: "checkpointer-kaniko-abcde" }
        }),
      requestPodDeletion: (namespace, name) => record(`delete ${namespace}/${name}`),
      waitForPod: () =>
        Effect.flatMap(Ref.modify(waits, ([next, ...rest]) => [next ?? Effect.never, rest]), (wait) => wait).pipe(
          Effect.zipLeft(options.waiting === undefined ? Effect.void : Deferred.succeed(options.waiting, undefined), {
            concurrent: true
          })
        ),
      podLogTail: () => Effect.succeed("INFO[0000] Retrieving image manifest\nerror building image: boom\n"),
      attachStdin: (_namespace, _name, _container, input) =>
        Stream.runForEach(input, (chunk) => Ref.update(options.streamed ?? Ref.unsafeMake(0), (n) => n + chunk.length))
          .pipe(Effect.zipRight(record("attach")))
    })
  })

const builderWith = (
  layer: typeof KanikoImageBuilder.layer,
  cluster: Effect.Effect<Cluster>
) =>
  Layer.provide(
    layer,
    Layer.mergeAll(
      Layer.effect(Cluster, cluster),
      Layer.succeed(CheckpointerConfig, CheckpointerConfig.make(settings))
    )
  ).pipe(Layer.orDie)

const build = (archive: string) => Effect.flatMap(ImageBuilder, (builder) => builder.build(request(archive)))

describe("Kaniko builders with a scripted cluster", () => {
  it.scoped("kaniko streams the context once the pod runs, answers the reported digest, deletes the pod", () =>
    Effect.gen(function*() {
      const { archive } = yield* makeArchive
      const calls = yield* Ref.make<ReadonlyArray<string>>([])
      const streamed = yield* Ref.make(0)
      const cluster = fakeCluster({
        waits: [Effect.succeed(pod("Running")), Effect.succeed(pod("Succeeded", { exitCode: 0, message: digest }))],
        calls,
        streamed
      })
      const image = yield* build(archive).pipe(Effect.provide(builderWith(KanikoImageBuilder.layer, cluster)))
      expect(image).toMatchObject({ name: "registry.test/checkpoints/app:0123456789abcdef", digest })
      expect(yield* Ref.get(calls)).toEqual(["create kaniko", "attach", "delete kube-system/checkpointer-kaniko-abcde"])
      expect(yield* Ref.get(streamed)).toBeGreaterThan(0)
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("a failed pod is a build failure with the container's last log lines, and the pod is deleted", () =>
    Effect.gen(function*() {
      const { archive } = yield* makeArchive
      const calls = yield* Ref.make<ReadonlyArray<string>>([])
      const cluster = fakeCluster({ waits: [Effect.succeed(pod("Failed", { exitCode: 1 }))], calls })
      const error = yield* build(archive).pipe(
        Effect.provide(builderWith(KanikoFsImageBuilder.layer, cluster)),
        Effect.flip
      )
      expect(error.phase).toBe("build")
      expect(error.message).toContain("failed: it is Failed (exit code 1: Error)")
      expect(error.message).toContain("error building image: boom")
      expect(yield* Ref.get(calls)).toEqual(["create kaniko-fs", "delete kube-system/checkpointer-kaniko-abcde"])
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("KANIKO_TIMEOUT without Running is a scheduling failure (TestClock), and the pod is deleted", () =>
    Effect.gen(function*() {
      const { archive } = yield* makeArchive
      const calls = yield* Ref.make<ReadonlyArray<string>>([])
      const waiting = yield* Deferred.make<void>()
      const cluster = fakeCluster({ waits: [], calls, waiting })
      const fiber = yield* build(archive).pipe(
        Effect.provide(builderWith(KanikoImageBuilder.layer, cluster)),
        Effect.flip,
        Effect.fork
      )
      yield* Deferred.await(waiting)
      yield* Effect.yieldNow().pipe(Effect.zipRight(TestClock.adjust(Duration.seconds(1))), Effect.repeatN(31))
      const error = yield* Fiber.join(fiber)
      expect(error.phase).toBe("scheduling")
      expect(error.message).toMatch(/was not running within 30s: it is Pending/)
      expect(yield* Ref.get(calls)).toEqual(["create kaniko", "delete kube-system/checkpointer-kaniko-abcde"])
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("an interrupted build deletes its pod and removes its build context directory", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      const { archive, dir } = yield* makeArchive
      const contexts = path.join(dir, "contexts")
      const calls = yield* Ref.make<ReadonlyArray<string>>([])
      const waiting = yield* Deferred.make<void>()
      const cluster = fakeCluster({ waits: [], calls, waiting })
      const layer = Layer.provide(
        KanikoFsImageBuilder.layer,
        Layer.mergeAll(
          Layer.effect(Cluster, cluster),
          Layer.succeed(CheckpointerConfig, CheckpointerConfig.make({ ...settings, kanikoBuildContextDir: contexts }))
        )
      )
      const fiber = yield* build(archive).pipe(Effect.provide(layer), Effect.fork)
      yield* Deferred.await(waiting)
      const [context] = yield* fs.readDirectory(contexts)
      expect((yield* fs.readDirectory(path.join(contexts, context!))).sort()).toEqual(
        ["Dockerfile", path.basename(archive)].sort()
      )
      yield* Fiber.interrupt(fiber)
      expect(yield* fs.readDirectory(contexts)).toEqual([])
      expect(yield* Ref.get(calls)).toEqual(["create kaniko-fs", "delete kube-system/checkpointer-kaniko-abcde"])
      expect(yield* fs.exists(archive)).toBe(true)
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped.each([["kaniko", KanikoImageBuilder.layer], ["kaniko-fs", KanikoFsImageBuilder.layer]] as const)(
    "%s refuses to start with CHECKPOINT_ENCRYPTION_KEYS or a layer compression, naming both",
    ([name, layer]) =>
      Effect.gen(function*() {
        const calls = yield* Ref.make<ReadonlyArray<string>>([])
        const configured = (entries: ReadonlyArray<readonly [string, string]>) =>
          Layer.build(Layer.provide(
            layer,
            Layer.mergeAll(
              Layer.effect(Cluster, fakeCluster({ waits: [], calls })),
              Layer.succeed(CheckpointerConfig, CheckpointerConfig.make(settings)),
              Layer.setConfigProvider(ConfigProvider.fromMap(new Map(entries)))
            )
          ))
        const error = yield* Effect.flip(configured([
          ["CHECKPOINT_ENCRYPTION_KEYS", "/etc/checkpointer/keys/ops.pem"],
          ["CHECKPOINT_LAYER_COMPRESSION", "zstd"]
        ]))
        expect(describeConfigError(error)).toEqual([
          `CHECKPOINT_ENCRYPTION_KEYS: the ${name} builder cannot encrypt images (Kaniko cannot); ` +
          "use CHECKPOINT_BUILDER=native, or unset it",
          `CHECKPOINT_LAYER_COMPRESSION: the ${name} builder cannot push the archive as a zstd layer (Kaniko makes ` +
          "its own gzip layer around it); use CHECKPOINT_BUILDER=native, or unset it"
        ])
        yield* configured([["CHECKPOINT_LAYER_COMPRESSION", "none"], ["CHECKPOINT_ENCRYPTION_KEYS", " "]])
        expect(yield* Ref.get(calls)).toEqual([])
      }).pipe(Effect.provide(NodeContext.layer))
  )
})
