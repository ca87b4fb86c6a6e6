/**
 * `pnpm bench`: the native image builder against the raw upload, the buildah recipe and podman's checkpoint images,
 * on real CRIU archives of 16 MiB, 256 MiB and 1 GiB, plus end-to-end checkpoints through the HTTP API.
 * Writes bench/RESULTS.md. Settings: bench/Settings.ts (BENCH_SIZES, BENCH_RUNS, ...).
 */
import { FileSystem, Path } from "@effect/platform"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Logger, LogLevel, Ref } from "effect"
import { benchSize, makeEnv } from "./Bench.ts"
import { concurrentCheckpoints, counterCheckpoints } from "./EndToEnd.ts"
import { codeFacts, machineFacts } from "./Machine.ts"
import { endToEndTargetRows, renderReport, targetRows } from "./Report.ts"
import { settings as benchSettings } from "./Settings.ts"
import { sweepLeftovers } from "./Workload.ts"

/** How this run was started, with the BENCH_* settings that were given, for the report. */
const commandLine = () => {
  const given = Object.entries(process.env)
    .filter(([name]) => name.startsWith("BENCH_") && name !== "BENCH_COMMAND")
    .map(([name, value]) => `${name}=${value}`)
  const command = process.env.BENCH_COMMAND ??
    (process.env.npm_lifecycle_event === "bench" ? "pnpm bench" : "node --import tsx bench/main.ts")
  return [...given, command].join(" ")
}

const program = Effect.gen(function*() {
  const settings = yield* benchSettings
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const startedAt = new Date()
  yield* fs.makeDirectory(settings.workDir, { recursive: true })
  const swept = yield* sweepLeftovers(settings.workDir)
  if (swept > 0) yield* Console.log(`[bench] removed ${swept} leftovers of earlier, killed runs`)
  const dir = path.resolve(
    yield* fs.makeTempDirectoryScoped({ directory: settings.workDir, prefix: `run-${process.pid}-` })
  )
  const machine = yield* machineFacts
  const code = yield* codeFacts
  const env = yield* makeEnv(settings, dir)
  const sizes = yield* Effect.forEach(settings.sizes, (mib) => benchSize(env, mib))
  const counter = settings.endToEnd ? yield* counterCheckpoints(env) : undefined
  const concurrency = settings.endToEnd && settings.concurrency > 0 ? yield* concurrentCheckpoints(env) : undefined
  const endToEnd = {
    ...(counter === undefined ? {} : { counter }),
    ...(concurrency === undefined ? {} : { concurrency })
  }
  const report = renderReport({
    command: commandLine(),
    startedAt,
    durationSeconds: (Date.now() - startedAt.getTime()) / 1000,
    settings,
    machine,
    code,
    bundles: yield* Ref.get(env.bundles),
    loads: yield* Ref.get(env.loads),
    sizes,
    ...endToEnd
  })
  yield* fs.writeFileString(settings.out, report)
  for (const row of [...targetRows(sizes), ...endToEndTargetRows(endToEnd)]) {
    yield* Console.log(`[bench] ${row.target} (${row.size}): ${row.measured} ${row.verdict}`)
  }
  const minutes = (Date.now() - startedAt.getTime()) / 60000
  yield* Console.log(`[bench] wrote ${settings.out} after ${minutes.toFixed(1)} min`)
})

// The library builder logs each push at info level; the progress lines are enough here.
NodeRuntime.runMain(
  program.pipe(Effect.scoped, Logger.withMinimumLogLevel(LogLevel.Warning), Effect.provide(NodeContext.layer))
)
