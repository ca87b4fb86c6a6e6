/**
 * `pnpm bench:link` (issue 16, items 3 and 4; issue 15's cost of encryption on a link): layer compression and
 * encryption over shaped links, and restores of compressed images. A busybox awk process on the harness's CRI-O holds
 * LINK_MIB MiB of JSON-like records and real text in its heap; its CRI-O checkpoint is pushed by the native builder
 * (none, gzip, zstd, and none encrypted for two recipients) and uploaded raw with curl to a docker-registry
 * on loopback and to one inside a network namespace behind a veth pair shaped with `tc tbf` to 1 Gbit/s and 100 Mbit/s;
 * then the uncompressed and the zstd image are restored on CRI-O next to a cold start. Writes bench/LINK.md.
 * Settings: LINK_MIB (256), LINK_RUNS (3), LINK_WARMUP (1), LINK_RESTORE_RUNS (LINK_RUNS; 0: none), LINK_OUT
 * (bench/LINK.md), LINK_WORK_DIR (bench/.work), LINK_LINKS (loopback,1g,100m: the links measured). Needs root
 * (ip netns, tc). The corpus alone takes about 40 MiB of heap: a smaller LINK_MIB gets that much. A killed run's
 * namespaces (with the registries inside), its work directory and the processes naming it are removed at the next
 * start. The measurements are also written as JSON next to the
 * report (LINK.json); LINK_FROM=<that file> writes the report again from them without measuring.
 */
import { FileSystem, Path } from "@effect/platform"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Config, Console, Effect, Logger, LogLevel, Ref } from "effect"
import { readdirSync, readFileSync } from "node:fs"
import { startLocalCluster } from "../test/harness/Cluster.ts"
import type { BenchRegistry } from "./BenchRegistry.ts"
import { startBenchRegistry } from "./BenchRegistry.ts"
import type { LinkResult } from "./LinkReport.ts"
import { linkReport } from "./LinkReport.ts"
import type { StartKind, StartSample } from "./LinkRuns.ts"
import { libraryImage, makeBuilders, measureLink, startOnce } from "./LinkRuns.ts"
import { makeHeapArchive, runHeapPod } from "./LinkWorkload.ts"
import { codeFacts, loadAverage, machineFacts } from "./Machine.ts"
import { writeRecipients } from "./Recipients.ts"
import { makeShapedLink, orphanedNames, sweepShapedLinks } from "./ShapedLink.ts"
import { failedTo } from "./Tools.ts"

const settings = Config.all({
  mib: Config.withDefault(Config.integer("LINK_MIB"), 256),
  runs: Config.withDefault(Config.integer("LINK_RUNS"), 3),
  warmups: Config.withDefault(Config.integer("LINK_WARMUP"), 1),
  restoreRuns: Config.option(Config.integer("LINK_RESTORE_RUNS")),
  out: Config.withDefault(Config.string("LINK_OUT"), "bench/LINK.md"),
  from: Config.option(Config.string("LINK_FROM")),
  workDir: Config.withDefault(Config.string("LINK_WORK_DIR"), "bench/.work"),
  links: Config.withDefault(Config.array(Config.string(), "LINK_LINKS"), ["loopback", "1g", "100m"]).pipe(
    Config.map((labels): ReadonlyArray<string> => labels)
  )
})

const shapedLinks = [
  { label: "1g", title: "1 Gbit/s (veth + tc tbf)", rateMbit: 1000 },
  { label: "100m", title: "100 Mbit/s (veth + tc tbf)", rateMbit: 100 }
] as const

const writeReport = Effect.fn("link.writeReport")(function*(result: LinkResult, out: string) {
  const fs = yield* FileSystem.FileSystem
  const report = linkReport(result)
  yield* fs.writeFileString(out, report)
  yield* Console.log(report)
  yield* Console.log(`[link] wrote ${out}`)
})

/** Processes whose command line mentions `text` (a killed run's registries and runtime name their directory). */
const processesMentioning = (text: string) =>
  readdirSync("/proc").filter((entry) => /^\d+$/.test(entry)).filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(text)
    } catch {
      return false
    }
  }).map(Number)

const jsonOf = (out: string) => out.replace(/\.md$/, "") + ".json"

