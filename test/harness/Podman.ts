import { Command, FileSystem, Path } from "@effect/platform"
import type { CommandExecutor } from "@effect/platform"
import type { PlatformError } from "@effect/platform/Error"
import { Data, Duration, Effect, Schedule } from "effect"
import type { Scope } from "effect"
import { runcForRuntimes } from "./Criu.ts"
import { pollUntil, runProcess } from "./Process.ts"

/** The tiny image every harness container runs: busybox-static plus a few applet links. */
export const busyboxImage = "localhost/busybox:test"

export class PodmanError extends Data.TaggedError("PodmanError")<{
  readonly message: string
  readonly args: ReadonlyArray<string>
  readonly exitCode?: number
  readonly stderr: string
  readonly timedOut: boolean
  readonly cause?: unknown
}> {}

export interface PodmanResult {
  readonly exitCode: number
  readonly stdout: string
  readonly stderr: string
}

type Executor = CommandExecutor.CommandExecutor

const redacted = (args: ReadonlyArray<string>) =>
  args.map((arg, index) => index > 0 && args[index - 1] === "--creds" ? "<redacted>" : arg)

const failure = (
  args: ReadonlyArray<string>,
  details: {
    readonly exitCode?: number
    readonly stderr: string
    readonly timedOut?: boolean
    readonly cause?: unknown
  }
) =>
  new PodmanError({
    message: details.timedOut === true
      ? `podman ${redacted(args).join(" ")} timed out`
      : `podman ${redacted(args).join(" ")} failed${
        details.exitCode === undefined ? "" : ` (exit ${details.exitCode})`
      }: ${details.stderr.trim()}`,
    args: redacted(args),
    stderr: details.stderr,
    timedOut: details.timedOut ?? false,
    ...(details.exitCode === undefined ? {} : { exitCode: details.exitCode }),
    ...(details.cause === undefined ? {} : { cause: details.cause })
  })

/**
 * Runs `podman --runtime runc ARGS` and reports its exit code and output without judging them. With a timeout the whole
 * process group (podman, runc, criu) is killed when it is exceeded and the result is a `timedOut` PodmanError.
 */
export const podmanResult = (
  args: ReadonlyArray<string>,
  options?: { readonly timeout?: Duration.DurationInput }
): Effect.Effect<PodmanResult, PodmanError, Executor> =>
  Effect.sync(runcForRuntimes).pipe(
    Effect.flatMap(({ podmanEnv }) =>
      runProcess(["podman", "--runtime", "runc", ...args], {
        env: { PODMAN_IGNORE_CGROUPSV1_WARNING: "1", ...podmanEnv },
        shownAs: ["podman", ...redacted(args)],
        ...(options?.timeout === undefined ? {} : { timeout: options.timeout })
      })
    ),
    Effect.mapError((error) =>
      failure(args, {
        stderr: error.stderr,
        timedOut: error.timedOut,
        ...(error.cause === undefined ? {} : { cause: error.cause })
      })
    ),
    Effect.withSpan("Podman.run", { attributes: { args: redacted(args) } })
  )

/** Runs `podman --runtime runc ARGS`; fails unless it exits with 0; succeeds with the trimmed stdout. */
export const podman = (
  args: ReadonlyArray<string>,
  options?: { readonly timeout?: Duration.DurationInput }
): Effect.Effect<string, PodmanError, Executor> =>
  Effect.flatMap(podmanResult(args, options), (result) =>
    result.exitCode === 0
      ? Effect.succeed(result.stdout.trim())
      : Effect.fail(failure(args, { exitCode: result.exitCode, stderr: result.stderr })))

const appletLinks = ["sh", "sleep", "echo", "cat", "ls", "mkdir", "rm", "mv", "true", "false", "test", "kill", "ps"]

/**
 * Builds `localhost/busybox:test` from busybox-static unless it is present (other harness users share the image, so an
 * existing one is never replaced: restores need the very rootfs image their checkpoint was taken from).
 */
