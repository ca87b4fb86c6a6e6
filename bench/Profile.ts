import { Effect } from "effect"
import type { Profiler, Runtime } from "node:inspector"
import { Session } from "node:inspector/promises"
import { BenchError } from "./Tools.ts"

/** Time windows on the monotonic clock (process.hrtime, µs), the clock V8's profiler stamps its samples with. */
export interface Window {
  readonly from: number
  readonly to: number
}

export const monotonicMicros = Effect.sync(() => Number(process.hrtime.bigint() / 1000n))

/** Self time (µs) by category and by function, over the samples of some windows. */
export interface CpuBreakdown {
  /** Sum of the windows' lengths, µs. */
  readonly windowMicros: number
  readonly windows: number
  readonly byCategory: ReadonlyMap<string, number>
  readonly byFunction: ReadonlyMap<string, number>
}

const shortUrl = (url: string) => {
  const packages = url.indexOf("/packages/")
  if (packages >= 0) return url.slice(packages + 1)
  const modules = url.lastIndexOf("/node_modules/")
  if (modules >= 0) return url.slice(modules + "/node_modules/".length).replace(/^\.pnpm\/[^/]+\/node_modules\//, "")
  return url.replace(/^file:\/\/.*\/(dist\/)/, "$1")
}

export const categoryOf = (frame: Runtime.CallFrame): string => {
  const { functionName, url } = frame
  if (functionName === "(idle)") return "idle: waiting for the socket, the registry or the file"
  if (functionName === "(garbage collector)") return "garbage collection"
  if (functionName === "(program)") return "native code outside JS (TLS encryption, syscalls, V8)"
  if (url === "node:internal/crypto/hash" || (url === "" && ["update", "digest"].includes(functionName))) {
    return "sha256 (crypto Hash.update, OpenSSL)"
  }
  if (url === "" && functionName === "read") return "file reads (fs read binding)"
  if (url === "") return "other native bindings (socket writes, TLS setup, timers)"
  if (url.startsWith("node:")) return "Node.js internals (streams, net, tls, undici)"
  if (/\/node_modules\/.*\/(tar|minipass)\//.test(url)) return "tar parser (node-tar, minipass)"
  if (/\/node_modules\/.*(effect|@effect)\//.test(url)) return "Effect runtime, streams, HTTP client"
  if (/\/node_modules\/.*undici\//.test(url)) return "undici HTTP client"
  if (url.includes("/packages/")) return "Checkpointer code"
  if (url.includes("/dist/server/")) return "server bundle JS (minified: Effect, undici, tar, Checkpointer)"
  return "other JS"
}

/** Attributes each sample's interval to its frame, keeping only samples inside the windows. */
export const breakdown = (profiles: ReadonlyArray<Profiler.Profile>, windows: ReadonlyArray<Window>): CpuBreakdown => {
  const byCategory = new Map<string, number>()
  const byFunction = new Map<string, number>()
  for (const profile of profiles) {
    const frames = new Map(profile.nodes.map((node) => [node.id, node.callFrame]))
    const samples = profile.samples ?? []
    const deltas = profile.timeDeltas ?? []
    let at = profile.startTime
    for (let i = 0; i < samples.length; i++) {
      at += deltas[i] ?? 0
      const interval = deltas[i + 1] ?? 0
      if (!windows.some((window) => at >= window.from && at < window.to)) continue
      const frame = frames.get(samples[i]!)
      if (frame === undefined) continue
      const category = categoryOf(frame)
      byCategory.set(category, (byCategory.get(category) ?? 0) + interval)
      if (frame.functionName.startsWith("(")) continue
      const name = `${frame.functionName || "(anonymous)"} (${shortUrl(frame.url) || "native"}:${frame.lineNumber + 1})`
      byFunction.set(name, (byFunction.get(name) ?? 0) + interval)
    }
  }
  return {
    windowMicros: windows.reduce((sum, window) => sum + window.to - window.from, 0),
    windows: windows.length,
    byCategory,
    byFunction
  }
}

const profilerFailed = (cause: unknown) => new BenchError({ message: "the inspector's CPU profiler failed", cause })

/** Runs `effect` under this process's CPU profiler (node:inspector); returns its result, the profile and its window. */
export const profiled = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.scoped(Effect.gen(function*() {
    const session = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const session = new Session()
        session.connect()
        return session
      }),
      (session) => Effect.sync(() => session.disconnect())
    )
    const post = (method: string, params?: object) =>
      Effect.tryPromise({ try: () => session.post(method, params), catch: profilerFailed })
    yield* post("Profiler.enable")
    yield* post("Profiler.setSamplingInterval", { interval: 200 })
    yield* post("Profiler.start")
    const from = yield* monotonicMicros
    const result = yield* effect
    const to = yield* monotonicMicros
    const stopped = yield* Effect.tryPromise({
      try: () => session.post("Profiler.stop"),
      catch: profilerFailed
    })
    return { result, profile: stopped.profile, window: { from, to } satisfies Window } as const
  }))
