import { FileSystem, Path } from "@effect/platform"
import { Effect } from "effect"
import * as Os from "node:os"
import { projectRoot } from "../test/harness/CheckpointerProcess.ts"
import { output } from "./Tools.ts"

export interface MachineFacts {
  readonly cpus: number
  readonly cpuModel: string
  readonly memoryBytes: number
  readonly kernel: string
  readonly versions: ReadonlyArray<readonly [string, string]>
}

const firstLine = (text: string) => text.split("\n")[0]?.trim() ?? ""

const versionOf = (name: string, command: string, args: ReadonlyArray<string>, pick: (text: string) => string) =>
  output(command, args).pipe(
    Effect.map((text) => [name, pick(text)] as const),
    Effect.orElseSucceed(() => [name, "not found"] as const)
  )

const packageVersion = (name: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const text = yield* fs.readFileString(path.join(projectRoot, "node_modules", name, "package.json"))
    return [name, (JSON.parse(text) as { version: string }).version] as const
  }).pipe(Effect.orElseSucceed(() => [name, "not found"] as const))

/** The machine and the versions of everything that takes part, for the report. */
export const machineFacts = Effect.gen(function*() {
  const versions = yield* Effect.all([
    Effect.succeed(["node", process.version] as const),
    packageVersion("effect"),
    packageVersion("@effect/platform"),
    packageVersion("@effect/platform-node"),
    versionOf("podman", "podman", ["--version"], firstLine),
    versionOf("buildah", "buildah", ["--version"], firstLine),
    versionOf("criu", "criu", ["--version"], (text) => firstLine(text).replace(/^Version:\s*/, "")),
    versionOf("runc", "runc", ["--version"], firstLine),
    versionOf("docker-registry", "docker-registry", ["--version"], firstLine),
    versionOf("curl", "curl", ["--version"], firstLine)
  ])
  return {
    cpus: Os.availableParallelism(),
    cpuModel: Os.cpus()[0]?.model ?? "unknown",
    memoryBytes: Os.totalmem(),
    kernel: `${Os.type()} ${Os.release()}`,
    versions
  } satisfies MachineFacts
})

/** One-minute load average (other work on a shared machine shows here). */
export const loadAverage = Effect.sync(() => Os.loadavg()[0] ?? 0)

/** The code being measured: HEAD, and how many files under packages/ differ from it (the bundle is built from them). */
export const codeFacts = Effect.gen(function*() {
  const commit = yield* output("git", ["-C", projectRoot, "rev-parse", "--short", "HEAD"])
  const changed = yield* output("git", ["-C", projectRoot, "status", "--porcelain", "--", "packages"])
  return { commit, changedFiles: changed.split("\n").filter((line) => line.trim().length > 0).length }
}).pipe(Effect.orElseSucceed(() => ({ commit: "unknown", changedFiles: 0 })))
