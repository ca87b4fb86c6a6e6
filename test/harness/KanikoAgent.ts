import { Command, CommandExecutor, FileSystem, Path } from "@effect/platform"
import type { PlatformError } from "@effect/platform/Error"
import { Clock, Data, Effect, Option, Ref, Stream } from "effect"
import type { Scope } from "effect"
import type { ApiServer, Pod, PodContainer, PodStatus } from "./ApiServer.ts"
import type { PodHandle } from "./PodRuntime.ts"
import type { TestRegistry } from "./Registry.ts"

/**
 * Misbehaviour of the node agent's Kaniko pods: stay Pending (never scheduled), or run without ever finishing.
 */
export type KanikoFault = "pending" | "hang" | null

/** One Kaniko pod the agent ran. */
export interface KanikoRun {
  readonly pod: string
  readonly image: string | undefined
  readonly args: ReadonlyArray<string>
  readonly nodeName: string | undefined
  /** undefined while it runs (or if it never started). */
  readonly exitCode?: number
}

export interface KanikoAgent {
  readonly setFault: (fault: KanikoFault) => Effect.Effect<void>
  readonly runs: () => Effect.Effect<ReadonlyArray<KanikoRun>>
}

class KanikoFailure extends Data.TaggedError("KanikoFailure")<{ readonly message: string }> {}

/** Images the agent runs as a Kaniko executor: the maintained fork and the archived upstream. */
export const isKanikoImage = (image: string | undefined) =>
  image !== undefined && /(^|\/)kaniko(:|@|$)|kaniko-project\/executor/.test(image)

/** Executor flags as cobra reads them: `--flag=value` or `--flag value`, repeatable. */
export const parseExecutorArgs = (args: ReadonlyArray<string>): ReadonlyMap<string, ReadonlyArray<string>> => {
  const flags = new Map<string, Array<string>>()
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (!arg.startsWith("--")) continue
    const equals = arg.indexOf("=")
    const next = args[i + 1]
    const [name, value] = equals > 0
      ? [arg.slice(2, equals), arg.slice(equals + 1)]
      : next !== undefined && !next.startsWith("--")
      ? [arg.slice(2), args[++i]!]
      : [arg.slice(2), "true"]
    flags.set(name, [...(flags.get(name) ?? []), value])
  }
  return flags
}

interface Volume {
  readonly name: string
  readonly secret?: {
    readonly secretName: string
    readonly items?: ReadonlyArray<{ readonly key: string; readonly path: string }>
  }
  readonly hostPath?: { readonly path: string }
}

interface MountedSecret {
  readonly volume: Volume
  readonly data: Option.Option<Readonly<Record<string, string>>>
}

interface VolumeMount {
  readonly name: string
  readonly mountPath: string
}

const terminationLog = "/dev/termination-log"

/** Runs a command, handing every output line (stdout and stderr) to `onLine`; answers its exit code. */
const runCommand = (command: Command.Command, onLine: (line: string) => Effect.Effect<void>) =>
  Effect.scoped(Effect.gen(function*() {
    const process = yield* Command.start(command)
    const forward = (stream: Stream.Stream<Uint8Array, PlatformError>) =>
      stream.pipe(Stream.decodeText(), Stream.splitLines, Stream.runForEach(onLine), Effect.ignore)
    const [, , exitCode] = yield* Effect.all([forward(process.stdout), forward(process.stderr), process.exitCode], {
      concurrency: "unbounded"
    })
    return exitCode
  }))

const buildahCommand = (work: string, args: ReadonlyArray<string>) =>
  Command.make("buildah", "--root", `${work}/storage`, "--runroot", `${work}/run`, "--storage-driver", "vfs", ...args)
    .pipe(Command.env({ PODMAN_IGNORE_CGROUPSV1_WARNING: "1", BUILDAH_ISOLATION: "chroot" }))
const fallbackLogLines = 80
const fallbackLogBytes = 2048

/**
 * The node agent's Kaniko executor: runs pods whose image names a Kaniko executor with buildah, honouring
 * `--context` (tar://stdin from pod attach, or dir://PATH inside a hostPath volume), `--dockerfile`, `--destination`,
 * `--annotation`, `--image-format` and `--digest-file` (/dev/termination-log becomes the termination message), with
 * the docker config of the mounted secret. Like the maintained fork, base-image annotations are not copied (buildah
 * 1.39 does not either). Each build has its own buildah storage under `dir`, removed afterwards.
 */
