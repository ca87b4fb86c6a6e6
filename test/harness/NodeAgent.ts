import type { CommandExecutor } from "@effect/platform"
import { FileSystem, Path } from "@effect/platform"
import type { PlatformError } from "@effect/platform/Error"
import { Clock, Data, Duration, Effect, Option, Ref, Schedule } from "effect"
import type { Scope } from "effect"
import { closeSync, fstatSync, openSync, readSync } from "node:fs"
import type { ApiServer } from "./ApiServer.ts"
import type { Pod, PodContainer, PodStatus } from "./apiserver/Resources.ts"
import type { CriRuntime } from "./CriRuntime.ts"
import type { PodHandle } from "./PodRuntime.ts"
import type { ProcessError } from "./Process.ts"

/** One pod the agent ran (Kaniko tests look at the executor's image, arguments and node). */
export interface PodRun {
  readonly namespace: string
  readonly pod: string
  readonly image: string | undefined
  readonly args: ReadonlyArray<string>
  readonly nodeName: string | undefined
  /** The first container's exit code once it exited. */
  readonly exitCode?: number
  /** The highest peak RSS (VmHWM) seen of the first container's main process, in bytes. */
  readonly peakRssBytes?: number
  /** The peak of the first container's memory cgroup (RSS and page cache: what its memory limit is held to). */
  readonly peakMemoryBytes?: number
}

export class CheckpointFailure extends Data.TaggedError("CheckpointFailure")<{
  readonly status: 404 | 500
  readonly message: string
}> {}

export interface NodeAgent {
  readonly runtime: CriRuntime
  /** The CRI container ID of a running pod's container, if this agent runs it. */
  readonly containerId: (namespace: string, pod: string, container: string) => Effect.Effect<string | undefined>
  /**
   * The kubelet's checkpoint: CRI CheckpointContainer into `archive` (the container goes on running). A failure leaves
   * no archive behind.
   */
  readonly checkpoint: (options: {
    readonly namespace: string
    readonly pod: string
    readonly container: string
    readonly archive: string
    readonly timeout: Duration.DurationInput
  }) => Effect.Effect<void, CheckpointFailure, FileSystem.FileSystem>
  /** `crictl exec` in a running pod's container; the trimmed stdout. */
  readonly exec: (
    namespace: string,
    pod: string,
    container: string,
    command: ReadonlyArray<string>
  ) => Effect.Effect<string, ProcessError | CheckpointFailure>
  readonly runs: () => Effect.Effect<ReadonlyArray<PodRun>>
  /**
   * From now on a container's memory limit is at most `bytes` (undefined: as its spec says), as a node whose
   * LimitRange or admission squeezed it would run it; the runtime and the kernel enforce it (OOMKilled beyond).
   */
  readonly squeezeMemoryLimits: (bytes: number | undefined) => Effect.Effect<void>
  /** Whether the runtime restored the container from a checkpoint (CRI-O reports it; undefined where it does not). */
  readonly restored: (
    namespace: string,
    pod: string,
    container: string
  ) => Effect.Effect<boolean | undefined, ProcessError | CheckpointFailure>
  /**
   * Runs `effect` with the pod bookkeeping paused (no `crictl ps`, no status, log or memory polls; not nested), so
   * that a benchmark sharing this process measures its own work, not the agent's. Checkpoints and exec still work.
   */
  readonly whileQuiet: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
}

interface Volume {
  readonly name: string
  readonly secret?: {
    readonly secretName: string
    readonly items?: ReadonlyArray<{ readonly key: string; readonly path: string }>
  }
  readonly hostPath?: { readonly path: string }
  readonly emptyDir?: unknown
}

interface VolumeMount {
  readonly name: string
  readonly mountPath: string
  readonly readOnly?: boolean
}

interface ContainerState {
  readonly state: "CONTAINER_CREATED" | "CONTAINER_RUNNING" | "CONTAINER_EXITED" | "CONTAINER_UNKNOWN"
  readonly exitCode: number
  readonly reason?: string
  readonly startedAt: string
  readonly finishedAt: string
}

