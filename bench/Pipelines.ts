import type { ImageBuilder } from "@checkpointer/core"
import { ContainerRef } from "@checkpointer/core"
import { ArchiveInspector, ArchiveReader, NativeImageBuilder } from "@checkpointer/strategies"
import { FileSystem } from "@effect/platform"
import type { CommandExecutor } from "@effect/platform"
import type { Context } from "effect"
import { Effect, Schema, Stream } from "effect"
import { projectRoot } from "../test/harness/CheckpointerProcess.ts"
import type { CheckpointerProcess } from "../test/harness/CheckpointerProcess.ts"
import { checkpointRepository } from "../test/harness/LocalStack.ts"
import * as Podman from "../test/harness/Podman.ts"
import { postCheckpoint } from "../test/HttpCalls.ts"
import type { BenchRegistry } from "./BenchRegistry.ts"
import { checkpointTimings, parseLogs } from "./ServerLogs.ts"
import type { Sample } from "./Stats.ts"
import type { BenchError } from "./Tools.ts"
import { currentRss, exec, failedTo, peakRss, processCpu, resetPeakRss, seconds, selfCpu } from "./Tools.ts"
import type { Archive, MemoryContainer } from "./Workload.ts"

export type PipelineId =
  | "raw"
  | "rawHashed"
  | "pass"
  | "library"
  | "libraryEncrypted"
  | "push"
  | "http"
  | "buildah"
  | "podman"

/** One way of getting a checkpoint into the registry, run once per call with a fresh tag. */
export interface Pipeline {
  readonly id: PipelineId
  readonly title: string
  /** What the measured time covers. */
  readonly timed: string
  /** CPU seconds used so far by the processes that do this pipeline's work (this one, its children, the server). */
  readonly clientCpu: Effect.Effect<number>
  readonly run: (
    tag: string
  ) => Effect.Effect<Sample, BenchError, CommandExecutor.CommandExecutor | FileSystem.FileSystem>
}

export const pipelineTitles: Readonly<Record<PipelineId, string>> = {
  raw: "raw upload (curl)",
  rawHashed: "raw upload after sha256sum (two reads)",
  pass: "native builder's archive pass alone (no upload)",
  library: "native builder, library",
  libraryEncrypted: "native builder, library, encrypted (RSA + EC recipients)",
  push: "checkpointer-push (the native builder's CLI)",
  http: "native builder, HTTP API",
  buildah: "buildah recipe (Kubernetes docs)",
  podman: "podman checkpoint --create-image + push"
}

export const ownCpu = Effect.map(selfCpu, (cpu) => cpu.own)
const childrenCpu = Effect.map(selfCpu, (cpu) => cpu.children)

/** The image's layers as the registry serves its manifest: total size and media type(s). */
const pushedLayers = (registry: BenchRegistry, repository: string, tag: string) =>
  registry.manifest(repository, tag).pipe(
    Effect.map((manifest) => ({
      pushedBytes: manifest.json.layers.reduce((sum, layer) => sum + layer.size, 0),
      pushedMediaType: [...new Set(manifest.json.layers.map((layer) => layer.mediaType))].join(", ")
    })),
    Effect.mapError(failedTo(`check ${repository}:${tag} in the registry`))
  )

/**
 * The physical limit: the archive's bytes sent once with curl, digest known beforehand. POST opens the upload, one
 * PUT `?digest=` carries the whole file (monolithic upload). No config, no manifest. HTTP/1.1, as the registry client
 * speaks it: curl's HTTP/2 was slower here too (a 260 MiB upload: median 0.77 s against 0.70 s).
 */
