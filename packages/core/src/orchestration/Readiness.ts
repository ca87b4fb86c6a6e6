import { Data, Duration, Effect, Either } from "effect"
import { nodeName } from "../config/Config.ts"
import { Cluster } from "../kubernetes/Cluster.ts"
import { ResultStore } from "./ResultStore.ts"

/** Why this Checkpointer cannot take checkpoints now; the message lists every failed check. */
export class NotReadyYet extends Data.TaggedError("NotReadyYet")<{ readonly message: string }> {}

/** A readiness probe must answer well within its own timeout (the DaemonSet gives it 5 s). */
const checkTimeout = Duration.seconds(3)

interface Failure {
  readonly message: string
  readonly cause?: unknown
}

/** The message, with the system error code found deepest in its causes ("fetch failed (ECONNREFUSED)"). */
const describe = (error: Failure): string => {
  let code: string | undefined
  let cause: unknown = error.cause
  for (let depth = 0; depth < 8 && typeof cause === "object" && cause !== null; depth++) {
    if ("code" in cause && typeof cause.code === "string") code = cause.code
    cause = "cause" in cause ? cause.cause : undefined
  }
  return code === undefined || error.message.includes(code) ? error.message : `${error.message} (${code})`
}

const bounded = (name: string, check: Effect.Effect<unknown, Failure>) =>
  check.pipe(
    Effect.timeoutFail({
      duration: checkTimeout,
      onTimeout: (): Failure => ({ message: `no answer within ${Duration.format(checkTimeout)}` })
    }),
    Effect.mapError((error) => `${name}: ${describe(error)}`)
  )

/** Whether this Checkpointer can take checkpoints: its result store is writable and the API server answers. */
export class Readiness extends Effect.Service<Readiness>()("checkpointer/Readiness", {
  effect: Effect.gen(function*() {
    const store = yield* ResultStore
    const cluster = yield* Cluster
    const node = yield* nodeName

    const checks = [
      bounded("result store not writable", store.checkWritable),
      // The call routing makes for every request to another node: reachability, credentials and RBAC at once.
      bounded("API server not reachable", cluster.checkpointerPodsOn(node))
    ]

    const check = Effect.fn("Readiness.check")(function*() {
      const outcomes = yield* Effect.all(checks.map(Effect.either), { concurrency: "unbounded" })
      const problems = outcomes.filter(Either.isLeft).map((outcome) => outcome.left)
      if (problems.length > 0) {
        yield* Effect.logWarning("not ready").pipe(Effect.annotateLogs({ service: "Readiness", problems }))
        return yield* new NotReadyYet({ message: problems.join("\n") })
      }
    })

    return { check } as const
  })
}) {}
