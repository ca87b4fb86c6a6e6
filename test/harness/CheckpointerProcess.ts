import { Data, Duration, Effect, Schedule } from "effect"
import type { Scope } from "effect"
import { spawn } from "node:child_process"
import { readdirSync, readFileSync, readlinkSync } from "node:fs"
import { get as httpsGet } from "node:https"
import { createServer } from "node:net"
import { fileURLToPath } from "node:url"

export class CheckpointerProcessError extends Data.TaggedError("CheckpointerProcessError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export const projectRoot = fileURLToPath(new URL("../..", import.meta.url))

/**
 * The command `pnpm start` runs after building the bundle (README's way to start the server outside a cluster),
 * taken from package.json so that tests run exactly what users run. The bundle is built once by test/globalSetup.ts.
 */
export const serverCommand: { readonly env: Record<string, string>; readonly argv: ReadonlyArray<string> } = (() => {
  const start: string = JSON.parse(readFileSync(`${projectRoot}/package.json`, "utf8")).scripts.start
  const words = start.slice(start.lastIndexOf("&&") + 2).trim().split(/\s+/)
  const assignments = words.filter((word) => /^[A-Z_]+=/.test(word))
  return {
    env: Object.fromEntries(
      assignments.map((word) => [word.slice(0, word.indexOf("=")), word.slice(word.indexOf("=") + 1)])
    ),
    argv: words.slice(assignments.length)
  }
})()

export interface CheckpointerProcess {
  readonly url: string
  /** The variables it was started with (on top of PATH and HOME). */
  readonly env: Readonly<Record<string, string>>
  readonly pid: number
  /** Everything the process wrote to stdout and stderr so far. */
  readonly logs: () => string
  /** Peak resident set size of the process so far (VmHWM), in bytes. */
  readonly peakRss: () => number
  readonly exitCode: () => number | null
  /** Kills the process at once (SIGKILL), as a crashed node would. */
  readonly kill: Effect.Effect<void>
  /** Sends SIGTERM, as Kubernetes does when it stops a pod, and waits for the exit code. */
  readonly terminate: Effect.Effect<number | null>
}

/** Listens on `port` (0: any) of `address` and closes again: the port it got, none when it could not bind. */
const bindOnce = (address: string, port: number) =>
  Effect.async<number | undefined>((resume) => {
    const server = createServer()
    server.once("error", () => resume(Effect.succeed(undefined)))
    server.listen(port, address, () => {
      const bound = (server.address() as { port: number }).port
      server.close(() => resume(Effect.succeed(bound)))
    })
  })

/** A free TCP port on `address`. */
export const freePort = (address: string) =>
  bindOnce(address, 0).pipe(
    Effect.filterOrFail(
      (port): port is number => port !== undefined,
      () => new CheckpointerProcessError({ message: `no free port on ${address}` })
    )
  )

/** A TCP port free on every one of `addresses` (the Checkpointers of a multi-node stack share one). */
export const freePortOnAll = (addresses: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    for (let attempt = 1; attempt <= 20; attempt++) {
      const port = yield* freePort(addresses[0]!)
      const bound = yield* Effect.forEach(addresses.slice(1), (address) => bindOnce(address, port))
      if (bound.every((other) => other === port)) return port
    }
    return yield* new CheckpointerProcessError({
      message: `no port free on all of ${addresses.join(", ")} in 20 tries`
    })
  })

const probeHttps = (url: string, signal: AbortSignal) =>
  new Promise<boolean>((resolve, reject) => {
    const request = httpsGet(url, { rejectUnauthorized: false, signal }, (response) => {
      response.resume()
      resolve(response.statusCode === 200)
    })
    request.on("error", reject)
  })

/**
 * Whether process `pid` holds the listening TCP socket of `port` (from /proc). All local stacks put their node on
 * 127.0.0.2: a port that freePort found free can be taken by another test's process before this one binds it, and then
 * that process answers /healthz while this one exits with EADDRINUSE.
 */
const listensOn = (pid: number, port: number): boolean => {
  const sockets = new Set<string>()
  let fds: ReadonlyArray<string>
  try {
    fds = readdirSync(`/proc/${pid}/fd`)
  } catch {
    return false // exited
  }
  for (const fd of fds) {
    try {
      const inode = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1]
      if (inode !== undefined) sockets.add(inode)
    } catch {
      // closed meanwhile
    }
  }
  const local = `:${port.toString(16).toUpperCase().padStart(4, "0")}`
  return ["/proc/net/tcp", "/proc/net/tcp6"].some((table) =>
    readFileSync(table, "utf8").split("\n").slice(1).some((line) => {
      const [, address, , state, , , , , , inode] = line.trim().split(/\s+/)
      return address?.endsWith(local) === true && state === "0A" && inode !== undefined && sockets.has(inode)
    })
  )
}

