/**
 * `pnpm soak`: mixed sync/async checkpoints from many clients against one Checkpointer server on the real runtime,
 * for a long time. Reports the server's RSS growth after warm-up, lost results, leftover archives, pods and runtime
 * containers, the latency of each phase, and writes bench/SOAK.md; exits with 1 if anything was lost or left behind.
 * Not part of CI (it runs for 10+ minutes). Settings: SOAK_CLIENTS (20), SOAK_MIN_CHECKPOINTS (2000),
 * SOAK_MIN_SECONDS (600), SOAK_WARMUP_SECONDS (60), SOAK_OUT (bench/SOAK.md), SOAK_WORK_DIR (bench/.work).
 */
import { FileSystem, Path } from "@effect/platform"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Config, Console, Duration, Effect, Logger, LogLevel, Ref } from "effect"
import type { CheckpointerProcess } from "../test/harness/CheckpointerProcess.ts"
import { freePort, startCheckpointer } from "../test/harness/CheckpointerProcess.ts"
import { startCounterPod, startLocalCluster } from "../test/harness/Cluster.ts"
import { checkpointerEnv, checkpointRepository } from "../test/harness/LocalStack.ts"
import { call, getResult, postCheckpoint } from "../test/HttpCalls.ts"
import { startBenchRegistry } from "./BenchRegistry.ts"
import { codeFacts, machineFacts } from "./Machine.ts"
import { histogramQuantile, histogramSeries } from "./PromHistogram.ts"
import { percentile, summarize } from "./Stats.ts"
import { currentRss, failedTo } from "./Tools.ts"

const settings = Config.all({
  clients: Config.withDefault(Config.integer("SOAK_CLIENTS"), 20),
  minCheckpoints: Config.withDefault(Config.integer("SOAK_MIN_CHECKPOINTS"), 2000),
  minSeconds: Config.withDefault(Config.integer("SOAK_MIN_SECONDS"), 600),
  warmupSeconds: Config.withDefault(Config.integer("SOAK_WARMUP_SECONDS"), 60),
  out: Config.withDefault(Config.string("SOAK_OUT"), "bench/SOAK.md"),
  workDir: Config.withDefault(Config.string("SOAK_WORK_DIR"), "bench/.work")
})

const nodeName = "soak-node"
const rssEvery = Duration.seconds(2)
/** RSS samples within this many seconds are one reading (their median): after warm-up, and at the end. */
const rssWindowSeconds = 30
const trendMinutes = 5

type Kind = "sync" | "async"

/** One checkpoint as its client saw it. */
interface Outcome {
  readonly kind: Kind
  /** Milliseconds until the answer with the result (sync: the POST; async: the GET after the 202). */
  readonly millis: number
  /** Milliseconds until the 202 (async only). */
  readonly acceptMillis?: number
  /** The final answer's status: 201 (sync) or 200 (async GET) with an image, 500 a recorded failure, 0 no answer. */
  readonly status: number
  readonly image?: string
  readonly problem?: string
}

const imageOf = (text: string): string | undefined => {
  try {
    const name: unknown = JSON.parse(text).containerImageName
    return typeof name === "string" ? name : undefined
  } catch {
    return undefined
  }
}

const finished = (status: number, text: string, success: number, started: number, extra = {}): Outcome => {
  const image = status === success ? imageOf(text) : undefined
  return {
    kind: success === 201 ? "sync" : "async",
    millis: Date.now() - started,
    status,
    ...extra,
    ...(image === undefined ? { problem: `${status} ${text.slice(0, 300)}` } : { image })
  }
}

/** One checkpoint of `pod`'s counter, sync or async, every answer checked; a transport failure is status 0. */
const checkpointOnce = (server: CheckpointerProcess, pod: string, kind: Kind): Effect.Effect<Outcome> => {
  const started = Date.now()
  const path = `default/${pod}/counter`
  const attempt = kind === "sync"
    ? Effect.map(postCheckpoint(server.url, path), (answer) => finished(answer.status, answer.text, 201, started))
    : Effect.gen(function*() {
      const accepted = yield* postCheckpoint(server.url, path, { async: true })
      const acceptMillis = Date.now() - started
      if (accepted.status !== 202) return finished(accepted.status, accepted.text, 202, started, { acceptMillis })
      const identifier: string = JSON.parse(accepted.text).checkpointIdentifier
      const result = yield* getResult(server.url, identifier)
      return finished(result.status, result.text, 200, started, { acceptMillis })
    })
  return attempt.pipe(
    Effect.catchAllDefect((defect) =>
      Effect.succeed({ kind, millis: Date.now() - started, status: 0, problem: `no answer: ${String(defect)}` })
    )
  )
}

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1)
const quantiles = (values: ReadonlyArray<number>) =>
  values.length === 0 ? "–" : `${percentile(values, 50).toFixed(0)} / ${percentile(values, 99).toFixed(0)}`

