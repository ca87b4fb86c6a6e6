import { Deferred, Effect } from "effect"
import { Worker } from "node:worker_threads"

/**
 * A worker thread running `source` (CommonJS, evaluated) that answers every message with one message, in order;
 * terminated when the scope closes. Once it fails or exits, every question waiting or still to come fails with
 * `failed(cause)`.
 */
export const orderedWorker = <E>(source: string, workerData: unknown, failed: (cause: unknown) => E) =>
  Effect.gen(function*() {
    const worker = yield* Effect.acquireRelease(
      Effect.sync(() => new Worker(source, { eval: true, workerData })),
      (worker) => Effect.promise(() => worker.terminate())
    )
    const waiting: Array<Deferred.Deferred<unknown, E>> = []
    let failure: E | undefined
    const fail = (cause: unknown) => {
      const error = failure ??= failed(cause)
      waiting.splice(0).forEach((reply) => Deferred.unsafeDone(reply, Effect.fail(error)))
    }
    worker.on("message", (message: unknown) => {
      const reply = waiting.shift()
      if (reply !== undefined) Deferred.unsafeDone(reply, Effect.succeed(message))
    })
    worker.on("error", fail)
    worker.on("exit", (code) => fail(`exit code ${code}`))
    /** Sends a message; the inner effect waits for its answer. */
    const ask = (message: unknown) =>
      Effect.gen(function*() {
        const reply = yield* Deferred.make<unknown, E>()
        yield* Effect.sync(() => {
          if (failure !== undefined) return Deferred.unsafeDone(reply, Effect.fail(failure))
          waiting.push(reply)
          worker.postMessage(message)
        })
        return Deferred.await(reply)
      })
    return { ask } as const
  })
