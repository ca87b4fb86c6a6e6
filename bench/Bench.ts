import { ImageBuilder } from "@checkpointer/core"
import { NativeImageBuilder } from "@checkpointer/strategies"
import { FileSystem, Path } from "@effect/platform"
import type { CommandExecutor } from "@effect/platform"
import { Console, Context, Effect, Layer, Option, Ref } from "effect"
import type { Scope } from "effect"
import { createHash, randomBytes } from "node:crypto"
import type { Profiler } from "node:inspector"
import type { CheckpointerProcess } from "../test/harness/CheckpointerProcess.ts"
import { freePort, projectRoot, serverCommand, startCheckpointer } from "../test/harness/CheckpointerProcess.ts"
import type { LocalCluster } from "../test/harness/Cluster.ts"
import { startLocalCluster } from "../test/harness/Cluster.ts"
import type { KubeletNode } from "../test/harness/KubeletNode.ts"
import { checkpointerEnv } from "../test/harness/LocalStack.ts"
import type { BenchRegistry } from "./BenchRegistry.ts"
import { startBenchRegistry } from "./BenchRegistry.ts"
import { loadAverage } from "./Machine.ts"
import type { Pipeline, PipelineId } from "./Pipelines.ts"
import {
  archivePassPipeline,
  buildahPipeline,
  httpCheckpoint,
  httpPipeline,
  libraryBuild,
  libraryPipeline,
  podmanPipeline,
  pushPipeline,
  rawHashedPipeline,
  rawPipeline
} from "./Pipelines.ts"
import type { CpuBreakdown, Window } from "./Profile.ts"
import { breakdown, monotonicMicros, profiled } from "./Profile.ts"
import { writeRecipients } from "./Recipients.ts"
import type { BenchSettings } from "./Settings.ts"
import type { Sample } from "./Stats.ts"
import { formatSeconds } from "./Stats.ts"
import type { BenchError } from "./Tools.ts"
import { cpuDuring, currentRss, failedTo } from "./Tools.ts"
import type { Archive, MemoryContainer } from "./Workload.ts"
import { containerInPod, makeArchive, runMemoryContainer, runPodmanContainer } from "./Workload.ts"

/** Everything the runs share: one registry, one simulated cluster with one CRIU node, the library builder. */
export interface BenchEnv {
  readonly settings: BenchSettings
  readonly dir: string
  readonly registry: BenchRegistry
  readonly cluster: LocalCluster
  readonly node: KubeletNode
  readonly builder: Context.Tag.Service<ImageBuilder>
  /** The library builder with CHECKPOINT_ENCRYPTION_KEYS-style recipients: one RSA 4096 and one EC P-256 key. */
  readonly encryptingBuilder: Context.Tag.Service<ImageBuilder>
  /** Scoped: a fresh Checkpointer server process (the command `pnpm start` runs) for this node and registry. */
  readonly startServer: (
    name: string,
    extra?: Readonly<Record<string, string>>
  ) => Effect.Effect<CheckpointerProcess, BenchError, Scope.Scope>
  /** One-minute load averages seen before each run. */
  readonly loads: Ref.Ref<ReadonlyArray<number>>
  /** sha256 of dist/server/main.mjs at each server start (more than one: it was rebuilt during the run). */
  readonly bundles: Ref.Ref<ReadonlyArray<string>>
}

export const nodeName = "bench-node"

/** Scoped: the registry, the simulated API server, the kubelet endpoint of the CRIU node, the library's builder. */
export const makeEnv = Effect.fn("Bench.makeEnv")(function*(settings: BenchSettings, dir: string) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const registry = yield* startBenchRegistry(path.join(dir, "registry"))
  const cluster = yield* startLocalCluster({ dir: path.join(dir, "cluster"), nodes: [nodeName] }).pipe(
    Effect.mapError(failedTo("start the simulated cluster"))
  )
  const node = cluster.node(nodeName)
  const builderSettings = {
    authFile: Option.some(registry.authFile),
    caFile: Option.some(registry.caFile),
    insecure: false
  }
  const builderContext = yield* Layer.build(NativeImageBuilder.layerWith(builderSettings)).pipe(
    Effect.mapError(failedTo("make the native builder"))
  )
  const encryptionKeys = yield* writeRecipients(dir)
  const encryptingBuilder = NativeImageBuilder.layerWith({ ...builderSettings, encryptionKeys })
  const encryptingContext = yield* Layer.build(encryptingBuilder).pipe(
    Effect.mapError(failedTo("make the encrypting native builder"))
  )
  const bundles = yield* Ref.make<ReadonlyArray<string>>([])
  const startServer = (name: string, extra?: Readonly<Record<string, string>>) =>
    Effect.gen(function*() {
      const bundle = yield* fs.readFile(path.join(projectRoot, serverCommand.argv[serverCommand.argv.length - 1]!))
      const digest = createHash("sha256").update(bundle).digest("hex").slice(0, 16)
      yield* Ref.update(bundles, (seen) => seen.includes(digest) ? seen : [...seen, digest])
      const port = yield* freePort(node.address)
      const env = checkpointerEnv({
        registry,
        cluster,
        node,
        port,
        storage: path.join(dir, `server-${name}`),
        // UTC: the log's time of day is read against this process's clock (ServerLogs.ts).
        extra: { TZ: "UTC", ...extra }
      })
      return yield* startCheckpointer({ env, address: node.address, port })
    }).pipe(Effect.mapError(failedTo(`start the Checkpointer server (${name})`)))
  return {
    settings,
    dir,
    registry,
    cluster,
    node,
    builder: Context.get(builderContext, ImageBuilder),
    encryptingBuilder: Context.get(encryptingContext, ImageBuilder),
    startServer,
    loads: yield* Ref.make<ReadonlyArray<number>>([]),
    bundles
  } satisfies BenchEnv
})

