import { FileSystem, Path } from "@effect/platform"
import { Console, Effect, Ref } from "effect"
import { startCounterPod } from "../test/harness/Cluster.ts"
import type { BenchEnv } from "./Bench.ts"
import { nodeName, randomTag } from "./Bench.ts"
import { registryAnswers } from "./BenchRegistry.ts"
import type { RegistryAnswers } from "./BenchRegistry.ts"
import { loadAverage } from "./Machine.ts"
import { httpCheckpoint, libraryBuild, ownCpu, rawUpload } from "./Pipelines.ts"
import type { Sample } from "./Stats.ts"
import { formatSeconds, MiB } from "./Stats.ts"
import { cpuDuring, currentRss, failedTo, peakRss, resetPeakRss, seconds } from "./Tools.ts"
import { checkpointInto, fileDigest, makeArchive, runMemoryContainer } from "./Workload.ts"

export interface CounterResult {
  readonly samples: ReadonlyArray<Sample>
  /** The same container's archive, checkpointed once, pushed by the library in this process: seconds per push. */
  readonly library: ReadonlyArray<number>
  /** CPU seconds of this process (all its threads) per library push, and the registry's CPU seconds per push. */
  readonly libraryCpu: { readonly own: ReadonlyArray<number>; readonly registry: number }
  /** That archive as a raw curl upload (POST, one PUT with the digest): seconds per upload. */
  readonly raw: ReadonlyArray<number>
  readonly registry: RegistryAnswers
}

/**
 * A sync checkpoint of the harness's counter container through the HTTP API, split into its phases; then its archive
 * through the library and as a raw upload, and the registry's own answering time: what the server adds to the fixed
 * cost per image, and what the registry leaves to gain.
 */
export const counterCheckpoints = Effect.fn("EndToEnd.counter")(function*(env: BenchEnv) {
  const path = yield* Path.Path
  const pod = `bench-${process.pid}-counter`
  yield* startCounterPod(env.cluster, { namespace: "default", name: pod, nodeName }).pipe(
    Effect.mapError(failedTo("start the counter pod"))
  )
  const server = yield* env.startServer("counter")
  const samples: Array<Sample> = []
  const total = env.settings.warmups + env.settings.runs
  for (let run = 1; run <= total; run++) {
    yield* env.registry.empty
    const { sample } = yield* env.cluster.agent.whileQuiet(httpCheckpoint(server, pod, "counter"))
    const what = run <= env.settings.warmups ? `warm-up ${run}` : `run ${run - env.settings.warmups}`
    yield* Console.log(
      `[bench] counter ${what}: ${formatSeconds(sample.seconds)} s ` +
        `(kubelet ${formatSeconds(sample.phases.kubelet!)}, build/push ${formatSeconds(sample.phases["build/push"]!)})`
    )
    if (run > env.settings.warmups) samples.push(sample)
  }
  const archive = path.join(env.dir, "counter.tar")
  yield* checkpointInto(env.cluster, pod, "counter", archive).pipe(Effect.mapError(failedTo("checkpoint the counter")))
  const { digest } = yield* fileDigest(archive)
  const library: Array<number> = []
  const libraryOwnCpu: Array<number> = []
  let registryCpu = 0
  const raw: Array<number> = []
  for (let run = 1; run <= total; run++) {
    yield* env.registry.empty
    const [[pushed], cpu] = yield* seconds(
      libraryBuild(env.builder, env.registry, { path: archive }, { pod, container: "counter" }, randomTag())
    ).pipe(cpuDuring(ownCpu, env.registry.cpu), env.cluster.agent.whileQuiet)
    yield* env.registry.empty
    const [uploaded] = yield* seconds(rawUpload(env.registry, { path: archive, digest }, "bench/raw")).pipe(
      env.cluster.agent.whileQuiet
    )
    const what = run <= env.settings.warmups ? `warm-up ${run}` : `run ${run - env.settings.warmups}`
    yield* Console.log(
      `[bench] counter's archive ${what}: library ${formatSeconds(pushed)} s, raw upload ${formatSeconds(uploaded)} s`
    )
    if (run > env.settings.warmups) {
      library.push(pushed)
      libraryOwnCpu.push(cpu.client)
      registryCpu += cpu.registry
      raw.push(uploaded)
    }
  }
  const registry = yield* registryAnswers(env.registry, "bench/answers")
  yield* Console.log(
    `[bench] registry answers (medians of ${registry.requests}): GET /v2/ unauthenticated ` +
      `${formatSeconds(registry.unauthenticated)} s, authenticated ${formatSeconds(registry.authenticated)} s, ` +
      `upload start ${formatSeconds(registry.uploadStart)} s`
  )
  const libraryCpu = { own: libraryOwnCpu, registry: registryCpu / Math.max(1, library.length) }
  return { samples, library, libraryCpu, raw, registry } satisfies CounterResult
}, Effect.scoped)

/** One round of N parallel pushes: its wall time and the bytes that reached the registry. */
export interface Round {
  readonly seconds: number
  readonly bytes: number
  /** Each of the N checkpoints' two phases, seconds: kubelet and build/push (HTTP), checkpoint and upload (by hand). */
  readonly kubelet: ReadonlyArray<number>
  readonly buildPush: ReadonlyArray<number>
  /** Peak RSS of the pushing process during the round (server for HTTP, this process for the library). */
  readonly peakRss?: number
  /** RSS of this process when a library round began (its peak was reset to it). */
  readonly startRss?: number
}