const program = Effect.gen(function*() {
  const config = yield* settings
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  yield* fs.makeDirectory(config.workDir, { recursive: true })
  const dir = path.resolve(
    yield* fs.makeTempDirectoryScoped({ directory: config.workDir, prefix: `soak-${process.pid}-` })
  )
  const machine = yield* machineFacts
  const code = yield* codeFacts

  const registry = yield* startBenchRegistry(path.join(dir, "registry"))
  const cluster = yield* startLocalCluster({ dir: path.join(dir, "cluster"), nodes: [nodeName] }).pipe(
    Effect.mapError(failedTo("start the simulated cluster"))
  )
  const node = cluster.node(nodeName)
  const pods = Array.from({ length: config.clients }, (_, i) => `soak-${i}`)
  yield* Console.log(`[soak] starting ${pods.length} counter pods on ${cluster.runtime.kind}`)
  yield* Effect.forEach(pods, (name) => startCounterPod(cluster, { namespace: "default", name, nodeName }), {
    discard: true
  }).pipe(Effect.mapError(failedTo("start the counter pods")))
  const port = yield* freePort(node.address)
  const server = yield* startCheckpointer({
    env: checkpointerEnv({ registry, cluster, node, port, storage: path.join(dir, "server") }),
    address: node.address,
    port
  }).pipe(Effect.mapError(failedTo("start the Checkpointer server")))
  const idleRss = yield* currentRss(server.pid)

  const outcomes = yield* Ref.make<ReadonlyArray<Outcome>>([])
  const rss = yield* Ref.make<ReadonlyArray<readonly [second: number, bytes: number]>>([])
  const startedAt = Date.now()
  const elapsed = () => (Date.now() - startedAt) / 1000
  yield* Console.log(
    `[soak] ${config.clients} clients, until ${config.minCheckpoints} checkpoints and ${config.minSeconds} s`
  )
  yield* Effect.forkScoped(Effect.forever(
    currentRss(server.pid).pipe(
      Effect.flatMap((bytes) => Ref.update(rss, (all) => [...all, [elapsed(), bytes] as const])),
      Effect.zipRight(Effect.sleep(rssEvery))
    )
  ))
  yield* Effect.forkScoped(Effect.forever(
    Effect.sleep(Duration.seconds(30)).pipe(
      Effect.zipRight(Ref.get(outcomes)),
      Effect.flatMap((all) =>
        Console.log(
          `[soak] ${elapsed().toFixed(0)} s: ${all.length} checkpoints, ` +
            `${all.filter((outcome) => outcome.problem !== undefined).length} not a result`
        )
      )
    )
  ))
  const enough = Effect.map(
    Ref.get(outcomes),
    (all) => all.length >= config.minCheckpoints && elapsed() >= config.minSeconds
  )
  yield* Effect.forEach(pods, (pod, client) =>
    Effect.gen(function*() {
      for (let round = 0; !(yield* enough); round++) {
        const outcome = yield* checkpointOnce(server, pod, (client + round) % 2 === 0 ? "sync" : "async")
        yield* Ref.update(outcomes, (all) => [...all, outcome])
      }
    }), { concurrency: "unbounded", discard: true })
  const seconds = elapsed()
  const all = yield* Ref.get(outcomes)
  const rssSamples = yield* Ref.get(rss)

  yield* Console.log(`[soak] ${all.length} checkpoints in ${seconds.toFixed(0)} s; checking the registry and leftovers`)
  const images = all.flatMap((outcome) => outcome.image === undefined ? [] : [outcome.image])
  const missingImages = (yield* Effect.forEach(images, (image) =>
    registry.manifest(checkpointRepository, image.slice(image.lastIndexOf(":") + 1)).pipe(
      Effect.as(0),
      Effect.orElseSucceed(() =>
        1
      )
    ), { concurrency: 8 })).reduce((sum, missing) =>
      sum + missing, 0)
  const metrics = (yield* call(`${server.url}/metrics`)).text
  const phases = histogramSeries(metrics, "checkpoint_phase_duration_seconds", "phase")
  const archivesLeft = (yield* fs.readDirectory(node.checkpointsDir)).length
  const podsLeft = (yield* cluster.apiServer.pods()).filter((pod) =>
    !pods.includes(pod.metadata.name)
  ).length
  const runtimeContainers = (yield* cluster.runtime.crictl(["ps", "-a", "-q"]).pipe(
    Effect.mapError(failedTo("list the runtime's containers"))
  )).split("\n").filter((line) => line.trim() !== "").length
  const containersLeft = runtimeContainers - pods.length

  const failures = all.filter((outcome) => outcome.status === 500)
  /** Requests whose result nobody can get: no answer, or an answer that is neither a result nor a failure. */
  const lost = all.filter((outcome) => outcome.image === undefined && outcome.status !== 500)
  const after = (from: number) =>
    summarize(rssSamples.filter(([second]) => second >= from && second < from + rssWindowSeconds).map(([, b]) => b))
  const warmRss = after(config.warmupSeconds).median
  const endRss = after(Math.max(config.warmupSeconds, seconds - rssWindowSeconds)).median
  const peakRss = Math.max(...rssSamples.map(([, bytes]) => bytes))
  const rssTrend = Array.from({ length: Math.ceil(seconds / (trendMinutes * 60)) }, (_, i) => {
    const window = rssSamples.filter(([second]) => Math.floor(second / (trendMinutes * 60)) === i)
    return `${mib(summarize(window.map(([, bytes]) => bytes)).median)} MiB`
  })
  const sync = all.filter((outcome) => outcome.kind === "sync" && outcome.image !== undefined)
  const async = all.filter((outcome) => outcome.kind === "async" && outcome.image !== undefined)
  const phaseRow = (phase: string) => {
    const series = phases.get(phase)
    return series === undefined
      ? `| ${phase} | 0 | – | – |`
      : `| ${phase} | ${series.count} | ${(histogramQuantile(0.5, series) * 1000).toFixed(0)} | ${
        (histogramQuantile(0.99, series) * 1000).toFixed(0)
      } |`
  }
  const failureReasons = [...new Set(failures.concat(lost).map((outcome) => outcome.problem ?? ""))].slice(0, 10)
  const clean = lost.length === 0 && missingImages === 0 && archivesLeft === 0 && podsLeft === 0 &&
    containersLeft === 0

  const report = [
    "# Soak",
    "",
    `Written by \`pnpm soak\` on ${new Date().toISOString()}, commit ${code.commit}` +
    `${code.changedFiles > 0 ? ` (+${code.changedFiles} changed files)` : ""}; ` +
    `${machine.cpus} CPUs (${machine.cpuModel}), ${(machine.memoryBytes / 2 ** 30).toFixed(0)} GiB, ` +
    `${machine.kernel}.`,
    "",
    `${config.clients} clients, one counter pod each on one node ` +
    `(${cluster.runtime.kind} ${cluster.runtime.version}), ` +
    "each alternating sync and async checkpoints (POST, then GET of the identifier) back to back, against one " +
    "server (native builder, default settings, `pnpm start`'s command) and the real registry.",
    "",
    "| | |",
    "|---|---|",
    `| Duration | ${seconds.toFixed(0)} s |`,
    `| Checkpoints | ${all.length} (${(all.length / seconds).toFixed(2)}/s): ${sync.length} sync and ` +
    `${async.length} async results, ${failures.length} failures answered with 500 |`,
    `| Lost results | ${lost.length} (a request with neither a result nor a recorded failure) |`,
    `| Images missing from the registry | ${missingImages} of ${images.length} reported |`,
    `| Archives left in the kubelet's directory | ${archivesLeft} |`,
    `| Pods left beyond the ${pods.length} counters | ${podsLeft} |`,
    `| Runtime containers left beyond the counters | ${containersLeft} |`,
    `| Server RSS | ${mib(idleRss)} MiB idle, ${mib(warmRss)} MiB after ${config.warmupSeconds} s warm-up, ` +
    `${mib(endRss)} MiB at the end (growth ${mib(endRss - warmRss)} MiB), peak ${mib(peakRss)} MiB |`,
    "",
    `Server RSS (median) per ${trendMinutes} minutes: ${rssTrend.join(", ")}.`,
    "",
    "Latency in ms, p50 / p99, as the clients saw it:",
    "",
    "| | p50 / p99 ms |",
    "|---|---|",
    `| sync POST until 201 | ${quantiles(sync.map((outcome) => outcome.millis))} |`,
    `| async POST until 202 | ${quantiles(async.flatMap((outcome) => outcome.acceptMillis ?? []))} |`,
    `| async POST until the GET's 200 | ${quantiles(async.map((outcome) => outcome.millis))} |`,
    "",
    "Phases as the server measured them (`checkpoint_phase_duration_seconds` from /metrics, quantiles estimated " +
    "within its buckets as PromQL's histogram_quantile does; the time waiting for one of the " +
    "MAX_CONCURRENT_CHECKPOINTS slots is in neither):",
    "",
    "| phase | count | p50 ms | p99 ms |",
    "|---|---|---|---|",
    phaseRow("kubelet"),
    phaseRow("build/push"),
    ...(failureReasons.length === 0 ? [] : ["", "Failures seen:", "", ...failureReasons.map((r) => `- ${r}`)]),
    ""
  ].join("\n")
  yield* fs.writeFileString(config.out, report)
  yield* Console.log(report)
  yield* Console.log(`[soak] wrote ${config.out}`)
  if (!clean) return yield* Effect.fail(failedTo("soak")("results were lost or something was left behind"))
})

NodeRuntime.runMain(
  program.pipe(Effect.scoped, Logger.withMinimumLogLevel(LogLevel.Warning), Effect.provide(NodeContext.layer))
)