export const randomTag = () => randomBytes(8).toString("hex")

const describeSample = (sample: Sample) => {
  const phases = Object.entries(sample.phases).map(([name, value]) => `${name} ${formatSeconds(value)}`)
  const cpu = sample.cpu === undefined
    ? ""
    : `, CPU ${sample.cpu.client.toFixed(2)} · registry ${sample.cpu.registry.toFixed(2)}`
  return `${formatSeconds(sample.seconds)} s${phases.length === 0 ? "" : ` (${phases.join(", ")})`}${cpu}`
}

/** One run of one pipeline against an emptied registry. */
export const runOnce = (env: BenchEnv, label: string, pipeline: Pipeline, what: string) =>
  Effect.gen(function*() {
    const load = yield* loadAverage
    yield* Ref.update(env.loads, (loads) => [...loads, load])
    // One retry: a run that fails (another job on the machine got in the way) is logged and not counted.
    const sample = yield* env.registry.empty.pipe(
      Effect.zipRight(
        pipeline.run(randomTag()).pipe(
          cpuDuring(pipeline.clientCpu, env.registry.cpu),
          Effect.map(([sample, cpu]) => ({ ...sample, cpu })),
          env.cluster.agent.whileQuiet
        )
      ),
      Effect.tapError((error) =>
        Console.log(`[bench] ${label} ${what} ${pipeline.id} failed, once more: ${error.message}`)
      ),
      Effect.retry({ times: 1 })
    )
    yield* Console.log(`[bench] ${label} ${what} ${pipeline.id}: ${describeSample(sample)}`)
    return sample
  })

/**
 * Warm-ups, then the measured runs. Runs are interleaved (each round runs every pipeline once, starting with a
 * different one each round) so that load from elsewhere on the machine falls on all pipelines alike.
 */
export const measure = Effect.fn("Bench.measure")(function*(
  env: BenchEnv,
  label: string,
  pipelines: ReadonlyArray<Pipeline>
) {
  for (let warmup = 1; warmup <= env.settings.warmups; warmup++) {
    for (const pipeline of pipelines) yield* runOnce(env, label, pipeline, `warm-up ${warmup}`)
  }
  const samples = new Map<PipelineId, Array<Sample>>(pipelines.map((pipeline) => [pipeline.id, []]))
  for (let round = 0; round < env.settings.runs; round++) {
    const order = [...pipelines.slice(round % pipelines.length), ...pipelines.slice(0, round % pipelines.length)]
    for (const pipeline of order) {
      const sample = yield* runOnce(env, label, pipeline, `run ${round + 1}/${env.settings.runs}`)
      samples.get(pipeline.id)!.push(sample)
    }
  }
  return samples as ReadonlyMap<PipelineId, ReadonlyArray<Sample>>
})

export interface SizeResult {
  readonly mib: number
  readonly archive: Omit<Archive, "path">
  readonly pipelines: ReadonlyArray<Pick<Pipeline, "id" | "title" | "timed">>
  readonly samples: ReadonlyMap<PipelineId, ReadonlyArray<Sample>>
  /** RSS of the fresh server process before its first request, and its VmHWM after all runs of this size. */
  readonly serverIdleRss: number
  readonly serverPeakRss: number
  /** RSS of this process before the library runs (the library's peak includes it). */
  readonly benchBaselineRss: number
  /** CPU profiles of extra, unmeasured runs (BENCH_PROFILE, largest size only). */
  readonly profile?: ProfileResult
}

export interface ProfileResult {
  readonly runs: number
  /** This process during library builds (whole builds). */
  readonly library: CpuBreakdown
  /** A server started with `node --cpu-prof`, during the build/push phases of its checkpoints. */
  readonly server: CpuBreakdown
}

/**
 * Extra runs after the measured ones, under CPU profilers, so that the measured runs are not slowed by sampling:
 * library builds under this process's inspector, and checkpoints through a second server started with --cpu-prof
 * (its profile is written when it stops), whose samples are kept only within the build/push phases.
 */
