import { ImageBuilder } from "@checkpointer/core"
import { NativeImageBuilder } from "@checkpointer/strategies"
import type { CommandExecutor } from "@effect/platform"
import type { FileSystem } from "@effect/platform"
import { Console, Context, Duration, Effect, Layer, Option } from "effect"
import type { LocalCluster } from "../test/harness/Cluster.ts"
import { addPullSecret, waitForPodRunning } from "../test/harness/Cluster.ts"
import { pollUntil } from "../test/harness/Process.ts"
import type { BenchRegistry } from "./BenchRegistry.ts"
import { heapContainer, heapPodManifest, waitForHeap } from "./LinkWorkload.ts"
import type { HeapArchive } from "./LinkWorkload.ts"
import { libraryBuild, rawUpload } from "./Pipelines.ts"
import { BenchError, cpuDuring, failedTo, seconds, selfCpu } from "./Tools.ts"

/** CHECKPOINT_LAYER_COMPRESSION's values at their default level (1), and zstd at level 3 (zstd's library default). */
export type Compression = "none" | "gzip" | "zstd" | "zstd-3"
export const compressions: ReadonlyArray<Compression> = ["none", "gzip", "zstd", "zstd-3"]
/** `encrypted`: no compression, the layer encrypted for two recipients (CHECKPOINT_ENCRYPTION_KEYS). */
export type LinkPipeline = "raw" | Compression | "encrypted"
export type BuilderKind = Compression | "encrypted"

/** One measured run of one pipeline over one link. */
export interface LinkSample {
  readonly pipeline: LinkPipeline
  readonly round: number
  readonly seconds: number
  readonly pushedBytes: number
  /** CPU seconds of this process (library builds) or of curl (raw), and of the registry, during the run. */
  readonly cpu: number
  readonly registryCpu: number
}

export type Builders = Readonly<Record<BuilderKind, Context.Tag.Service<ImageBuilder>>>

/**
 * Scoped: the library's native builder for `registry` (`NativeImageBuilder.layerWith`), once per compression, and
 * once uncompressed encrypting for the recipients `encryptionKeys`.
 */
export const makeBuilders = Effect.fn("LinkRuns.makeBuilders")(function*(
  registry: BenchRegistry,
  encryptionKeys: ReadonlyArray<string>
) {
  const access = { authFile: Option.some(registry.authFile), caFile: Option.some(registry.caFile), insecure: false }
  const variants: ReadonlyArray<readonly [BuilderKind, NativeImageBuilder.NativeImageBuilderOptions]> = [
    ...compressions.map((kind) =>
      [
        kind,
        kind === "zstd-3"
          ? { ...access, compression: "zstd" as const, compressionLevel: 3 }
          : { ...access, compression: kind }
      ] as const
    ),
    ["encrypted", { ...access, compression: "none", encryptionKeys }]
  ]
  const entries = yield* Effect.forEach(
    variants,
    ([kind, options]) =>
      Layer.build(NativeImageBuilder.layerWith(options)).pipe(
        Effect.map((context) => [kind, Context.get(context, ImageBuilder)] as const)
      )
  )
  return Object.fromEntries(entries) as Record<BuilderKind, Context.Tag.Service<ImageBuilder>>
}, Effect.mapError(failedTo("make the native builders")))

const pushedBytesOf = (registry: BenchRegistry, repository: string, tag: string) =>
  registry.manifest(repository, tag).pipe(
    Effect.map((manifest) => manifest.json.layers.reduce((sum, layer) => sum + layer.size, 0)),
    Effect.mapError(failedTo(`check ${repository}:${tag}`))
  )

const heapRef = { pod: "link-heap", container: heapContainer }

/** One run against the emptied registry: the raw curl upload of the archive, or a library build with a compression. */
export const runPipeline = (
  registry: BenchRegistry,
  builders: Builders,
  archive: HeapArchive,
  pipeline: LinkPipeline,
  round: number
): Effect.Effect<LinkSample, BenchError, CommandExecutor.CommandExecutor | FileSystem.FileSystem> =>
  Effect.gen(function*() {
    yield* registry.empty
    const cpuNow = Effect.map(selfCpu, (cpu) => pipeline === "raw" ? cpu.children : cpu.own)
    const tag = `r${round}-${pipeline}-${Date.now()}`
    const [[time, pushedBytes], cpu] = yield* seconds(
      pipeline === "raw"
        ? Effect.as(rawUpload(registry, archive, "bench/raw"), archive.bytes)
        : libraryBuild(builders[pipeline], registry, archive, heapRef, tag, `bench/${pipeline}`).pipe(
          Effect.zipRight(pushedBytesOf(registry, `bench/${pipeline}`, tag))
        )
    ).pipe(cpuDuring(cpuNow, registry.cpu))
    return {
      pipeline,
      round,
      seconds: time,
      pushedBytes,
      cpu: cpu.client,
      registryCpu: cpu.registry
    } satisfies LinkSample
  })

/**
 * Warm-ups, then `runs` rounds over one link; each round runs every pipeline once, starting with a different one, so
 * that load from elsewhere on the machine falls on all alike. A failed run is retried once.
 */
