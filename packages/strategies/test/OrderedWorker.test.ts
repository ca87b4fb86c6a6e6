import { describe, expect, it } from "@effect/vitest"
import { Data, Effect } from "effect"
import { orderedWorker } from "../src/native/OrderedWorker.ts"

class WorkerFailed extends Data.TaggedError("WorkerFailed")<{ readonly cause: unknown }> {}

/** Doubles numbers; exits on "exit", throws on "throw". */
const source = `
const { parentPort, workerData } = require("node:worker_threads")
parentPort.on("message", (message) => {
  if (message === "exit") process.exit(3)
  if (message === "throw") throw new Error("thrown in the worker")
  parentPort.postMessage(message * workerData.factor)
})
`

const start = orderedWorker(source, { factor: 2 }, (cause) => new WorkerFailed({ cause }))

describe("orderedWorker", () => {
  it.scoped("answers each question, in order, with the worker's reply", () =>
    Effect.gen(function*() {
      const { ask } = yield* start
      const answers = yield* Effect.all([ask(1), ask(2), ask(3)])
      expect(yield* Effect.all(answers)).toEqual([2, 4, 6])
    }))

  it.scoped("fails the waiting question when the worker throws, and every later one at once instead of waiting", () =>
    Effect.gen(function*() {
      const { ask } = yield* start
      const thrown = yield* Effect.flip(Effect.flatten(ask("throw")))
      expect(String(thrown.cause)).toContain("thrown in the worker")
      const later = yield* Effect.flip(Effect.flatten(ask(5)).pipe(Effect.timeout("5 seconds")))
      expect(later).toBe(thrown)
    }))

  it.scoped("fails the waiting question when the worker exits, and every later one at once", () =>
    Effect.gen(function*() {
      const { ask } = yield* start
      const exited = yield* Effect.flip(Effect.flatten(ask("exit")))
      expect(exited).toEqual(new WorkerFailed({ cause: "exit code 3" }))
      const later = yield* Effect.flip(Effect.flatten(ask(5)).pipe(Effect.timeout("5 seconds")))
      expect(later).toBe(exited)
    }))
})