export const rawUpload = Effect.fn("Pipelines.rawUpload")(function*(
  registry: BenchRegistry,
  file: Pick<Archive, "path" | "digest">,
  repository: string
) {
  const curl = (args: ReadonlyArray<string>) =>
    exec("curl", [
      "--silent",
      "--show-error",
      "--fail-with-body",
      "--http1.1",
      "--cacert",
      registry.caFile,
      "-u",
      `${registry.username}:${registry.password}`,
      ...args
    ])
  const opened = yield* curl([
    "-X",
    "POST",
    "--dump-header",
    "-",
    "--output",
    "/dev/null",
    `${registry.url}/v2/${repository}/blobs/uploads/`
  ])
  const location = /^location:\s*(\S+)\s*$/im.exec(opened.stdout)?.[1]
  if (location === undefined) return yield* Effect.fail(failedTo("raw upload")(`no Location in ${opened.stdout}`))
  const target = new URL(location, registry.url)
  target.searchParams.set("digest", file.digest)
  const put = yield* curl([
    "-H",
    "Expect:",
    "-H",
    "Content-Type: application/octet-stream",
    "--upload-file",
    file.path,
    "--output",
    "/dev/null",
    "--write-out",
    "%{http_code}",
    target.toString()
  ])
  if (put.stdout.trim() !== "201") return yield* Effect.fail(failedTo("raw upload")(`PUT answered ${put.stdout}`))
})

export const rawPipeline = (registry: BenchRegistry, archive: Archive): Pipeline => ({
  id: "raw",
  title: pipelineTitles.raw,
  clientCpu: childrenCpu,
  timed: "curl POST + PUT ?digest of the archive (the layer only)",
  run: () =>
    seconds(rawUpload(registry, archive, "bench/raw")).pipe(
      Effect.map(([time]) => ({ seconds: time, phases: {}, pushedBytes: archive.bytes }))
    )
})

/** What a monolithic upload costs when the digest is not known yet: sha256sum first, then the same curl upload. */
export const rawHashedPipeline = (registry: BenchRegistry, archive: Archive): Pipeline => ({
  id: "rawHashed",
  title: pipelineTitles.rawHashed,
  clientCpu: childrenCpu,
  timed: "sha256sum of the archive, then curl POST + PUT ?digest (the file read twice)",
  run: () =>
    seconds(Effect.gen(function*() {
      const sum = yield* exec("sha256sum", [archive.path])
      const digest = `sha256:${sum.stdout.trim().split(/\s+/)[0]}`
      yield* rawUpload(registry, { path: archive.path, digest }, "bench/raw")
    })).pipe(Effect.map(([time]) => ({ seconds: time, phases: {}, pushedBytes: archive.bytes })))
})

/**
 * The native builder's single pass over the archive without the network: read through its buffer ring, sha256, tar
 * inspection (ArchiveInspector.describeArchive), as the builder does while it uploads.
 */
export const archivePassPipeline = (archive: Archive): Pipeline => ({
  id: "pass",
  title: pipelineTitles.pass,
  clientCpu: ownCpu,
  timed: "read + sha256 + tar inspection in this process (ArchiveInspector.describeArchive of readArchive), no upload",
  run: () =>
    Effect.flatMap(FileSystem.FileSystem, (fs) =>
      seconds(
        ArchiveInspector.describeArchive(
          ArchiveReader.readArchive(archive.path, NativeImageBuilder.archiveReading).pipe(
            Stream.provideService(FileSystem.FileSystem, fs)
          )
        )
      )).pipe(
        Effect.flatMap(([time, description]) =>
          description.digest === archive.digest
            ? Effect.succeed({ seconds: time, phases: {} })
            : Effect.fail(failedTo("archive pass")(`digest ${description.digest}, sha256sum said ${archive.digest}`))
        ),
        Effect.mapError(failedTo("archive pass"))
      )
})

const benchRef = (pod: string, container: string) =>
  Schema.decodeUnknownSync(ContainerRef)({ namespace: "default", pod, container })

/** One build through the library: `NativeImageBuilder.layerWith(...)`'s ImageBuilder, in this process. */
export const libraryBuild = (
  builder: Context.Tag.Service<ImageBuilder>,
  registry: BenchRegistry,
  archive: Pick<Archive, "path">,
  container: Pick<MemoryContainer, "pod" | "container">,
  tag: string,
  repository = "bench/library"
) =>
  builder.build({
    archive: archive.path,
    container: benchRef(container.pod, container.container),
    imageName: `${registry.host}/${repository}:${tag}`
  }).pipe(Effect.mapError(failedTo(`native build (${repository})`)))

