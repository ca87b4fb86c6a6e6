import type { CommandExecutor } from "@effect/platform"
import { FileSystem, Path } from "@effect/platform"
import type { PlatformError } from "@effect/platform/Error"
import { Data, Duration, Effect } from "effect"
import type { Scope } from "effect"
import { spawn } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import { openSync, readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { prepareCriu, runcForRuntimes } from "./Criu.ts"
import type { ProcessError, ProcessResult, RunOptions } from "./Process.ts"
import { pollUntil, run, runProcess } from "./Process.ts"

/** The container runtimes a harness node can run on. */
export type RuntimeKind = "crio-1.36" | "crio-1.33" | "containerd"

export const runtimeKinds: ReadonlyArray<RuntimeKind> = ["crio-1.36", "crio-1.33", "containerd"]

/** The runtime tests use unless they ask for another (CHECKPOINTER_TEST_RUNTIME overrides it). */
export const defaultRuntimeKind = (): RuntimeKind => {
  const wanted = process.env.CHECKPOINTER_TEST_RUNTIME
  return runtimeKinds.find((kind) => kind === wanted) ?? "crio-1.36"
}

export class CriRuntimeError extends Data.TaggedError("CriRuntimeError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** A registry the runtime pulls from: plain HTTP (`insecure`) or HTTPS verified with `caFile`. */
export interface RegistryAccess {
  readonly host: string
  readonly caFile?: string
  readonly insecure?: boolean
}

export interface CriRuntime {
  readonly kind: RuntimeKind
  /** What the runtime says of itself, e.g. "cri-o 1.36.3" or "containerd 2.1.9+unknown". */
  readonly version: string
  /** `unix:///.../crio.sock` */
  readonly endpoint: string
  readonly dir: string
  /** Where CRI-O looks for private keys to decrypt images (`decryption_keys_path`). */
  readonly decryptionKeysDir: string
  readonly crictl: (args: ReadonlyArray<string>, options?: RunOptions) => Effect.Effect<string, ProcessError, Executor>
  readonly crictlResult: (
    args: ReadonlyArray<string>,
    options?: RunOptions
  ) => Effect.Effect<ProcessResult, ProcessError, Executor>
  /** Lets the runtime pull from one more registry (HTTPS with a private CA) for as long as the scope is open. */
  readonly trustRegistry: (
    registry: RegistryAccess
  ) => Effect.Effect<void, PlatformError, Scope.Scope | FileSystem.FileSystem | Path.Path>
  /** The daemon's log so far. */
  readonly log: () => string
}

type Executor = CommandExecutor.CommandExecutor

const repositoryRoot = fileURLToPath(new URL("../..", import.meta.url))

/** Where scripts/setup.sh unpacks CRI-O, crictl and pinns (from ../shared/runtimes, or CRI-O's release bundle). */
export const runtimesBin = process.env.CHECKPOINTER_RUNTIMES_BIN ?? `${repositoryRoot}/.tools/runtimes/bin`

const crioBinary: Record<Exclude<RuntimeKind, "containerd">, string> = {
  "crio-1.36": "crio-1.36.3",
  "crio-1.33": "crio-1.33.13"
}

const crioConfig = (dir: string, attachDir: string, pauseImage: string, restoreSupport: boolean, runc: string) => `
[crio]
root = "${dir}/root"
runroot = "${dir}/run"
log_dir = "${dir}/pods"
version_file = "${dir}/version"
clean_shutdown_file = "${dir}/clean.shutdown"
[crio.api]
listen = "${dir}/crio.sock"
stream_address = "127.0.0.1"
stream_port = "0"
[crio.runtime]
default_runtime = "runc"
cgroup_manager = "cgroupfs"
conmon_cgroup = "pod"
enable_criu_support = ${restoreSupport}
drop_infra_ctr = true
pinns_path = "${runtimesBin}/pinns"
container_exits_dir = "${dir}/exits"
container_attach_socket_dir = "${attachDir}"
namespaces_dir = "${dir}/ns"
decryption_keys_path = "${dir}/keys"
[crio.runtime.runtimes.runc]
runtime_path = "${runc}"
runtime_root = "${dir}/runc"
monitor_path = "/usr/bin/conmon"
[crio.image]
pause_image = "${pauseImage}"
[crio.network]
network_dir = "${dir}/cni"
plugin_dirs = ["/usr/lib/cni"]
[crio.nri]
enable_nri = false
`

const containerdConfig = (dir: string, pauseImage: string) => `
version = 3
root = "${dir}/root"
state = "${dir}/state"
[grpc]
  address = "${dir}/containerd.sock"
[ttrpc]
  address = "${dir}/containerd.sock.ttrpc"
[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '${pauseImage}'
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '${dir}/certs.d'
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '/usr/sbin/runc'
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['/usr/lib/cni']
      conf_dir = '${dir}/cni'
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
`

const registriesConf = (registries: ReadonlyArray<RegistryAccess>) =>
  [
    "unqualified-search-registries = []",
    ...registries.filter((registry) => registry.insecure === true).map((registry) =>
      `[[registry]]\nlocation = "${registry.host}"\ninsecure = true`
    )
  ].join("\n") + "\n"

const containerdHosts = (registry: RegistryAccess) =>
  registry.insecure === true
    ? `server = "http://${registry.host}"\n[host."http://${registry.host}"]\n  capabilities = ["pull", "resolve"]\n`
    : `server = "https://${registry.host}"\n[host."https://${registry.host}"]\n  capabilities = ["pull", "resolve"]\n` +
      `  ca = "${registry.caFile}"\n`

/** Mount points at or below `dir`, deepest first. */
const mountsBelow = (dir: string): ReadonlyArray<string> =>
  readFileSync("/proc/self/mountinfo", "utf8").split("\n")
    .map((line) => line.split(" ")[4] ?? "")
    .filter((mountPoint) => mountPoint === dir || mountPoint.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length)

const stopDaemon = (child: ChildProcess) =>
  Effect.async<void>((resume) => {
    if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
    const kill = setTimeout(() => child.kill("SIGKILL"), 15_000)
    child.once("exit", () => {
      clearTimeout(kill)
      resume(Effect.void)
    })
    child.kill("SIGTERM")
  })

/**
 * A real container runtime daemon (CRI-O 1.36 or 1.33, or containerd) with its own configuration, storage, socket and
 * log under `dir`, speaking CRI to crictl. `preload` images are copied from podman's storage into CRI-O's before it
 * starts (images no registry here serves, such as the Kaniko executor). When the scope closes every pod is removed,
 * the daemon stopped, whatever it left mounted below `dir` unmounted and `dir` removed.
 */
export const startCriRuntime = (options: {
  readonly kind: RuntimeKind
  readonly dir: string
  readonly pauseImage: string
  readonly registries: ReadonlyArray<RegistryAccess>
  readonly preload?: ReadonlyArray<string>
  /** CRI-O's enable_criu_support: checkpoint and restore (default true). */
  readonly restoreSupport?: boolean
}): Effect.Effect<
  CriRuntime,
  CriRuntimeError | ProcessError | PlatformError,
  Scope.Scope | Executor | FileSystem.FileSystem | Path.Path
> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    yield* Effect.sync(prepareCriu)
    const dir = path.resolve(options.dir)
    const isCrio = options.kind !== "containerd"
    const socket = path.join(dir, isCrio ? "crio.sock" : "containerd.sock")
    const endpoint = `unix://${socket}`
    const logFile = path.join(dir, "daemon.log")

    yield* Effect.acquireRelease(fs.makeDirectory(dir, { recursive: true }), () =>
      Effect.gen(function*() {
        for (const mountPoint of mountsBelow(dir)) {
          yield* Effect.ignore(run(["umount", "--lazy", mountPoint]))
        }
        yield* Effect.ignore(run(["pkill", "-KILL", "-f", dir]))
        yield* Effect.ignore(fs.remove(dir, { recursive: true }))
      }))
    yield* fs.makeDirectory(path.join(dir, "cni"), { recursive: true })
    yield* fs.makeDirectory(path.join(dir, "keys"), { recursive: true, mode: 0o700 })
    yield* fs.writeFileString(
      path.join(dir, "cni", "99-loopback.conflist"),
      JSON.stringify({ cniVersion: "1.0.0", name: "loopback", plugins: [{ type: "loopback" }] })
    )

    const configFile = path.join(dir, isCrio ? "crio.conf" : "config.toml")
    let command: ReadonlyArray<string>
    let env: Record<string, string> = {}
    if (options.kind === "containerd") {
      yield* fs.writeFileString(configFile, containerdConfig(dir, options.pauseImage))
      for (const registry of options.registries) {
        const hostDir = path.join(dir, "certs.d", registry.host)
        yield* fs.makeDirectory(hostDir, { recursive: true })
        yield* fs.writeFileString(path.join(hostDir, "hosts.toml"), containerdHosts(registry))
      }
      command = ["containerd", "--config", configFile]
    } else {
      // Attach sockets are `DIR/<64 hex>/attach`: a unix socket path must stay under 108 bytes.
      const attachDir = yield* Effect.acquireRelease(
        fs.makeTempDirectory({ directory: "/run", prefix: "crio-attach-" }),
        (made) => Effect.ignore(fs.remove(made, { recursive: true }))
      )
      yield* fs.writeFileString(
        configFile,
        crioConfig(dir, attachDir, options.pauseImage, options.restoreSupport ?? true, runcForRuntimes().runc)
      )
      yield* fs.writeFileString(path.join(dir, "registries.conf"), registriesConf(options.registries))
      env = { CONTAINER_REGISTRIES_CONF: path.join(dir, "registries.conf") }
      const storage = `containers-storage:[overlay@${dir}/root+${dir}/run]`
      for (const image of options.preload ?? []) {
        yield* run(["skopeo", "copy", "--quiet", `containers-storage:${image}`, `${storage}${image}`], {
          timeout: Duration.minutes(2)
        })
      }
      command = [path.join(runtimesBin, crioBinary[options.kind]), "--config", configFile]
    }

    const child = yield* Effect.acquireRelease(
      Effect.try({
        try: () => {
          const out = openSync(logFile, "a")
          return spawn(command[0]!, command.slice(1), {
            stdio: ["ignore", out, out],
            env: { ...process.env, ...env },
            detached: true
          })
        },
        catch: (cause) => new CriRuntimeError({ message: `cannot start ${command.join(" ")}`, cause })
      }),
      (started) =>
        Effect.gen(function*() {
          yield* Effect.ignore(crictlResult(["rmp", "--force", "--all"], { timeout: Duration.minutes(1) }))
          yield* stopDaemon(started)
        })
    )
    const log = () => {
      try {
        return readFileSync(logFile, "utf8")
      } catch {
        return ""
      }
    }

    const crictlArgs = (args: ReadonlyArray<string>) => [
      path.join(runtimesBin, "crictl"),
      "--runtime-endpoint",
      endpoint,
      "--image-endpoint",
      endpoint,
      "--timeout",
      "600s",
      ...args
    ]
    const quiet = { CRI_CONFIG_FILE: "/dev/null" }
    const crictlResult = (args: ReadonlyArray<string>, runOptions: RunOptions = {}) =>
      runProcess(crictlArgs(args), {
        ...runOptions,
        env: { ...quiet, ...runOptions.env },
        shownAs: ["crictl", ...(runOptions.shownAs ?? args)]
      })
    const crictl = (args: ReadonlyArray<string>, runOptions: RunOptions = {}) =>
      run(crictlArgs(args), {
        ...runOptions,
        env: { ...quiet, ...runOptions.env },
        shownAs: ["crictl", ...(runOptions.shownAs ?? args)]
      })

    const version = yield* pollUntil(
      crictlResult(["version"]).pipe(
        Effect.map((result) => {
          if (result.exitCode !== 0) return undefined
          const field = (name: string) => new RegExp(`^${name}:\\s*(.+)$`, "m").exec(result.stdout)?.[1]?.trim()
          return `${field("RuntimeName")} ${field("RuntimeVersion")}`
        }),
        Effect.orElseSucceed(() => undefined)
      ),
      (answer) => answer !== undefined || child.exitCode !== null,
      {
        every: Duration.millis(200),
        timeout: Duration.seconds(60),
        onTimeout: () => new CriRuntimeError({ message: `${options.kind} did not answer on ${endpoint}:\n${log()}` })
      }
    )
    if (version === undefined) {
      return yield* new CriRuntimeError({ message: `${options.kind} exited (${child.exitCode}):\n${log()}` })
    }

    const trustRegistry = (registry: RegistryAccess) =>
      Effect.gen(function*() {
        if (registry.caFile === undefined) return
        const caFile = registry.caFile
        if (!isCrio) {
          const hostDir = path.join(dir, "certs.d", registry.host)
          yield* fs.makeDirectory(hostDir, { recursive: true })
          yield* fs.writeFileString(path.join(hostDir, "hosts.toml"), containerdHosts(registry))
          return
        }
        // CRI-O (containers/image) reads per-registry CAs from /etc/containers/certs.d/HOST/*.crt, on every pull.
        const hostDir = `/etc/containers/certs.d/${registry.host}`
        yield* Effect.acquireRelease(
          Effect.zipRight(fs.makeDirectory(hostDir, { recursive: true }), fs.copyFile(caFile, `${hostDir}/ca.crt`)),
          () => Effect.ignore(fs.remove(hostDir, { recursive: true }))
        )
      })

    return {
      kind: options.kind,
      version,
      endpoint,
      dir,
      decryptionKeysDir: path.join(dir, "keys"),
      crictl,
      crictlResult,
      trustRegistry,
      log
    } satisfies CriRuntime
  }).pipe(
    Effect.withSpan("CriRuntime.start", { attributes: { kind: options.kind } })
  )