const pollInterval = Duration.millis(300)
const fallbackLogLines = 80
const fallbackLogBytes = 2048
const maxGraceSeconds = 10

const rfc3339 = (millis: number) => new Date(millis).toISOString().replace(/\.\d{3}Z$/, "Z")
const criTime = (time: string) => rfc3339(Date.parse(time))

const stringArray = (value: unknown): ReadonlyArray<string> =>
  Array.isArray(value) ? value.filter((item): item is string => typeof item === "string") : []

const listOf = <A>(value: unknown): ReadonlyArray<A> => (Array.isArray(value) ? value : []) as ReadonlyArray<A>

const quantityUnits: Readonly<Record<string, number>> = {
  "": 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  Ki: 1024,
  Mi: 1024 ** 2,
  Gi: 1024 ** 3,
  Ti: 1024 ** 4
}

/** A memory quantity (`512Mi`, `2Gi`, `1e9`) in bytes. */
const bytesOf = (quantity: unknown) => {
  const match = typeof quantity === "string" ? /^(\d+(?:\.\d+)?)([KMGT]i?|k)?$/.exec(quantity) : null
  return match === null ? undefined : Math.round(Number(match[1]) * (quantityUnits[match[2] ?? ""] ?? 1))
}

/** The container's memory limit as the kubelet hands it to the CRI (the runtime enforces it: OOMKilled beyond). */
const criResources = (container: PodContainer, squeeze: number | undefined) => {
  const limits = (container["resources"] as { readonly limits?: Record<string, unknown> } | undefined)?.limits
  const declared = bytesOf(limits?.["memory"])
  const memory = declared === undefined || squeeze === undefined ? declared : Math.min(declared, squeeze)
  return memory === undefined ? {} : { resources: { memory_limit_in_bytes: memory } }
}

/** The kubelet's default: Always for `:latest` or untagged images, IfNotPresent otherwise. */
const pullPolicyOf = (container: PodContainer) => {
  const explicit = container["imagePullPolicy"]
  if (typeof explicit === "string") return explicit
  const image = container.image ?? ""
  const tag = /:([^/:@]+)$/.exec(image.split("@")[0]!)?.[1]
  return image.includes("@") || (tag !== undefined && tag !== "latest") ? "IfNotPresent" : "Always"
}

/** `host` of an image reference (the part before the first slash when it looks like a host). */
const registryOf = (image: string) => {
  const first = image.split("/")[0]!
  return image.includes("/") && /[.:]|^localhost$/.test(first) ? first : "docker.io"
}