export const measureLink = Effect.fn("LinkRuns.measureLink")(function*(
  label: string,
  registry: BenchRegistry,
  builders: Builders,
  archive: HeapArchive,
  settings: { readonly runs: number; readonly warmups: number }
) {
  const pipelines: ReadonlyArray<LinkPipeline> = ["raw", ...compressions, "encrypted"]
  const once = (pipeline: LinkPipeline, round: number, what: string) =>
    runPipeline(registry, builders, archive, pipeline, round).pipe(
      Effect.tapError((error) =>
        Console.log(`[link] ${label} ${what} ${pipeline} failed, once more: ${error.message}`)
      ),
      Effect.retry({ times: 1 }),
      Effect.tap((sample) =>
        Console.log(
          `[link] ${label} ${what} ${pipeline}: ${sample.seconds.toFixed(3)} s, ${sample.pushedBytes} bytes, ` +
            `CPU ${sample.cpu.toFixed(2)} · registry ${sample.registryCpu.toFixed(2)}`
        )
      )
    )
  for (let warmup = 1; warmup <= settings.warmups; warmup++) {
    for (const pipeline of pipelines) yield* once(pipeline, 0, `warm-up ${warmup}`)
  }
  const samples: Array<LinkSample> = []
  for (let round = 1; round <= settings.runs; round++) {
    const shift = (round - 1) % pipelines.length
    for (const pipeline of [...pipelines.slice(shift), ...pipelines.slice(0, shift)]) {
      samples.push(yield* once(pipeline, round, `run ${round}/${settings.runs}`))
    }
  }
  return samples
})

export type StartKind = "restore none" | "restore zstd" | "cold start"

export interface StartSample {
  readonly kind: StartKind
  readonly round: number
  /** Pod created until the pod and its container run (CRI-O: pull + CRIU restore; cold: create + start). */
  readonly runningSeconds: number
  /** Cold start only: until the process has built its heap again (/records written). */
  readonly readySeconds?: number
  /** What CRI-O says of the container (must be true for a restore). */
  readonly restored: boolean | undefined
}

/** Deletes the pod (and waits until it is gone), then the image from the runtime's storage, when the scope closes. */
const cleanedUp = (cluster: LocalCluster, name: string, image: string | undefined) =>
  Effect.addFinalizer(() =>
    Effect.ignore(
      cluster.apiServer.deletePod("default", name, 0).pipe(
        Effect.zipRight(pollUntil(cluster.apiServer.findPod("default", name), Option.isNone, {
          timeout: Duration.seconds(60),
          onTimeout: () => new BenchError({ message: `pod ${name} was not removed` })
        })),
        Effect.zipRight(image === undefined ? Effect.void : Effect.ignore(cluster.runtime.crictl(["rmi", image])))
      )
    )
  )

/**
 * One start on the real runtime, timed from "restore requested" (the pod is created) to "process running" (pod and
 * container running as CRI-O reports them). A restore pulls `image` from `registry` first (it was removed from the
 * runtime's storage after the previous start); a cold start runs the workload's own image (cached) and is also timed
 * until its heap is rebuilt.
 */
export const startOnce = (
  cluster: LocalCluster,
  registry: BenchRegistry,
  kind: StartKind,
  image: string | undefined,
  round: number,
  mib: number
) =>
  Effect.scoped(Effect.gen(function*() {
    const name = `link-${process.pid}-${kind.replace(/ /g, "-")}-${round}`
    const nodeName = cluster.nodes[0]!.nodeName
    const pullSecret = yield* addPullSecret({ cluster, registry }, "default")
    const manifest = image === undefined
      ? heapPodManifest({ name, image: cluster.workloads.counterImage, nodeName, mib })
      : heapPodManifest({ name, image, nodeName, mib, restoreFrom: { pullSecret } })
    yield* cleanedUp(cluster, name, image)
    const started = performance.now()
    yield* cluster.apiServer.createPod("default", manifest)
    yield* waitForPodRunning(cluster, "default", name, Duration.minutes(10))
    const runningSeconds = (performance.now() - started) / 1000
    const readySeconds = image === undefined
      ? yield* Effect.map(waitForHeap(cluster, name, Duration.minutes(20)), () => (performance.now() - started) / 1000)
      : undefined
    const restored = yield* cluster.agent.restored("default", name, heapContainer)
    if (image !== undefined && restored !== true) {
      return yield* new BenchError({ message: `${name}: the runtime did not restore ${image} (restored: ${restored})` })
    }
    const sample: StartSample = {
      kind,
      round,
      runningSeconds,
      ...(readySeconds === undefined ? {} : { readySeconds }),
      restored
    }
    yield* Console.log(
      `[link] ${kind} ${round}: running after ${runningSeconds.toFixed(2)} s` +
        (readySeconds === undefined ? "" : `, heap rebuilt after ${readySeconds.toFixed(2)} s`)
    )
    return sample
  })).pipe(Effect.mapError(failedTo(`${kind} (round ${round})`)))

/** Pushes `archive` with `builder` as `bench/restore:<tag>` and answers the image's name. */
export const libraryImage = (
  builder: Context.Tag.Service<ImageBuilder>,
  registry: BenchRegistry,
  archive: HeapArchive,
  tag: string
) =>
  Effect.as(
    libraryBuild(builder, registry, archive, heapRef, tag, "bench/restore"),
    `${registry.host}/bench/restore:${tag}`
  )