const peakRssOf = (pid: number): number => {
  const status = readFileSync(`/proc/${pid}/status`, "utf8")
  const kib = /^VmHWM:\s+(\d+) kB$/m.exec(status)?.[1]
  return kib === undefined ? 0 : Number(kib) * 1024
}

/**
 * Runs the real Checkpointer server process with `env` (on top of PATH/HOME) and waits until /healthz answers.
 * The process is stopped with SIGTERM (then SIGKILL) when the scope closes.
 */
export const startCheckpointer = (options: {
  readonly env: Readonly<Record<string, string>>
  readonly address: string
  readonly port: number
  /** Run `pnpm start` itself (the demo shows users exactly that); the default runs the same command without pnpm. */
  readonly viaPnpm?: boolean
}): Effect.Effect<CheckpointerProcess, CheckpointerProcessError, Scope.Scope> =>
  Effect.gen(function*() {
    const chunks: Array<string> = []
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const env = { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/root", ...options.env }
        const child = options.viaPnpm
          ? spawn("pnpm", ["--silent", "start"], {
            cwd: projectRoot,
            env,
            stdio: ["ignore", "pipe", "pipe"],
            detached: true
          })
          : spawn(serverCommand.argv[0]!, serverCommand.argv.slice(1), {
            cwd: projectRoot,
            env: { ...serverCommand.env, ...env },
            stdio: ["ignore", "pipe", "pipe"]
          })
        child.stdout.setEncoding("utf8").on("data", (chunk: string) => chunks.push(chunk))
        child.stderr.setEncoding("utf8").on("data", (chunk: string) => chunks.push(chunk))
        return child
      }),
      (child) =>
        Effect.async<void>((resume) => {
          if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
          // pnpm runs the server in a shell of its own process group: signal the whole group.
          const signal = (name: NodeJS.Signals) => options.viaPnpm ? process.kill(-child.pid!, name) : child.kill(name)
          const killer = setTimeout(() => signal("SIGKILL"), 10_000)
          child.once("exit", () => {
            clearTimeout(killer)
            resume(Effect.void)
          })
          signal("SIGTERM")
        })
    )
    // With CHECKPOINTER_TLS_CERT_FILE the API is HTTPS only; the probe does not verify, as the kubelet's probes.
    const secure = options.env.CHECKPOINTER_TLS_CERT_FILE !== undefined
    const url = `${secure ? "https" : "http"}://${options.address}:${options.port}`
    const logs = () => chunks.join("")
    yield* Effect.tryPromise({
      try: (signal) =>
        secure
          ? probeHttps(`${url}/healthz`, signal)
          : fetch(`${url}/healthz`, { signal }).then((response) => response.ok),
      catch: (cause) => new CheckpointerProcessError({ message: "not answering yet", cause })
    }).pipe(
      Effect.filterOrFail(
        // pnpm runs the server as a grandchild: its listener is not the child's.
        (ok) => ok && (options.viaPnpm === true || listensOn(child.pid!, options.port)),
        () => new CheckpointerProcessError({ message: "/healthz not ok, or answered by another process" })
      ),
      Effect.retry({
        schedule: Schedule.spaced("200 millis"),
        while: () => child.exitCode === null
      }),
      Effect.timeout(Duration.seconds(60)),
      Effect.mapError((cause) =>
        new CheckpointerProcessError({
          message: `Checkpointer did not become healthy (exit code ${child.exitCode}):\n${logs()}`,
          cause
        })
      )
    )
    return {
      url,
      env: options.env,
      pid: child.pid ?? 0,
      logs,
      peakRss: () => {
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(
            `Checkpointer (pid ${child.pid}) exited (${child.exitCode ?? child.signalCode}) before its memory was ` +
              `read; its output:\n${logs()}`
          )
        }
        return peakRssOf(child.pid ?? 0)
      },
      exitCode: () => child.exitCode,
      kill: Effect.async<void>((resume) => {
        if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
        child.once("exit", () => resume(Effect.void))
        child.kill("SIGKILL")
      }),
      terminate: Effect.async<number | null>((resume) => {
        if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.succeed(child.exitCode))
        child.once("exit", (code) => resume(Effect.succeed(code)))
        child.kill("SIGTERM")
      })
    } satisfies CheckpointerProcess
  })