/** Credentials for `image` from docker config JSON texts (dockerconfigjson secrets). */
const credentialsFor = (image: string, configs: ReadonlyArray<string>) => {
  const host = registryOf(image)
  for (const config of configs) {
    const auths = (JSON.parse(config) as { auths?: Record<string, { auth?: string }> }).auths ?? {}
    const found = Object.entries(auths).find(([key]) => key.replace(/^https?:\/\//, "").replace(/\/.*$/, "") === host)
    if (found?.[1].auth !== undefined) return Buffer.from(found[1].auth, "base64").toString("utf8")
  }
  return undefined
}

/** The bytes of a file from `offset` on (none if it is missing). */
const readFrom = (file: string, offset: number): Buffer => {
  try {
    const fd = openSync(file, "r")
    try {
      const size = fstatSync(fd).size
      const buffer = Buffer.alloc(Math.max(0, size - offset))
      readSync(fd, buffer, 0, buffer.length, offset)
      return buffer
    } finally {
      closeSync(fd)
    }
  } catch {
    return Buffer.alloc(0)
  }
}

/** Parses CRI log lines (`TIME STREAM P|F TEXT`) into the text the container wrote. */
const criLogText = (chunk: string) =>
  chunk.split("\n").filter((line) => line !== "").map((line) => {
    const match = /^\S+ (?:stdout|stderr) ([PF]) ?(.*)$/.exec(line)
    if (match === null) return line + "\n"
    return match[1] === "P" ? match[2]! : match[2]! + "\n"
  }).join("")

/**
 * The kubelet's pod work on one real container runtime, for the nodes `nodes` (several harness nodes may share one
 * runtime): runs each pod the API server binds to one of them through the CRI (crictl), with the kubelet's bind mounts
 * (`/etc/hosts`, the termination log, hostPath, emptyDir and Secret volumes), pulls images with the pod's
 * imagePullSecrets, reports phase and container states (termination message included), copies container output into
 * the pod log, feeds stdin from attach sessions, and removes the containers and sandbox when the pod is deleted.
 * Pods use host networking and a PID namespace per container (no infra container on CRI-O).
 */
export const startNodeAgent = (options: {
  readonly apiServer: ApiServer
  readonly runtime: CriRuntime
  readonly nodes: ReadonlyArray<{ readonly name: string; readonly address: string }>
  readonly dir: string
  /**
   * The node's own registry credentials (docker config JSON), used after the pod's imagePullSecrets, as the kubelet
   * uses `config.json` in its root directory or a credential provider.
   */
  readonly nodeCredentials?: string
}): Effect.Effect<
  NodeAgent,
  PlatformError,
  CommandExecutor.CommandExecutor | FileSystem.FileSystem | Path.Path | Scope.Scope
> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const context = yield* Effect.context<CommandExecutor.CommandExecutor | FileSystem.FileSystem | Path.Path>()
    const { runtime } = options
    const dir = path.resolve(options.dir)
    yield* fs.makeDirectory(dir, { recursive: true })
    const containers = yield* Ref.make<ReadonlyMap<string, string>>(new Map())
    const listing = yield* Ref.make<ReadonlyMap<string, string>>(new Map())
    const memorySqueeze = yield* Ref.make<number | undefined>(undefined)
    const polling = yield* Effect.makeLatch(true)
    yield* Effect.forkScoped(
      polling.await.pipe(
        Effect.zipRight(runtime.crictl(["ps", "--all", "-o", "json"])),
        Effect.flatMap((text) =>
          Ref.set(
            listing,
            new Map(
              ((JSON.parse(text) as { containers?: ReadonlyArray<{ id: string; state: string }> }).containers ?? [])
                .map((container) => [container.id, container.state])
            )
          )
        ),
        Effect.ignore,
        Effect.zipRight(Effect.sleep(pollInterval)),
        Effect.forever,
        Effect.provide(context)
      )
    )
    const runs = yield* Ref.make<ReadonlyArray<PodRun>>([])
    const keyOf = (namespace: string, pod: string, container: string) => `${namespace}/${pod}/${container}`
    const now = Effect.map(Clock.currentTimeMillis, rfc3339)

    const run = (handle: PodHandle) =>
      Effect.scoped(Effect.gen(function*() {
        const pod = handle.pod
        const { name, namespace, uid } = pod.metadata
        const node = options.nodes.find((candidate) => candidate.name === pod.spec.nodeName)!
        const specContainers = pod.spec.containers
        const first = specContainers[0]!
        let peakRssBytes = 0
        let peakMemoryBytes = 0
        const record = (exitCode?: number) =>
          Ref.update(runs, (all) => [
            ...all.filter((entry) => entry.namespace !== namespace || entry.pod !== name),
            {
              namespace,
              pod: name,
              image: first.image,
              args: stringArray(first["args"]),
              nodeName: pod.spec.nodeName,
              ...(exitCode === undefined ? {} : { exitCode }),
              ...(peakRssBytes === 0 ? {} : { peakRssBytes }),
              ...(peakMemoryBytes === 0 ? {} : { peakMemoryBytes })
            }
          ])
        yield* record()
        const waiting = (reason: string, message?: string) =>
          handle.setStatus((current) => ({
            ...current,
            phase: "Pending",
            hostIP: node.address,
            containerStatuses: specContainers.map((container) => ({
              name: container.name,
              image: container.image,
              imageID: "",
              ready: false,
              started: false,
              restartCount: 0,
              state: { waiting: { reason, ...(message === undefined ? {} : { message }) } }
            }))
          }))
        const event = (text: string) => Effect.logDebug(`node agent: ${namespace}/${name}: ${text}`)
        /** The container cannot start: its status says why, and so does a Warning event (as the kubelet's). */
        const failing = (reason: string, message: string) =>
          waiting(reason, message).pipe(Effect.zipRight(handle.report("Warning", "Failed", `Error: ${message}`)))
        yield* waiting("ContainerCreating")

        const podDir = path.join(dir, "pods", uid)
        yield* Effect.acquireRelease(
          fs.makeDirectory(podDir, { recursive: true }),
          () => Effect.ignore(fs.remove(podDir, { recursive: true }))
        )
        yield* fs.writeFileString(
          path.join(podDir, "etc-hosts"),
          `# Kubernetes-managed hosts file (host network).\n127.0.0.1\tlocalhost\n${node.address}\t${name}\n`
        )

        const volumes = listOf<Volume>(pod.spec["volumes"])
        const volumePaths = new Map<string, string>()
        for (const volume of volumes) {
          if (volume.secret !== undefined) {
            const data = yield* handle.secret(volume.secret.secretName)
            if (Option.isNone(data)) {
              // As the kubelet: MountVolume.SetUp fails again and again, the pod stays in ContainerCreating.
              yield* event(`MountVolume.SetUp failed for volume "${volume.name}": secret not found`)
              return yield* Effect.never
            }
            const target = path.join(podDir, "volumes", volume.name)
            yield* fs.makeDirectory(target, { recursive: true })
            const items = volume.secret.items ?? Object.keys(data.value).map((key) => ({ key, path: key }))
            for (const item of items) {
              const value = data.value[item.key]
              if (value !== undefined) yield* fs.writeFileString(path.join(target, item.path), value)
            }
            volumePaths.set(volume.name, target)
          } else if (volume.hostPath !== undefined) {
            if (!(yield* fs.exists(volume.hostPath.path).pipe(Effect.orElseSucceed(() => false)))) {
              yield* event(`MountVolume.SetUp failed for volume "${volume.name}": hostPath missing`)
              return yield* Effect.never
            }
            volumePaths.set(volume.name, volume.hostPath.path)
          } else {
            const target = path.join(podDir, "volumes", volume.name)
            yield* fs.makeDirectory(target, { recursive: true })
            volumePaths.set(volume.name, target)
          }
        }

        const nodeConfigs = options.nodeCredentials === undefined
          ? []
          : [yield* fs.readFileString(options.nodeCredentials)]
        const pullConfigs = yield* Effect.forEach(
          listOf<{ readonly name: string }>(pod.spec["imagePullSecrets"]),
          (secret) =>
            Effect.map(
              handle.secret(secret.name),
              (data) => Option.flatMap(data, (values) => Option.fromNullable(values[".dockerconfigjson"]))
            )
        ).pipe(Effect.map((found) => [...found.flatMap(Option.toArray), ...nodeConfigs]))
        for (const container of specContainers) {
          const image = container.image ?? ""
          const policy = pullPolicyOf(container)
          if (policy === "Never") continue
          if (policy === "IfNotPresent" && (yield* runtime.crictlResult(["inspecti", image])).exitCode === 0) continue
          const creds = credentialsFor(image, pullConfigs)
          yield* runtime.crictl(["pull", ...(creds === undefined ? [] : ["--creds", creds]), image], {
            shownAs: ["pull", image],
            timeout: Duration.minutes(5)
          }).pipe(
            Effect.tapError((error) => failing("ErrImagePull", `failed to pull image "${image}": ${error.message}`)),
            Effect.retry(Schedule.spaced(Duration.seconds(2)))
          )
        }

        const logDir = path.join(podDir, "logs")
        yield* fs.makeDirectory(logDir, { recursive: true })
        const podConfig = path.join(podDir, "pod.json")
        const namespaceOptions = { network: 2, pid: 1 }
        const podLabels = {
          "io.kubernetes.pod.name": name,
          "io.kubernetes.pod.namespace": namespace,
          "io.kubernetes.pod.uid": uid
        }
        yield* fs.writeFileString(
          podConfig,
          JSON.stringify({
            // host network: the kubelet sets no hostname (runc refuses one without a private UTS namespace)
            metadata: { name, namespace, uid, attempt: 0 },
            log_directory: logDir,
            labels: { ...pod.metadata.labels, ...podLabels },
            annotations: pod.metadata.annotations ?? {},
            linux: { security_context: { namespace_options: namespaceOptions } }
          })
        )
        const sandbox = yield* Effect.acquireRelease(
          runtime.crictl(["runp", podConfig], { timeout: Duration.minutes(2) }),
          (id) =>
            Effect.ignore(
              runtime.crictl(["stopp", id]).pipe(Effect.zipRight(runtime.crictl(["rmp", "--force", id])))
            )
        ).pipe(Effect.tapError((error) => failing("CreatePodSandboxError", error.message)))

        const created: Array<{ readonly spec: PodContainer; readonly id: string; readonly terminationLog: string }> = []
        for (const container of specContainers) {
          const terminationLog = path.join(podDir, "containers", container.name, "termination-log")
          yield* fs.makeDirectory(path.dirname(terminationLog), { recursive: true })
          yield* fs.writeFileString(terminationLog, "")
          yield* fs.makeDirectory(path.join(logDir, container.name), { recursive: true })
          const mounts = [
            { container_path: "/etc/hosts", host_path: path.join(podDir, "etc-hosts") },
            {
              container_path: typeof container["terminationMessagePath"] === "string"
                ? container["terminationMessagePath"]
                : "/dev/termination-log",
              host_path: terminationLog
            },
            ...listOf<VolumeMount>(container["volumeMounts"]).flatMap((mount) => {
              const hostPath = volumePaths.get(mount.name)
              return hostPath === undefined ? [] : [{
                container_path: mount.mountPath,
                host_path: hostPath,
                readonly: mount.readOnly === true
              }]
            })
          ]
          const containerConfig = path.join(podDir, "containers", container.name, "container.json")
          yield* fs.writeFileString(
            containerConfig,
            JSON.stringify({
              metadata: { name: container.name, attempt: 0 },
              image: { image: container.image },
              command: stringArray(container["command"]),
              args: stringArray(container["args"]),
              ...(typeof container["workingDir"] === "string" ? { working_dir: container["workingDir"] } : {}),
              envs: listOf<{ readonly name: string; readonly value?: string }>(container["env"])
                .filter((env) => typeof env.value === "string")
                .map((env) => ({ key: env.name, value: env.value })),
              mounts,
              labels: { ...podLabels, "io.kubernetes.container.name": container.name },
              log_path: `${container.name}/0.log`,
              stdin: container["stdin"] === true,
              stdin_once: container["stdinOnce"] === true,
              linux: {
                security_context: { namespace_options: namespaceOptions },
                ...criResources(container, yield* Ref.get(memorySqueeze))
              }
            })
          )
          const id = yield* Effect.acquireRelease(
            runtime.crictl(["create", "--no-pull", sandbox, containerConfig, podConfig], {
              timeout: Duration.minutes(5)
            }),
            (id) =>
              Effect.gen(function*() {
                yield* Ref.update(containers, (all) => {
                  const next = new Map(all)
                  next.delete(keyOf(namespace, name, container.name))
                  return next
                })
                const grace = Math.min(yield* handle.graceSeconds, maxGraceSeconds)
                yield* Effect.ignore(runtime.crictl(["stop", "--timeout", String(grace), id]))
                yield* Effect.ignore(runtime.crictl(["rm", "--force", id]))
              })
          ).pipe(Effect.tapError((error) => failing("CreateContainerError", error.message)))
          yield* runtime.crictl(["start", id]).pipe(
            Effect.tapError((error) => failing("RunContainerError", error.message))
          )
          yield* handle.report("Normal", "Started", `Started container ${container.name}`)
          yield* Ref.update(containers, (all) => new Map(all).set(keyOf(namespace, name, container.name), id))
          created.push({ spec: container, id, terminationLog })
          if (container["stdin"] === true) {
            yield* Effect.forkScoped(
              runtime.crictlResult(["attach", "--stdin", id], {
                stdin: handle.stdin(container.name),
                shownAs: ["attach", id]
              }).pipe(
                Effect.tap((result) =>
                  result.exitCode === 0
                    ? Effect.void
                    : Effect.logWarning(`node agent: attach to ${name}/${container.name} failed: ${result.stderr}`)
                ),
                Effect.tapError((error) => Effect.logWarning(`node agent: attach failed: ${error.message}`))
              )
            )
          }
        }

        // Container output into the pod log, as the kubelet serves it from the CRI log files (complete lines only).
        const logOffsets = new Map<string, number>()
        const copyLogs = Effect.forEach(created, ({ spec }) =>
          Effect.gen(function*() {
            const offset = logOffsets.get(spec.name) ?? 0
            const fresh = readFrom(path.join(logDir, spec.name, "0.log"), offset)
            const complete = fresh.lastIndexOf(10)
            if (complete < 0) return
            logOffsets.set(spec.name, offset + complete + 1)
            yield* handle.log(spec.name, criLogText(fresh.subarray(0, complete).toString()))
          }), { discard: true })

        const inspect = (id: string) =>
          runtime.crictl(["inspect", "-o", "json", id]).pipe(
            Effect.map((text) => JSON.parse(text) as { status: ContainerState; info?: { pid?: number } })
          )
        /** What the kubelet's memory accounting would show: the main process's peak RSS, read while it runs. */
        const trackPeak = (pid: number | undefined) =>
          pid === undefined || pid <= 0 ? Effect.void : Effect.gen(function*() {
            const status = yield* fs.readFileString(`/proc/${pid}/status`)
            peakRssBytes = Math.max(peakRssBytes, Number(/^VmHWM:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) * 1024)
            const cgroup = /^\d+:memory:(.+)$/m.exec(yield* fs.readFileString(`/proc/${pid}/cgroup`))?.[1]
            if (cgroup === undefined) return
            const usage = yield* fs.readFileString(`/sys/fs/cgroup/memory${cgroup}/memory.max_usage_in_bytes`)
            peakMemoryBytes = Math.max(peakMemoryBytes, Number(usage.trim()))
          }).pipe(Effect.ignore)
        const restartAlways = (pod.spec["restartPolicy"] ?? "Always") === "Always"
        const startTime = yield* now
        let lastStates = ""
        // Inspected once when started and once when the runtime lists them as exited; polled through the agent's
        // shared listing in between (one crictl process for all pods, not one per container and tick).
        const inspected = yield* Effect.forEach(created, ({ id }) => inspect(id))
        while (true) {
          yield* polling.await
          const listed = yield* Ref.get(listing)
          for (const [i, { id }] of created.entries()) {
            if (listed.get(id) === "CONTAINER_EXITED" && inspected[i]!.status.state !== "CONTAINER_EXITED") {
              inspected[i] = yield* inspect(id)
            }
          }
          const states = inspected.map((answer) => answer.status)
          yield* trackPeak(inspected[0]?.info?.pid)
          yield* copyLogs
          const statuses = yield* Effect.forEach(created, ({ spec, id, terminationLog }, i) =>
            Effect.gen(function*() {
              const state = states[i]!
              const base = {
                name: spec.name,
                image: spec.image,
                imageID: "",
                containerID: `${runtime.kind === "containerd" ? "containerd" : "cri-o"}://${id}`,
                restartCount: 0
              }
              if (state.state !== "CONTAINER_EXITED") {
                return {
                  ...base,
                  ready: true,
                  started: true,
                  state: { running: { startedAt: criTime(state.startedAt) } }
                }
              }
              const written = (yield* fs.readFileString(terminationLog).pipe(Effect.orElseSucceed(() => ""))).trim()
              const message = written !== ""
                ? written
                : spec["terminationMessagePolicy"] === "FallbackToLogsOnError" && state.exitCode !== 0
                ? (yield* options.apiServer.containerLog(namespace, name, spec.name)).split("\n")
                  .filter((line) => line !== "").slice(-fallbackLogLines).join("\n").slice(-fallbackLogBytes)
                : undefined
              return {
                ...base,
                ready: false,
                started: false,
                state: {
                  terminated: {
                    exitCode: state.exitCode,
                    reason: state.reason !== undefined && state.reason !== ""
                      ? state.reason
                      : state.exitCode === 0
                      ? "Completed"
                      : "Error",
                    startedAt: criTime(state.startedAt),
                    finishedAt: criTime(state.finishedAt),
                    ...(message === undefined || message === "" ? {} : { message })
                  }
                }
              }
            }))
          const allExited = states.every((state) => state.state === "CONTAINER_EXITED")
          const phase: PodStatus["phase"] = !allExited || restartAlways
            ? "Running"
            : states.every((state) => state.exitCode === 0)
            ? "Succeeded"
            : "Failed"
          const summary = JSON.stringify([phase, statuses])
          if (summary !== lastStates) {
            lastStates = summary
            yield* handle.setStatus((current) => ({
              ...current,
              phase,
              hostIP: node.address,
              hostIPs: [{ ip: node.address }],
              podIP: node.address,
              podIPs: [{ ip: node.address }],
              startTime,
              containerStatuses: statuses
            }))
          }
          if (allExited && !restartAlways) {
            yield* record(states[0]!.exitCode)
            return
          }
          yield* Effect.sleep(pollInterval)
        }
      })).pipe(
        Effect.catchAllCause((cause) => Effect.logWarning("node agent: pod run failed", cause)),
        Effect.provide(context)
      )

    yield* Effect.acquireRelease(
      options.apiServer.setPodRunner({
        accepts: (pod: Pod) => options.nodes.some((node) => node.name === pod.spec.nodeName),
        run
      }),
      () => options.apiServer.setPodRunner(undefined)
    )

    const containerId = (namespace: string, pod: string, container: string) =>
      Effect.map(Ref.get(containers), (all) => all.get(keyOf(namespace, pod, container)))

    const requireContainer = (namespace: string, pod: string, container: string) =>
      Effect.flatMap(containerId(namespace, pod, container), (id) =>
        id === undefined
          ? Effect.fail(
            new CheckpointFailure({ status: 404, message: `container ${namespace}/${pod}/${container} not found` })
          )
          : Effect.succeed(id))

    const checkpoint: NodeAgent["checkpoint"] = (request) =>
      Effect.gen(function*() {
        const id = yield* requireContainer(request.namespace, request.pod, request.container)
        const result = yield* runtime.crictlResult(["checkpoint", `--export=${request.archive}`, id], {
          timeout: request.timeout
        }).pipe(
          Effect.catchTag("ProcessError", (error) =>
            Effect.succeed({
              exitCode: -1,
              stdout: "",
              stderr: error.timedOut
                ? "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
                : error.message
            })),
          Effect.provide(context)
        )
        if (result.exitCode !== 0) {
          yield* Effect.ignore(fs.remove(request.archive, { force: true }))
          const reason = result.stderr.split("\n").filter((line) => line.trim() !== "").at(-1) ?? ""
          return yield* new CheckpointFailure({
            status: 500,
            message: `checkpointing of ${request.namespace}/${request.pod}/${request.container} failed (${
              reason.replace(/^.*msg="(.*)"$/, "$1")
            })`
          })
        }
      })

    const exec: NodeAgent["exec"] = (namespace, pod, container, command) =>
      Effect.flatMap(
        requireContainer(namespace, pod, container),
        (id) => runtime.crictl(["exec", id, ...command], { timeout: Duration.seconds(30) })
      ).pipe(Effect.provide(context))

    const restored: NodeAgent["restored"] = (namespace, pod, container) =>
      Effect.flatMap(requireContainer(namespace, pod, container), (id) =>
        runtime.crictl(["inspect", "-o", "json", id]).pipe(
          Effect.map((text) =>
            (JSON.parse(text) as { info?: { restored?: boolean } }).info?.restored
          )
        )).pipe(Effect.provide(context))

    return {
      runtime,
      containerId,
      checkpoint,
      exec,
      restored,
      squeezeMemoryLimits: (bytes) => Ref.set(memorySqueeze, bytes),
      runs: () => Ref.get(runs),
      whileQuiet: (effect) => Effect.acquireUseRelease(polling.close, () => effect, () => polling.open)
    } satisfies NodeAgent
  })