export const ensureBusyboxImage = Effect.fn("Podman.ensureBusyboxImage")(function*() {
  const exists = yield* podmanResult(["image", "exists", busyboxImage])
  if (exists.exitCode === 0) return busyboxImage
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  yield* Effect.scoped(Effect.gen(function*() {
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "busybox-image-" })
    const bin = path.join(dir, "rootfs", "bin")
    yield* fs.makeDirectory(bin, { recursive: true })
    yield* fs.copyFile("/bin/busybox", path.join(bin, "busybox"))
    yield* fs.chmod(path.join(bin, "busybox"), 0o755)
    yield* Effect.forEach(appletLinks, (applet) => fs.symlink("busybox", path.join(bin, applet)), { discard: true })
    const tarball = path.join(dir, "rootfs.tar")
    yield* Command.make("tar", "-C", path.join(dir, "rootfs"), "-cf", tarball, ".").pipe(Command.exitCode)
    // Serialized with flock so that concurrent test runs do not import (and retag) the image twice.
    const result = yield* Command.make(
      "flock",
      "/run/lock/checkpointer-busybox-image.lock",
      "sh",
      "-c",
      "podman image exists \"$1\" || podman import \"$2\" \"$1\"",
      "sh",
      busyboxImage,
      tarball
    ).pipe(Command.env({ PODMAN_IGNORE_CGROUPSV1_WARNING: "1" }), Command.exitCode)
    if (result !== 0) {
      return yield* failure(["import", tarball, busyboxImage], { exitCode: result, stderr: "podman import failed" })
    }
  }))
  return busyboxImage
})

/** `podman rm -f` that does not mind a missing container. */
export const removeContainer = (name: string, options?: { readonly stopTimeoutSeconds?: number }) =>
  podman(["rm", "--force", "--ignore", "--time", String(options?.stopTimeoutSeconds ?? 0), name]).pipe(Effect.asVoid)

export interface RunningContainer {
  readonly name: string
  readonly id: string
}

/** Scoped `podman run -d`: the container is removed when the scope closes. */
export const runContainer = (options: {
  readonly name: string
  readonly image?: string
  readonly command: ReadonlyArray<string>
  readonly labels?: Readonly<Record<string, string>>
}): Effect.Effect<RunningContainer, PodmanError, Executor | Scope.Scope> =>
  Effect.acquireRelease(
    Effect.map(
      podman([
        "run",
        "--detach",
        "--name",
        options.name,
        "--network",
        "none",
        ...Object.entries(options.labels ?? {}).flatMap(([key, value]) => ["--label", `${key}=${value}`]),
        options.image ?? busyboxImage,
        ...options.command
      ]),
      (id) => ({ name: options.name, id })
    ),
    (container) => Effect.ignore(removeContainer(container.name))
  )

/**
 * The counter: increments every 0.2 s, writes the value to /count and to stdout, and exits on SIGTERM (a container's
 * PID 1 gets no default signal handling, so without the trap every graceful stop would wait for SIGKILL). /count is
 * rewritten in place at a fixed width (`1<>`: no truncation), so that its size never changes: a checkpoint that
 * froze the shell between `>`'s truncation and the write recorded the open file at size 0, and the runtime, which
 * exports the rootfs changes after the container went on running, stored it with the value, so that CRIU refused
 * the restore ("File count has bad size 2 (expect 0)"; seen once in CI).
 */
export const counterScript = "trap \"exit 0\" TERM; i=0; printf '%08d\\n' 0 > /count; " +
  "while true; do i=$((i+1)); printf '%08d\\n' $i 1<>/count; echo $i; sleep 0.2; done"

const parseCount = (args: ReadonlyArray<string>, text: string) => {
  const value = Number.parseInt(text.trim(), 10)
  return Number.isNaN(value)
    ? Effect.fail(failure(args, { stderr: `not a counter value: ${JSON.stringify(text)}` }))
    : Effect.succeed(value)
}

/** The value the counter in the container last wrote to /count (retried while the file is being rewritten). */
export const counterValue = (name: string): Effect.Effect<number, PodmanError, Executor> => {
  const args = ["exec", name, "cat", "/count"]
  return podman(args).pipe(
    Effect.flatMap((text) => parseCount(args, text)),
    Effect.retry({ schedule: Schedule.spaced(Duration.millis(50)), times: 20 }),
    Effect.withSpan("Podman.counterValue", { attributes: { name } })
  )
}