export const startKanikoAgent = (options: {
  readonly apiServer: ApiServer
  readonly registry: Pick<TestRegistry, "certDir">
  readonly dir: string
}): Effect.Effect<
  KanikoAgent,
  PlatformError,
  CommandExecutor.CommandExecutor | FileSystem.FileSystem | Path.Path | Scope.Scope
> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const executor = yield* CommandExecutor.CommandExecutor
    yield* fs.makeDirectory(options.dir, { recursive: true })
    const fault = yield* Ref.make<KanikoFault>(null)
    const runs = yield* Ref.make<ReadonlyArray<KanikoRun>>([])
    const timestamp = Effect.map(
      Clock.currentTimeMillis,
      (millis) => new Date(millis).toISOString().replace(/\.\d{3}Z$/, "Z")
    )

    const run = (handle: PodHandle) =>
      Effect.gen(function*() {
        const pod = handle.pod
        const container = pod.spec.containers[0]!
        const name = container.name
        const args = Array.isArray(container["args"]) ? (container["args"] as ReadonlyArray<string>) : []
        const record = (exitCode?: number) =>
          Ref.update(runs, (all) => [...all.filter((entry) => entry.pod !== pod.metadata.name), {
            pod: pod.metadata.name,
            image: container.image,
            args,
            nodeName: pod.spec.nodeName,
            ...(exitCode === undefined ? {} : { exitCode })
          }])
        const log = (line: string) => handle.log(name, `${line}\n`)
        const status = (
          phase: PodStatus["phase"],
          state: Record<string, unknown>,
          extra: Record<string, unknown> = {}
        ) =>
          handle.setStatus((current) => ({
            ...current,
            phase,
            ...extra,
            containerStatuses: [{
              name,
              image: container.image,
              imageID: "",
              ready: phase === "Running",
              started: phase === "Running",
              restartCount: 0,
              state
            }]
          }))
        const waiting = (reason: string, message?: string) =>
          status("Pending", { waiting: { reason, ...(message === undefined ? {} : { message }) } })

        yield* record()
        yield* waiting("ContainerCreating")
        const volumes = (Array.isArray(pod.spec["volumes"]) ? pod.spec["volumes"] : []) as ReadonlyArray<Volume>
        const mounts = (Array.isArray(container["volumeMounts"]) ? container["volumeMounts"] : []) as ReadonlyArray<
          VolumeMount
        >
        const secrets = yield* Effect.forEach(volumes.filter((volume) => volume.secret !== undefined), (volume) =>
          Effect.map(handle.secret(volume.secret!.secretName), (data) => ({ volume, data })))
        const missing = secrets.find(({ data }) => Option.isNone(data))
        if (missing !== undefined) {
          // As the kubelet: MountVolume.SetUp fails again and again, the pod stays in ContainerCreating.
          yield* log(`MountVolume.SetUp failed for volume "${missing.volume.name}": secret not found`)
          return yield* Effect.never
        }
        for (const volume of volumes) {
          const hostPath = volume.hostPath?.path
          if (hostPath !== undefined && !(yield* fs.exists(hostPath).pipe(Effect.orElseSucceed(() => false)))) {
            return yield* Effect.never
          }
        }
        if ((yield* Ref.get(fault)) === "pending") return yield* Effect.never
        const startedAt = yield* timestamp
        yield* status("Running", { running: { startedAt } }, { startTime: startedAt, hostIP: "127.0.0.2" })
        if ((yield* Ref.get(fault)) === "hang") {
          yield* log("INFO[0000] waiting forever (injected fault)")
          yield* Stream.runDrain(handle.stdin(name))
          return yield* Effect.never
        }

        const outcome = yield* Effect.either(execute({ handle, container, args, volumes, mounts, secrets, log }))
        const finishedAt = yield* timestamp
        const exitCode = outcome._tag === "Right" ? 0 : 1
        if (outcome._tag === "Left") yield* log(`error building image: ${outcome.left.message}`)
        const fullLog = yield* options.apiServer.containerLog(pod.metadata.namespace, pod.metadata.name, name)
        const lines = fullLog.split("\n").filter((line) => line !== "").slice(-fallbackLogLines).join("\n")
        const message = outcome._tag === "Right"
          ? Option.getOrUndefined(outcome.right)
          : container["terminationMessagePolicy"] === "FallbackToLogsOnError"
          ? lines.slice(-fallbackLogBytes)
          : undefined
        yield* status(exitCode === 0 ? "Succeeded" : "Failed", {
          terminated: {
            exitCode,
            reason: exitCode === 0 ? "Completed" : "Error",
            startedAt,
            finishedAt,
            ...(message === undefined ? {} : { message })
          }
        })
        yield* record(exitCode)
      }).pipe(
        Effect.catchAllCause((cause) => Effect.logWarning("Kaniko agent failed", cause)),
        Effect.provideService(CommandExecutor.CommandExecutor, executor),
        Effect.provideService(FileSystem.FileSystem, fs),
        Effect.provideService(Path.Path, path)
      )

    /** What the executor does; succeeds with the termination message (the digest, if --digest-file asks for it). */
    const execute = (build: {
      readonly handle: PodHandle
      readonly container: PodContainer
      readonly args: ReadonlyArray<string>
      readonly volumes: ReadonlyArray<Volume>
      readonly mounts: ReadonlyArray<VolumeMount>
      readonly secrets: ReadonlyArray<MountedSecret>
      readonly log: (line: string) => Effect.Effect<void>
    }) =>
      Effect.scoped(Effect.gen(function*() {
        const { log } = build
        const flags = parseExecutorArgs(build.args)
        const one = (flag: string, fallback?: string) => flags.get(flag)?.at(-1) ?? fallback
        const fail = (message: string) => Effect.fail(new KanikoFailure({ message }))
        const work = yield* fs.makeTempDirectoryScoped({ directory: options.dir, prefix: "kaniko-build-" })

        const dockerConfigMount = build.mounts.find((mount) => mount.mountPath.replace(/\/$/, "") === "/kaniko/.docker")
        const dockerConfig = build.secrets.find(({ volume }) => volume.name === dockerConfigMount?.name)
        const authFile = path.join(work, "config.json")
        if (dockerConfig !== undefined && Option.isSome(dockerConfig.data)) {
          const items = dockerConfig.volume.secret?.items
          const key = items === undefined ? "config.json" : items.find((item) => item.path === "config.json")?.key
          const json = key === undefined ? undefined : dockerConfig.data.value[key]
          yield* fs.writeFileString(authFile, json ?? "{\"auths\":{}}")
        } else {
          yield* fs.writeFileString(authFile, "{\"auths\":{}}")
        }

        const context = one("context", "dir:///workspace/")!
        let contextDir: string
        if (context === "tar://stdin") {
          if (build.container["stdin"] !== true) {
            return yield* fail("no data found.. don't forget to add the '--interactive, -i' flag")
          }
          contextDir = path.join(work, "buildcontext")
          yield* fs.makeDirectory(contextDir)
          yield* log("INFO[0000] To simulate EOF and exit, press 'Ctrl+D'")
          const untar = Command.make("tar", "-xzf", "-", "-C", contextDir).pipe(
            Command.stdin(build.handle.stdin(build.container.name))
          )
          if ((yield* runCommand(untar, log)) !== 0) return yield* fail("unpacking the build context from stdin failed")
        } else if (context.startsWith("dir://")) {
          const inside = context.slice("dir://".length)
          const mount = build.mounts.find((candidate) =>
            inside === candidate.mountPath || inside.startsWith(`${candidate.mountPath.replace(/\/$/, "")}/`)
          )
          const hostPath = build.volumes.find((volume) => volume.name === mount?.name)?.hostPath?.path
          if (mount === undefined || hostPath === undefined) {
            return yield* fail(`context directory ${inside} does not exist`)
          }
          contextDir = path.join(hostPath, inside.slice(mount.mountPath.length))
        } else {
          return yield* fail(`unsupported build context ${context}`)
        }

        const dockerfile = one("dockerfile", "Dockerfile")!
        const dockerfilePath = path.isAbsolute(dockerfile) ? dockerfile : path.join(contextDir, dockerfile)
        const destinations = flags.get("destination") ?? []
        if (destinations.length === 0) return yield* fail("you must provide --destination, or use --no-push")
        const format = one("image-format", "oci")!
        if (format !== "oci" && format !== "docker") return yield* fail(`invalid --image-format ${format}`)
        const annotations = flags.get("annotation") ?? []

        const buildah = (args: ReadonlyArray<string>) =>
          Effect.flatMap(
            runCommand(buildahCommand(work, args), log),
            (exitCode) => exitCode === 0 ? Effect.void : fail(`buildah ${args[0]} exited with ${exitCode}`)
          )

        yield* log(`INFO[0000] Building ${destinations[0]} from ${dockerfile} (${format} image)`)
        const registryAccess = ["--authfile", authFile, "--cert-dir", options.registry.certDir, "--tls-verify=true"]
        const built = "localhost/kaniko-build:latest"
        const buildArgs = ["--format", format, ...registryAccess, "--file", dockerfilePath, "--tag", built, contextDir]
        yield* buildah(["build", ...buildArgs])
        // buildah copies the base image's annotations; the executor does not: only --annotation ones are kept.
        const container = "kaniko-build"
        yield* buildah(["from", "--quiet", "--name", container, built])
        yield* buildah([
          "config",
          "--annotation",
          "-",
          ...annotations.flatMap((annotation) => ["--annotation", annotation]),
          container
        ])
        yield* buildah(["commit", "--quiet", "--format", format, container, destinations[0]!])
        const digestFile = path.join(work, "digest")
        for (const destination of destinations) {
          yield* log(`INFO[0001] Pushing image to ${destination}`)
          const target = `docker://${destination}`
          yield* buildah(["push", ...registryAccess, "--digestfile", digestFile, destinations[0]!, target])
        }
        const digest = (yield* fs.readFileString(digestFile)).trim()
        yield* log(`INFO[0002] Pushed ${destinations[0]}@${digest}`)
        return one("digest-file") === terminationLog ? Option.some(digest) : Option.none<string>()
      })).pipe(
        Effect.catchTags({
          SystemError: (error) => Effect.fail(new KanikoFailure({ message: error.message })),
          BadArgument: (error) => Effect.fail(new KanikoFailure({ message: error.message }))
        })
      )

    yield* Effect.acquireRelease(
      options.apiServer.setPodRunner({ accepts: (pod: Pod) => isKanikoImage(pod.spec.containers[0]?.image), run }),
      () => options.apiServer.setPodRunner(undefined)
    )
    return {
      setFault: (next) => Ref.set(fault, next),
      runs: () => Ref.get(runs)
    } satisfies KanikoAgent
  })