const libraryRepositories = { library: "bench/library", libraryEncrypted: "bench/library-encrypted" } as const

/** Library builds with `builder`: the plain native builder (`library`) or one that encrypts (`libraryEncrypted`). */
export const libraryPipeline = (
  builder: Context.Tag.Service<ImageBuilder>,
  registry: BenchRegistry,
  archive: Archive,
  container: MemoryContainer,
  id: keyof typeof libraryRepositories = "library"
): Pipeline => ({
  id,
  title: pipelineTitles[id],
  clientCpu: ownCpu,
  timed: id === "library"
    ? "ImageBuilder.build in this process: read + hash + push layer, config, manifest"
    : "the same, the layer encrypted while it streams (AES-256-CTR, HMAC, JWE for 2 recipients)",
  run: (tag) =>
    Effect.gen(function*() {
      const repository = libraryRepositories[id]
      yield* resetPeakRss("self")
      const startRss = yield* currentRss("self")
      const [time] = yield* seconds(libraryBuild(builder, registry, archive, container, tag, repository))
      const peak = yield* peakRss("self")
      return { seconds: time, phases: {}, peakRss: peak, startRss, ...yield* pushedLayers(registry, repository, tag) }
    })
})

/** The checkpointer-push executable that scripts/build.mjs bundles (`pnpm bench` builds it first). */
export const pushCommand = `${projectRoot}/packages/strategies/dist/bin/checkpointer-push`

/** The archive pushed by the checkpointer-push process, started fresh each run (Node's startup included). */
export const pushPipeline = (registry: BenchRegistry, archive: Archive): Pipeline => ({
  id: "push",
  title: pipelineTitles.push,
  clientCpu: childrenCpu,
  timed: "checkpointer-push ARCHIVE IMAGE: process start, archive check, read + hash + push layer, config, manifest",
  run: (tag) =>
    Effect.gen(function*() {
      const [time] = yield* seconds(exec(process.execPath, [
        pushCommand,
        archive.path,
        `${registry.host}/bench/push:${tag}`,
        "--auth-file",
        registry.authFile,
        "--ca-file",
        registry.caFile
      ]))
      return { seconds: time, phases: {}, ...yield* pushedLayers(registry, "bench/push", tag) }
    })
})

/**
 * A sync checkpoint through the real server: `POST /checkpoint/default/POD/main`. The kubelet phase is a fresh CRIU
 * checkpoint of the same container; build/push comes from the server's log span; `other` is the rest of the request.
 */
export const httpCheckpoint = Effect.fn("Pipelines.httpCheckpoint")(function*(
  server: CheckpointerProcess,
  pod: string,
  container: string
) {
  const sentAt = Date.now()
  const [time, answer] = yield* seconds(postCheckpoint(server.url, `default/${pod}/${container}`))
  if (answer.status !== 201) {
    return yield* Effect.fail(failedTo("checkpoint through the HTTP API")(`${answer.status} ${answer.text}`))
  }
  const imageName = (JSON.parse(answer.text) as { containerImageName: string }).containerImageName
  const tag = imageName.slice(imageName.lastIndexOf(":") + 1)
  const timings = checkpointTimings(parseLogs(server.logs()), tag, sentAt)
  if (timings === undefined) {
    return yield* Effect.fail(failedTo("read the server's phase timings")(`no log lines for ${tag}`))
  }
  const kubelet = Math.max(0, (timings.archiveWrittenAt - sentAt) / 1000)
  const buildPush = timings.buildPushMillis / 1000
  return {
    tag,
    sample: {
      seconds: time,
      phases: { kubelet, "build/push": buildPush, other: Math.max(0, time - kubelet - buildPush) },
      peakRss: server.peakRss(),
      pushedBytes: timings.bytes
    } satisfies Sample
  }
})

