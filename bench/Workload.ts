import { FileSystem } from "@effect/platform"
import { Duration, Effect, Schedule } from "effect"
import type { LocalCluster } from "../test/harness/Cluster.ts"
import { startBallastPod } from "../test/harness/Cluster.ts"
import * as Podman from "../test/harness/Podman.ts"
import { MiB } from "./Stats.ts"
import { BenchError, exec, failedTo, seconds } from "./Tools.ts"

/** A benchmark pod run by the harness node's container runtime. */
export interface MemoryContainer {
  readonly pod: string
  readonly container: string
  /** Bytes of random data it holds in its writable layer (they become the archive's rootfs-diff.tar). */
  readonly bytes: number
}

/** The container name inside every benchmark pod. */
export const containerInPod = "main"

/**
 * Scoped: a pod on the harness's runtime (CRI-O) whose container writes `mib` MiB of random bytes into its writable
 * layer and then idles. Its checkpoint carries those bytes (rootfs-diff.tar): the archive is as large as the ballast.
 */
export const runMemoryContainer = Effect.fn("Workload.runMemoryContainer")(function*(
  cluster: LocalCluster,
  pod: string,
  mib: number
) {
  const bytes = mib * MiB
  yield* startBallastPod(cluster, { namespace: "default", name: pod, nodeName: cluster.nodes[0]!.nodeName, bytes })
  return { pod, container: containerInPod, bytes } satisfies MemoryContainer
}, Effect.mapError(failedTo("start a benchmark pod")))

/**
 * Scoped: a podman container holding the same ballast in its /dev/shm, for the pipeline that is podman's own
 * (`podman container checkpoint --create-image`): podman cannot checkpoint a CRI-O container.
 */
export const runPodmanContainer = Effect.fn("Workload.runPodmanContainer")(function*(name: string, bytes: number) {
  const image = yield* Podman.ensureBusyboxImage()
  yield* Effect.acquireRelease(
    Podman.podman([
      "run",
      "--detach",
      "--name",
      name,
      "--network",
      "none",
      "--shm-size",
      `${Math.ceil(bytes / MiB) + 16}m`,
      image,
      "sh",
      "-c",
      `trap "exit 0" TERM; head -c ${bytes} /dev/urandom > /dev/shm/ballast && echo > /ready; ` +
      "while true; do sleep 1; done"
    ]),
    () => Effect.ignore(Podman.removeContainer(name))
  )
  yield* Podman.podman(["exec", name, "cat", "/ready"]).pipe(
    Effect.retry(Schedule.spaced(Duration.millis(250))),
    Effect.timeout(Duration.minutes(5))
  )
  return name
}, Effect.mapError(failedTo("start a podman container")))

/** A checkpoint archive as the kubelet gets it from CRI-O: uncompressed tar, container left running. */
export interface Archive {
  readonly path: string
  readonly bytes: number
  /** `sha256:<hex>`, known beforehand for the raw upload. */
  readonly digest: string
  /** Size of rootfs-diff.tar inside the archive. */
  readonly memoryBytes: number
  /** How long CRI-O's CheckpointContainer (`crictl checkpoint --export`) took. */
  readonly checkpointSeconds: number
  /** How long `sha256sum` of the archive took (page cache warm): a floor for anything that hashes it. */
  readonly sha256Seconds: number
}

/** Scoped: CRI-O's checkpoint of a container of a `default` pod into `path`, removed when the scope closes; seconds. */
export const checkpointInto = (cluster: LocalCluster, pod: string, container: string, path: string) =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    Effect.map(
      seconds(Effect.acquireRelease(
        cluster.agent.checkpoint({
          namespace: "default",
          pod,
          container,
          archive: path,
          timeout: Duration.minutes(10)
        }),
        () => Effect.ignore(fs.remove(path, { force: true }))
      )),
      ([checkpointSeconds]) => checkpointSeconds
    ))

/** `sha256:<hex>` of a file, by sha256sum, and how long that took. */
export const fileDigest = (path: string) =>
  Effect.map(seconds(exec("sha256sum", [path])), ([time, sum]) => ({
    digest: `sha256:${sum.stdout.trim().split(/\s+/)[0]}`,
    seconds: time
  }))

/** Scoped: checkpoints `container` into `path` (removed when the scope closes) and checks what the archive holds. */
export const makeArchive = Effect.fn("Workload.makeArchive")(function*(
  cluster: LocalCluster,
  container: MemoryContainer,
  path: string
) {
  const fs = yield* FileSystem.FileSystem
  const checkpointSeconds = yield* checkpointInto(cluster, container.pod, container.container, path)
  const bytes = Number((yield* fs.stat(path)).size)
  const listing = yield* exec("tar", ["-tvf", path, "rootfs-diff.tar"])
  const memoryBytes = Number(listing.stdout.trim().split(/\s+/)[2])
  if (!(memoryBytes >= container.bytes) || bytes < memoryBytes) {
    return yield* new BenchError({
      message: `${path} holds ${memoryBytes} bytes of rootfs changes, expected at least ${container.bytes}`
    })
  }
  const { digest, seconds: sha256Seconds } = yield* fileDigest(path)
  return { path, bytes, digest, memoryBytes, checkpointSeconds, sha256Seconds } satisfies Archive
}, Effect.mapError(failedTo("make a checkpoint archive")))

/** Whether the process `pid` still runs (a benchmark run's leftovers are removed only when it is gone). */
export const ownerAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** Names made by a benchmark process (`bench-<pid>-...`) whose process is gone. */
const orphaned = (names: ReadonlyArray<string>, pattern: RegExp) =>
  names.filter((name) => {
    const pid = Number(pattern.exec(name)?.[1] ?? Number.NaN)
    return Number.isInteger(pid) && pid !== process.pid && !ownerAlive(pid)
  })

const lines = (text: string) => text.split("\n").map((line) => line.trim()).filter((line) => line.length > 0)

/**
 * Removes what an earlier benchmark run that was killed left behind: its containers, checkpoint images, buildah
 * working containers and scratch directories (all carry the pid of their run, which must be gone).
 */
export const sweepLeftovers = Effect.fn("Workload.sweepLeftovers")(function*(workDir: string) {
  const fs = yield* FileSystem.FileSystem
  const containers = lines(yield* Podman.podman(["ps", "--all", "--format", "{{.Names}}"]))
  const images = lines(yield* Podman.podman(["images", "--format", "{{.Repository}}:{{.Tag}}"]))
  const buildahContainers = yield* exec("buildah", ["containers", "--noheading", "--format", "{{.ContainerName}}"])
  const working = lines(buildahContainers.stdout)
  const runs = (yield* fs.exists(workDir)) ? yield* fs.readDirectory(workDir) : []
  const stale = {
    containers: orphaned(containers, /^bench-(\d+)-/),
    images: orphaned(images, /^localhost\/bench-(\d+)-/),
    working: orphaned(working, /^bench-(\d+)-buildah-/),
    runs: orphaned(runs, /^run-(\d+)-/)
  }
  yield* Effect.forEach(stale.containers, (name) => Podman.removeContainer(name), { discard: true })
  yield* Effect.forEach(stale.working, (name) => exec("buildah", ["rm", name]), { discard: true })
  yield* Effect.forEach(stale.images, (name) => Podman.podman(["rmi", "--ignore", name]), { discard: true })
  yield* Effect.forEach(stale.runs, (name) => fs.remove(`${workDir}/${name}`, { recursive: true }), { discard: true })
  return Object.values(stale).reduce((sum, names) => sum + names.length, 0)
}, Effect.mapError(failedTo("remove leftovers of earlier runs")))