/** Annotations of the checkpoint base image, as the seed's base image had them (scratch + annotations). */
export const checkpointBaseAnnotations: Readonly<Record<string, string>> = {
  "io.kubernetes.cri-o.annotations.checkpoint.name": "checkpoint-base",
  "org.opencontainers.image.title": "checkpoint-base"
}

/**
 * Builds the checkpoint base image the way the seed built its own (an empty image from scratch with the checkpoint
 * annotations) and pushes it to the test registry as `REGISTRY/checkpoint-base:1.0.0`.
 */
export const pushCheckpointBaseImage = (options: {
  readonly registry: Pick<TestRegistry, "host" | "authFile" | "certDir">
  readonly dir: string
}) =>
  Effect.scoped(Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    yield* fs.makeDirectory(options.dir, { recursive: true })
    const work = yield* fs.makeTempDirectoryScoped({ directory: options.dir, prefix: "base-image-" })
    const image = `${options.registry.host}/checkpoint-base:1.0.0`
    const buildah = (...args: ReadonlyArray<string>) =>
      Effect.gen(function*() {
        const output: Array<string> = []
        const exitCode = yield* runCommand(buildahCommand(work, args), (line) => Effect.sync(() => output.push(line)))
        if (exitCode !== 0) {
          return yield* new KanikoFailure({ message: `buildah ${args.join(" ")} failed:\n${output.join("\n")}` })
        }
        return output.at(-1)?.trim() ?? ""
      })
    const container = yield* buildah("from", "scratch")
    yield* buildah(
      "config",
      ...Object.entries(checkpointBaseAnnotations).flatMap(([key, value]) => ["--annotation", `${key}=${value}`]),
      container
    )
    yield* buildah("commit", "--format", "oci", container, image)
    yield* buildah(
      "push",
      "--authfile",
      options.registry.authFile,
      "--cert-dir",
      options.registry.certDir,
      "--tls-verify=true",
      image,
      `docker://${image}`
    )
    return image
  }))