export const httpPipeline = (
  registry: BenchRegistry,
  server: CheckpointerProcess,
  container: MemoryContainer
): Pipeline => ({
  id: "http",
  title: pipelineTitles.http,
  clientCpu: processCpu(server.pid),
  timed: "POST /checkpoint round trip (kubelet CRIU checkpoint + build/push + HTTP); build/push from the server log",
  run: () =>
    Effect.gen(function*() {
      const { sample, tag } = yield* httpCheckpoint(server, container.pod, container.container)
      return { ...sample, ...yield* pushedLayers(registry, checkpointRepository, tag) }
    })
})

const buildah = (args: ReadonlyArray<string>) => exec("buildah", args)

/**
 * The recipe of the Kubernetes blog post on forensic container checkpointing: a working container from scratch, the
 * archive added (buildah extracts it into the rootfs), the CRI-O annotation, commit, rm, push (buildah's defaults,
 * i.e. the layer gzip-compressed on push).
 */
export const buildahPipeline = (registry: BenchRegistry, archive: Archive, container: MemoryContainer): Pipeline => ({
  id: "buildah",
  title: pipelineTitles.buildah,
  clientCpu: childrenCpu,
  timed: "buildah from scratch, add, config --annotation, commit, rm, push",
  run: (tag) =>
    Effect.scoped(Effect.gen(function*() {
      const working = `bench-${process.pid}-buildah-${tag}`
      const local = `localhost/bench-${process.pid}-buildah:${tag}`
      const [time, phases] = yield* seconds(Effect.gen(function*() {
        const [from] = yield* seconds(Effect.acquireRelease(
          buildah(["from", "--name", working, "scratch"]),
          () => Effect.ignore(buildah(["rm", working]))
        ))
        const [add] = yield* seconds(buildah(["add", working, archive.path, "/"]))
        const [config] = yield* seconds(buildah([
          "config",
          `--annotation=io.kubernetes.cri-o.annotations.checkpoint.name=${container.container}`,
          working
        ]))
        const [commit] = yield* seconds(Effect.acquireRelease(
          buildah(["commit", working, local]),
          () => Effect.ignore(buildah(["rmi", local]))
        ))
        const [rm] = yield* seconds(buildah(["rm", working]))
        const [push] = yield* seconds(buildah(pushArguments(registry, local, `bench/buildah:${tag}`)))
        return { "from+add+config": from + add + config, commit, rm, push }
      }))
      return { seconds: time, phases, ...yield* pushedLayers(registry, "bench/buildah", tag) }
    }))
})

/** `push` arguments shared by buildah and podman: the bench registry's credentials and CA, to `repositoryAndTag`. */
const pushArguments = (registry: BenchRegistry, local: string, repositoryAndTag: string) => [
  "push",
  "--authfile",
  registry.authFile,
  "--cert-dir",
  registry.certDir,
  local,
  `docker://${registry.host}/${repositoryAndTag}`
]

/** Podman's own checkpoint image (CRIU dump included, container left running) and `podman push` (gzip by default). */
export const podmanPipeline = (registry: BenchRegistry, container: string): Pipeline => ({
  id: "podman",
  title: pipelineTitles.podman,
  clientCpu: childrenCpu,
  timed: "podman container checkpoint --leave-running --create-image (CRIU dump included) + podman push",
  run: (tag) =>
    Effect.scoped(Effect.gen(function*() {
      const local = `localhost/bench-${process.pid}-podman:${tag}`
      const [time, phases] = yield* seconds(
        Effect.gen(function*() {
          const [checkpoint] = yield* seconds(Effect.acquireRelease(
            Podman.podman(["container", "checkpoint", "--leave-running", "--create-image", local, container]),
            () => Effect.ignore(Podman.podman(["rmi", "--ignore", local]))
          ))
          const [push] = yield* seconds(Podman.podman(pushArguments(registry, local, `bench/podman:${tag}`)))
          return { "checkpoint --create-image": checkpoint, push }
        }).pipe(Effect.mapError(failedTo("podman checkpoint image")))
      )
      return { seconds: time, phases, ...yield* pushedLayers(registry, "bench/podman", tag) }
    }))
})
