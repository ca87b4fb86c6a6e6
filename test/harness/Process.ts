import { Command } from "@effect/platform"
import type { CommandExecutor } from "@effect/platform"
import type { PlatformError } from "@effect/platform/Error"
import { Data, Duration, Effect, Stream } from "effect"

export class ProcessError extends Data.TaggedError("ProcessError")<{
  readonly message: string
  readonly command: ReadonlyArray<string>
  readonly exitCode?: number
  readonly stderr: string
  readonly timedOut: boolean
  readonly cause?: unknown
}> {}

export interface ProcessResult {
  readonly exitCode: number
  readonly stdout: string
  readonly stderr: string
}

export interface RunOptions {
  /** The whole process group is killed (SIGKILL) when it runs longer. */
  readonly timeout?: Duration.DurationInput
  readonly stdin?: Stream.Stream<Uint8Array, PlatformError>
  readonly env?: Readonly<Record<string, string>>
  /** Working directory; this process's when absent. */
  readonly cwd?: string
  /** How the command is shown in errors (e.g. with credentials redacted); default: the command itself. */
  readonly shownAs?: ReadonlyArray<string>
}

const collectText = <E>(stream: Stream.Stream<Uint8Array, E>) => stream.pipe(Stream.decodeText(), Stream.mkString)

export const processFailure = (
  shownAs: ReadonlyArray<string>,
  details: {
    readonly exitCode?: number
    readonly stderr: string
    readonly timedOut?: boolean
    readonly cause?: unknown
  }
) =>
  new ProcessError({
    message: details.timedOut === true
      ? `${shownAs.join(" ")} timed out`
      : `${shownAs.join(" ")} failed${
        details.exitCode === undefined ? "" : ` (exit ${details.exitCode})`
      }: ${details.stderr.trim()}`,
    command: shownAs,
    stderr: details.stderr,
    timedOut: details.timedOut ?? false,
    ...(details.exitCode === undefined ? {} : { exitCode: details.exitCode }),
    ...(details.cause === undefined ? {} : { cause: details.cause })
  })

/** Runs a command and reports its exit code and output without judging them. */
export const runProcess = (
  command: ReadonlyArray<string>,
  options: RunOptions = {}
): Effect.Effect<ProcessResult, ProcessError, CommandExecutor.CommandExecutor> => {
  const shownAs = options.shownAs ?? command
  let built = Command.make(command[0]!, ...command.slice(1))
  if (options.env !== undefined) built = Command.env(built, options.env)
  if (options.cwd !== undefined) built = Command.workingDirectory(built, options.cwd)
  if (options.stdin !== undefined) built = Command.stdin(built, options.stdin)
  return Effect.scoped(Effect.gen(function*() {
    const process = yield* Command.start(built)
    const outcome = Effect.all([collectText(process.stdout), collectText(process.stderr), process.exitCode], {
      concurrency: "unbounded"
    })
    // Interrupted: SIGKILL, not the SIGTERM of the scope's release, which some (crictl attach) outlive.
    const killedOnInterrupt = outcome.pipe(Effect.onInterrupt(() => Effect.ignore(process.kill("SIGKILL"))))
    const [stdout, stderr, exitCode] = options.timeout === undefined ? yield* killedOnInterrupt : yield* outcome.pipe(
      Effect.timeoutFail({
        duration: options.timeout,
        onTimeout: () => processFailure(shownAs, { stderr: "", timedOut: true })
      }),
      Effect.tapError((error) =>
        error._tag === "ProcessError" && error.timedOut ? Effect.ignore(process.kill("SIGKILL")) : Effect.void
      )
    )
    return { exitCode, stdout, stderr }
  })).pipe(
    Effect.catchTags({
      SystemError: (cause) => Effect.fail(processFailure(shownAs, { stderr: cause.message, cause })),
      BadArgument: (cause) => Effect.fail(processFailure(shownAs, { stderr: cause.message, cause }))
    })
  )
}

/** Runs a command; fails unless it exits with 0; succeeds with the trimmed stdout. */
export const run = (
  command: ReadonlyArray<string>,
  options: RunOptions = {}
): Effect.Effect<string, ProcessError, CommandExecutor.CommandExecutor> =>
  Effect.flatMap(runProcess(command, options), (result) =>
    result.exitCode === 0
      ? Effect.succeed(result.stdout.trim())
      : Effect.fail(
        processFailure(options.shownAs ?? command, { exitCode: result.exitCode, stderr: result.stderr + result.stdout })
      ))

/** Polls `effect` every `every` until `done` holds, at most `timeout`; fails with `onTimeout()` then. */
export const pollUntil = <A, E, R, E2>(
  effect: Effect.Effect<A, E, R>,
  done: (value: A) => boolean,
  options: {
    readonly every?: Duration.DurationInput
    readonly timeout: Duration.DurationInput
    readonly onTimeout: () => E2
  }
): Effect.Effect<A, E | E2, R> => {
  const loop: Effect.Effect<A, E, R> = Effect.flatMap(effect, (value) =>
    done(value)
      ? Effect.succeed(value)
      : Effect.zipRight(Effect.sleep(options.every ?? Duration.millis(100)), Effect.suspend(() => loop)))
  return Effect.timeoutFail(loop, { duration: options.timeout, onTimeout: options.onTimeout })
}