const program = Effect.gen(function*() {
  const config = yield* settings
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  if (config.from._tag === "Some") {
    const result = JSON.parse(yield* fs.readFileString(config.from.value)) as LinkResult
    return yield* writeReport(result, config.out)
  }
  const swept = yield* sweepShapedLinks
  if (swept > 0) yield* Console.log(`[link] removed ${swept} shaped links of earlier runs`)
  yield* fs.makeDirectory(config.workDir, { recursive: true })
  const staleRuns = orphanedNames(yield* fs.readDirectory(config.workDir), "run-")
    .filter((name) => name.includes("-link-"))
  for (const name of staleRuns) {
    const runDir = path.resolve(config.workDir, name)
    for (const pid of processesMentioning(runDir)) yield* Effect.ignore(Effect.try(() => process.kill(pid, "SIGKILL")))
    yield* fs.remove(runDir, { recursive: true })
  }
  if (staleRuns.length > 0) yield* Console.log(`[link] removed ${staleRuns.length} work directories of killed runs`)
  const dir = path.resolve(
    yield* fs.makeTempDirectoryScoped({ directory: config.workDir, prefix: `run-${process.pid}-link-` })
  )
  const machine = yield* machineFacts
  const code = yield* codeFacts
  const loads = yield* Ref.make<ReadonlyArray<number>>([])
  const noteLoad = Effect.flatMap(loadAverage, (load) => Ref.update(loads, (all) => [...all, load]))
  yield* noteLoad

  const loopback = yield* startBenchRegistry(path.join(dir, "registry-loopback"))
  const registries: Array<{
    readonly label: string
    readonly title: string
    readonly rateMbit?: number
    readonly registry: BenchRegistry
  }> = [
    { label: "loopback", title: "loopback (unshaped)", registry: loopback }
  ]
  for (const [index, link] of shapedLinks.entries()) {
    if (!config.links.includes(link.label)) continue
    const shaped = yield* makeShapedLink(link.label, index + 1, link.rateMbit)
    const registry = yield* startBenchRegistry(path.join(dir, `registry-${link.label}`), {
      address: shaped.nsAddress,
      commandPrefix: shaped.commandPrefix
    })
    registries.push({ label: link.label, title: link.title, rateMbit: link.rateMbit, registry })
  }
  const cluster = yield* startLocalCluster({
    dir: path.join(dir, "cluster"),
    nodes: ["link-node"],
    registries: [{ host: loopback.host, caFile: loopback.caFile }]
  }).pipe(Effect.mapError(failedTo("start the simulated cluster")))

  yield* Console.log(`[link] building a ${config.mib} MiB heap in a busybox awk process on ${cluster.runtime.kind}`)
  const heap = yield* runHeapPod(cluster, "link-heap", config.mib)
  yield* Console.log(`[link] heap built in ${heap.startSeconds.toFixed(1)} s: ${heap.records}`)
  const archive = yield* makeHeapArchive(cluster, heap.pod, config.mib, path.join(dir, "heap-archive.tar"))
  yield* Console.log(
    `[link] archive ${archive.bytes} bytes, ${archive.pagesBytes} bytes of pages, ` +
      `checkpoint ${archive.checkpointSeconds.toFixed(2)} s`
  )

  const encryptionKeys = yield* writeRecipients(dir)
  const links: Array<LinkResult["links"][number]> = []
  for (const { registry, ...link } of registries.filter((each) => config.links.includes(each.label))) {
    yield* noteLoad
    const builders = yield* makeBuilders(registry, encryptionKeys)
    const samples = yield* cluster.agent.whileQuiet(measureLink(link.label, registry, builders, archive, config))
    links.push({ ...link, samples })
  }

  yield* noteLoad
  const restoreRuns = config.restoreRuns._tag === "Some" ? config.restoreRuns.value : config.runs
  const loopbackBuilders = yield* makeBuilders(loopback, encryptionKeys)
  yield* loopback.empty
  const images = {
    none: yield* libraryImage(loopbackBuilders.none, loopback, archive, "restore-none"),
    zstd: yield* libraryImage(loopbackBuilders.zstd, loopback, archive, "restore-zstd")
  }
  const kinds: ReadonlyArray<StartKind> = ["restore none", "restore zstd", "cold start"]
  const imageOf = (kind: StartKind) =>
    kind === "restore none" ? images.none : kind === "restore zstd" ? images.zstd : undefined
  const starts: Array<StartSample> = []
  for (let round = config.warmups > 0 && restoreRuns > 0 ? 0 : 1; round <= restoreRuns; round++) {
    const shift = round % kinds.length
    for (const kind of [...kinds.slice(shift), ...kinds.slice(0, shift)]) {
      const sample = yield* startOnce(cluster, loopback, kind, imageOf(kind), round, config.mib)
      if (round > 0) starts.push(sample)
    }
  }
  yield* noteLoad

  const result: LinkResult = {
    machine,
    code,
    runtime: `${cluster.runtime.kind} (${cluster.runtime.version})`,
    settings: { mib: config.mib, runs: config.runs, warmups: config.warmups, restoreRuns },
    heap,
    archive,
    links,
    starts,
    loads: yield* Ref.get(loads),
    date: new Date().toISOString()
  }
  yield* fs.writeFileString(jsonOf(config.out), JSON.stringify(result, null, 2) + "\n")
  yield* writeReport(result, config.out)
})

NodeRuntime.runMain(
  program.pipe(Effect.scoped, Logger.withMinimumLogLevel(LogLevel.Warning), Effect.provide(NodeContext.layer))
)