const profileRuns = Effect.fn("Bench.profileRuns")(function*(
  env: BenchEnv,
  archive: Archive,
  container: MemoryContainer
) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const runs = Math.max(3, env.settings.runs)
  const library: Array<{ readonly profile: Profiler.Profile; readonly window: Window }> = []
  for (let run = 1; run <= runs; run++) {
    yield* env.registry.empty
    const { profile, window } = yield* profiled(
      libraryBuild(env.builder, env.registry, archive, container, randomTag())
    ).pipe(env.cluster.agent.whileQuiet)
    library.push({ profile, window })
    const seconds = formatSeconds((window.to - window.from) / 1e6)
    yield* Console.log(`[bench] profile: library build ${run}/${runs} (${seconds} s)`)
  }
  const profileDir = path.join(env.dir, "server-cpu-profile")
  const windows = yield* Effect.scoped(Effect.gen(function*() {
    const server = yield* env.startServer("profile", {
      NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${profileDir}`
    })
    const windows: Array<Window> = []
    for (let run = 0; run <= runs; run++) {
      yield* env.registry.empty
      const sent = yield* monotonicMicros
      const { sample } = yield* env.cluster.agent.whileQuiet(
        httpCheckpoint(server, container.pod, container.container)
      )
      const from = sent + sample.phases.kubelet! * 1e6
      if (run > 0) windows.push({ from, to: from + sample.phases["build/push"]! * 1e6 })
      yield* Console.log(`[bench] profile: server checkpoint ${run === 0 ? "warm-up" : `${run}/${runs}`}`)
    }
    return windows
  }))
  const files = (yield* fs.readDirectory(profileDir)).filter((name) => name.endsWith(".cpuprofile"))
  const serverProfiles = yield* Effect.forEach(
    files,
    (name) => Effect.map(fs.readFileString(path.join(profileDir, name)), (text) => JSON.parse(text) as Profiler.Profile)
  )
  if (serverProfiles.length === 0) {
    return yield* Effect.fail(failedTo("profile the server")(`no .cpuprofile in ${profileDir}`))
  }
  return {
    runs,
    library: breakdown(library.map((run) => run.profile), library.map((run) => run.window)),
    server: breakdown(serverProfiles, windows)
  } satisfies ProfileResult
}, Effect.mapError(failedTo("profile the native builder")))

/** All pipelines on one archive size: a container holding `mib` MiB, its archive, a fresh server process. */
export const benchSize = (
  env: BenchEnv,
  mib: number
): Effect.Effect<
  SizeResult,
  BenchError,
  CommandExecutor.CommandExecutor | FileSystem.FileSystem | Path.Path
> =>
  Effect.scoped(Effect.gen(function*() {
    const path = yield* Path.Path
    const label = `${mib} MiB`
    const pod = `bench-${process.pid}-m${mib}`
    yield* Console.log(`[bench] ${label}: starting ${pod}-${containerInPod} and filling its memory`)
    const container = yield* runMemoryContainer(env.cluster, pod, mib)
    const podmanContainer = yield* runPodmanContainer(`${pod}-podman`, container.bytes)
    const archive = yield* makeArchive(env.cluster, container, path.join(env.dir, `archive-${mib}.tar`))
    yield* Console.log(
      `[bench] ${label}: archive ${archive.bytes} bytes (checkpoint ${formatSeconds(archive.checkpointSeconds)} s, ` +
        `sha256sum ${formatSeconds(archive.sha256Seconds)} s)`
    )
    const server = yield* env.startServer(`m${mib}`)
    const serverIdleRss = yield* currentRss(server.pid)
    const benchBaselineRss = yield* currentRss("self")
    const pipelines = [
      rawPipeline(env.registry, archive),
      rawHashedPipeline(env.registry, archive),
      archivePassPipeline(archive),
      libraryPipeline(env.builder, env.registry, archive, container),
      libraryPipeline(env.encryptingBuilder, env.registry, archive, container, "libraryEncrypted"),
      pushPipeline(env.registry, archive),
      httpPipeline(env.registry, server, container),
      buildahPipeline(env.registry, archive, container),
      podmanPipeline(env.registry, podmanContainer)
    ]
    const samples = yield* measure(env, label, pipelines)
    const serverPeakRss = server.peakRss()
    const largest = Math.max(...env.settings.sizes) === mib
    const profile = env.settings.profile && largest ? yield* profileRuns(env, archive, container) : undefined
    const { path: _path, ...facts } = archive
    return {
      mib,
      archive: facts,
      pipelines: pipelines.map(({ id, timed, title }) => ({ id, title, timed })),
      samples,
      serverIdleRss,
      serverPeakRss,
      benchBaselineRss,
      ...(profile === undefined ? {} : { profile })
    } satisfies SizeResult
  }))
