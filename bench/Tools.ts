import { Command } from "@effect/platform"
import type { CommandExecutor } from "@effect/platform"
import { Data, Duration, Effect, Stream } from "effect"
import { readdirSync, readFileSync, writeFileSync } from "node:fs"

export class BenchError extends Data.TaggedError("BenchError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** Wraps any failure of a benchmark step into a BenchError that says which step failed. */
export const failedTo = (what: string) => (cause: unknown) =>
  cause instanceof BenchError ? cause : new BenchError({ message: `${what}: ${describe(cause)}`, cause })

const describe = (cause: unknown): string =>
  typeof cause === "object" && cause !== null && "message" in cause ? String(cause.message) : String(cause)

export interface ExecResult {
  readonly stdout: string
  readonly stderr: string
}

const collectText = <E>(stream: Stream.Stream<Uint8Array, E>) => stream.pipe(Stream.decodeText(), Stream.mkString)

/** Runs a program, fails unless it exits with 0; the password-like argument after `-u`/`--creds` is not echoed. */
export const exec = (
  command: string,
  args: ReadonlyArray<string>,
  options?: { readonly env?: Readonly<Record<string, string>> }
): Effect.Effect<ExecResult, BenchError, CommandExecutor.CommandExecutor> =>
  Effect.scoped(Effect.gen(function*() {
    const process = yield* Command.start(
      Command.make(command, ...args).pipe(Command.env({ PODMAN_IGNORE_CGROUPSV1_WARNING: "1", ...options?.env }))
    )
    const [stdout, stderr, exitCode] = yield* Effect.all(
      [collectText(process.stdout), collectText(process.stderr), process.exitCode],
      { concurrency: "unbounded" }
    )
    if (exitCode !== 0) {
      return yield* new BenchError({
        message: `${command} ${shown(args).join(" ")} exited with ${exitCode}: ${stderr.trim().slice(-2000)}`
      })
    }
    return { stdout, stderr }
  })).pipe(Effect.mapError(failedTo(`${command} ${shown(args).join(" ")}`)))

const shown = (args: ReadonlyArray<string>) =>
  args.map((arg, index) => ["-u", "--creds"].includes(args[index - 1] ?? "") ? "<redacted>" : arg)

/** Trimmed stdout of a program (for versions and facts). */
export const output = (command: string, args: ReadonlyArray<string>) =>
  Effect.map(exec(command, args), (result) => result.stdout.trim())

/** Runs `effect` and reports how long it took, in seconds (monotonic clock). */
export const seconds = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<readonly [number, A], E, R> =>
  Effect.map(Effect.timed(effect), ([duration, value]) => [Duration.toMillis(duration) / 1000, value] as const)

const statusValue = (pid: number | "self", field: "VmHWM" | "VmRSS"): number => {
  const status = readFileSync(`/proc/${pid}/status`, "utf8")
  const kib = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status)?.[1]
  return kib === undefined ? 0 : Number(kib) * 1024
}

/** Peak resident set size (VmHWM) of a process, in bytes. */
export const peakRss = (pid: number | "self") => Effect.sync(() => statusValue(pid, "VmHWM"))

/** Current resident set size (VmRSS) of a process, in bytes. */
export const currentRss = (pid: number | "self") => Effect.sync(() => statusValue(pid, "VmRSS"))

/** Resets a process's VmHWM to its current RSS (`echo 5 > /proc/PID/clear_refs`, Linux >= 4.0). */
export const resetPeakRss = (pid: number | "self") =>
  Effect.try({
    try: () => writeFileSync(`/proc/${pid}/clear_refs`, "5"),
    catch: failedTo(`reset the peak RSS of ${pid}`)
  })

const clockTicks = 100

/** utime, stime, cutime, cstime of a process, in seconds (/proc/PID/stat, after the command name). */
const statTimes = (pid: number | "self") => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  const at = (index: number) => Number(fields[index - 3]) / clockTicks
  return { own: at(14) + at(15), children: at(16) + at(17) }
}

/** CPU seconds (user + system) a process has used; 0 once it is gone. */
export const processCpu = (pid: number) => Effect.try(() => statTimes(pid).own).pipe(Effect.orElseSucceed(() => 0))

/** CPU seconds of this process, and of its children that have ended (curl, buildah, podman and their children). */
export const selfCpu = Effect.sync(() => {
  const usage = process.cpuUsage()
  return { own: (usage.user + usage.system) / 1e6, children: statTimes("self").children }
})

/** Runs `effect`; with it, how far two CPU counters (seconds, e.g. a client's and the registry's) moved meanwhile. */
export const cpuDuring =
  (client: Effect.Effect<number>, registry: Effect.Effect<number>) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    Effect.gen(function*() {
      const [clientBefore, registryBefore] = yield* Effect.all([client, registry])
      const result = yield* effect
      const [clientAfter, registryAfter] = yield* Effect.all([client, registry])
      return [result, { client: clientAfter - clientBefore, registry: registryAfter - registryBefore }] as const
    })

const commandLineOf = (pid: string): string => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ")
  } catch {
    return ""
  }
}

/** The pid of the process whose command line contains all `words`, if exactly one does. */
export const findProcess = (words: ReadonlyArray<string>) =>
  Effect.sync(() => {
    const found = readdirSync("/proc")
      .filter((entry) => /^\d+$/.test(entry))
      .filter((pid) => words.every((word) => commandLineOf(pid).includes(word)))
    return found.length === 1 ? Number(found[0]) : undefined
  })