/** Polls (bounded: `timeout`, default 30 s) until the counter shows a value greater than `value`; returns it. */
export const waitForCounterAbove = (
  name: string,
  value: number,
  options?: { readonly timeout?: Duration.DurationInput }
): Effect.Effect<number, PodmanError, Executor> =>
  pollUntil(counterValue(name), (current) => current > value, {
    timeout: options?.timeout ?? Duration.seconds(30),
    onTimeout: () =>
      failure(["exec", name, "cat", "/count"], { stderr: `counter did not exceed ${value}`, timedOut: true })
  })

/** Starts a counter container (scoped) and waits until it has counted at least once. */
export const runCounter = (
  name: string,
  options?: { readonly labels?: Readonly<Record<string, string>> }
): Effect.Effect<
  RunningContainer,
  PodmanError | PlatformError,
  Executor | FileSystem.FileSystem | Path.Path | Scope.Scope
> =>
  Effect.gen(function*() {
    const image = yield* ensureBusyboxImage()
    const container = yield* runContainer({
      name,
      image,
      command: ["sh", "-c", counterScript],
      ...(options?.labels === undefined ? {} : { labels: options.labels })
    })
    yield* waitForCounterAbove(name, 0)
    return container
  }).pipe(Effect.withSpan("Podman.runCounter", { attributes: { name } }))

/**
 * The counter value stored in a checkpoint archive: /count as captured in its rootfs-diff.tar, i.e. exactly the value
 * the checkpointed process had last written.
 */
export const archivedCounterValue = (archive: string): Effect.Effect<number, PodmanError, Executor> => {
  const args = ["(archive)", archive, "rootfs-diff.tar", "count"]
  return Command.make("tar", "-xOf", archive, "rootfs-diff.tar").pipe(
    Command.pipeTo(Command.make("tar", "-xOf", "-", "count")),
    Command.string,
    Effect.mapError((cause) => failure(args, { stderr: String(cause), cause })),
    Effect.flatMap((text) => parseCount(args, text))
  )
}

/**
 * Scoped pull of a checkpoint image and `podman container restore --name NAME IMAGE` (the name must differ from
 * any existing container, including the checkpointed original). Removes the container (also one whose restore failed)
 * and the pulled image on close.
 * Needs the original rootfs image (localhost/busybox:test) locally.
 */
export const restoreFromImage = (options: {
  readonly image: string
  readonly name: string
  readonly tlsVerify?: boolean
  readonly certDir?: string
  readonly creds?: { readonly username: string; readonly password: string }
}): Effect.Effect<RunningContainer, PodmanError, Executor | Scope.Scope> =>
  Effect.gen(function*() {
    yield* Effect.acquireRelease(
      podman([
        "pull",
        "--quiet",
        `--tls-verify=${options.tlsVerify ?? false}`,
        ...(options.certDir === undefined ? [] : ["--cert-dir", options.certDir]),
        ...(options.creds === undefined ? [] : ["--creds", `${options.creds.username}:${options.creds.password}`]),
        options.image
      ]),
      () => Effect.ignore(podman(["rmi", "--ignore", options.image]))
    )
    // Removed on close even when the restore fails: podman has created the container by then.
    yield* Effect.addFinalizer(() => Effect.ignore(removeContainer(options.name)))
    const id = yield* podman(["container", "restore", "--name", options.name, options.image])
    return { name: options.name, id }
  }).pipe(Effect.withSpan("Podman.restoreFromImage", { attributes: { image: options.image, name: options.name } }))

/**
 * What the kubelet asks CRI-O for: a checkpoint that leaves the container running, written uncompressed to `archive`.
 */
export const checkpointContainer = (options: {
  readonly name: string
  readonly archive: string
  readonly timeout: Duration.DurationInput
}): Effect.Effect<void, PodmanError, Executor> =>
  podman(
    ["container", "checkpoint", "--leave-running", "--compress=none", `--export=${options.archive}`, options.name],
    { timeout: options.timeout }
  ).pipe(Effect.asVoid, Effect.withSpan("Podman.checkpointContainer", { attributes: { name: options.name } }))