export interface ConcurrencyResult {
  readonly containers: number
  readonly mibEach: number
  readonly archiveBytes: number
  readonly http: ReadonlyArray<Round>
  readonly library: ReadonlyArray<Round>
  readonly raw: ReadonlyArray<Round>
  /** The HTTP round's work done by hand: N parallel CRI-O checkpoints, each then sha256sum'd and uploaded by curl. */
  readonly byHand: ReadonlyArray<Round>
  readonly serverIdleRss: number
  readonly serverPeakRss: number
}

/**
 * N containers holding M MiB each, checkpointed at the same time through the HTTP API (N sync POSTs in parallel),
 * against N parallel raw curl uploads and N parallel library builds of N archives of the same containers, and against
 * the same checkpoints done by hand (CRI-O checkpoint as the kubelet asks, sha256sum, curl upload), N in parallel.
 */
export const concurrentCheckpoints = Effect.fn("EndToEnd.concurrency")(function*(env: BenchEnv) {
  const path = yield* Path.Path
  const fs = yield* FileSystem.FileSystem
  const { concurrency, concurrentMiB } = env.settings
  const pods = Array.from({ length: concurrency }, (_, i) => `bench-${process.pid}-c${i}`)
  yield* Console.log(`[bench] concurrency: starting ${concurrency} containers holding ${concurrentMiB} MiB each`)
  const containers = yield* Effect.forEach(pods, (pod) => runMemoryContainer(env.cluster, pod, concurrentMiB), {
    concurrency: 2
  })
  const archives = yield* Effect.forEach(
    containers,
    (container, i) => makeArchive(env.cluster, container, path.join(env.dir, `concurrent-${i}.tar`))
  )
  const archiveBytes = archives.reduce((sum, archive) => sum + archive.bytes, 0)
  const server = yield* env.startServer("concurrency")
  const serverIdleRss = yield* currentRss(server.pid)

  const httpRound = Effect.gen(function*() {
    const [time, answers] = yield* seconds(Effect.forEach(
      containers,
      (container) => httpCheckpoint(server, container.pod, container.container),
      { concurrency: "unbounded" }
    ))
    return {
      seconds: time,
      bytes: answers.reduce((sum, answer) => sum + (answer.sample.pushedBytes ?? 0), 0),
      kubelet: answers.map((answer) => answer.sample.phases.kubelet!),
      buildPush: answers.map((answer) => answer.sample.phases["build/push"]!),
      peakRss: server.peakRss()
    } satisfies Round
  })
  const rawRound = Effect.map(
    seconds(Effect.forEach(archives, (archive) => rawUpload(env.registry, archive, "bench/raw"), {
      concurrency: "unbounded"
    })),
    ([time]) => ({ seconds: time, bytes: archiveBytes, kubelet: [], buildPush: [] }) satisfies Round
  )
  const byHandRound = Effect.gen(function*() {
    const [time, uploads] = yield* seconds(Effect.forEach(
      containers,
      (container, i) =>
        Effect.gen(function*() {
          const file = path.join(env.dir, `by-hand-${i}.tar`)
          const checkpointSeconds = yield* checkpointInto(env.cluster, container.pod, container.container, file)
          const { digest } = yield* fileDigest(file)
          const [uploadSeconds] = yield* seconds(rawUpload(env.registry, { path: file, digest }, "bench/by-hand"))
          return { checkpointSeconds, uploadSeconds, bytes: Number((yield* fs.stat(file)).size) }
        }).pipe(Effect.scoped),
      { concurrency: "unbounded" }
    ))
    return {
      seconds: time,
      bytes: uploads.reduce((sum, upload) => sum + upload.bytes, 0),
      kubelet: uploads.map((upload) => upload.checkpointSeconds),
      buildPush: uploads.map((upload) => upload.uploadSeconds)
    } satisfies Round
  })
  const libraryRound = Effect.gen(function*() {
    yield* resetPeakRss("self")
    const startRss = yield* currentRss("self")
    const [time, images] = yield* seconds(Effect.forEach(
      archives,
      (archive, i) => libraryBuild(env.builder, env.registry, archive, containers[i]!, randomTag()),
      { concurrency: "unbounded" }
    ))
    return {
      seconds: time,
      bytes: images.reduce((sum, image) => sum + image.size, 0),
      kubelet: [],
      buildPush: [],
      peakRss: yield* peakRss("self"),
      startRss
    } satisfies Round
  })

  const rounds = {
    http: [] as Array<Round>,
    raw: [] as Array<Round>,
    library: [] as Array<Round>,
    byHand: [] as Array<Round>
  }
  const quiet = env.cluster.agent.whileQuiet
  const kinds = [
    ["raw", quiet(rawRound)],
    ["library", quiet(libraryRound)],
    ["http", quiet(httpRound)],
    ["byHand", quiet(byHandRound)]
  ] as const
  const total = env.settings.warmups + env.settings.runs
  for (let run = 1; run <= total; run++) {
    const order = [...kinds.slice(run % kinds.length), ...kinds.slice(0, run % kinds.length)]
    for (const [kind, round] of order) {
      yield* env.registry.empty
      const load = yield* loadAverage
      yield* Ref.update(env.loads, (loads) => [...loads, load])
      const result = yield* round
      const what = run <= env.settings.warmups ? `warm-up ${run}` : `run ${run - env.settings.warmups}`
      yield* Console.log(
        `[bench] concurrency ${what} ${kind}: ${concurrency} × ${concurrentMiB} MiB in ` +
          `${formatSeconds(result.seconds)} s ` +
          `= ${(result.bytes / MiB / result.seconds).toFixed(0)} MiB/s`
      )
      if (run > env.settings.warmups) rounds[kind].push(result)
    }
  }
  return {
    containers: concurrency,
    mibEach: concurrentMiB,
    archiveBytes,
    ...rounds,
    serverIdleRss,
    serverPeakRss: server.peakRss()
  } satisfies ConcurrencyResult
}, Effect.scoped)
