import { Path } from "@effect/platform"
import { expect, layer } from "@effect/vitest"
import { Effect, Schedule } from "effect"
import { tagOf } from "./Expectations.ts"
import type { CheckpointerProcess } from "./harness/CheckpointerProcess.ts"
import { startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { checkpointRepository, Stack } from "./harness/LocalStack.ts"
import type { LocalStack } from "./harness/LocalStack.ts"
import { postCheckpoint } from "./HttpCalls.ts"

const resultTtlSeconds = 5

/** The server's log entry (one line and its indented annotations) for an image deleted because of `setting`. */
const deletedBecause = (setting: string) => new RegExp(`: image deleted\n(?: {2}.*\n)*? {2}why: .*\\(${setting}\\)`)

const checkpointCounter = (checkpointer: CheckpointerProcess) =>
  Effect.gen(function*() {
    const done = yield* postCheckpoint(checkpointer.url, "default/retained/counter")
    expect(done.status, done.text).toBe(201)
    return JSON.parse(done.text).containerImageName as string
  })

/** The repository's tags once `done` says so (deletes run in the background), or the last ones seen after 20 s. */
const tagsOnce = (stack: LocalStack, done: (tags: ReadonlyArray<string>) => boolean) =>
  stack.registry.tags(checkpointRepository).pipe(
    Effect.filterOrFail(done),
    Effect.retry(Schedule.spaced("250 millis").pipe(Schedule.intersect(Schedule.recurs(80)))),
    Effect.orElse(() => stack.registry.tags(checkpointRepository))
  )

describeE2E("image retention through the real server and registry", () => {
  layer(Stack.layer({ registryAuth: "token" }), { excludeTestServices: true, timeout: "300 seconds" })((it) => {
    it.scoped(
      "MAX_CHECKPOINTS_PER_CONTAINER deletes the oldest image at once, IMAGE_RETENTION=with-result the rest when " +
        "their results expire; an image another Checkpointer pushed stays",
      () =>
        Effect.gen(function*() {
          const stack = yield* Stack
          const path = yield* Path.Path
          yield* startCounterPod(stack.cluster, { namespace: "default", name: "retained", nodeName: "node-a" })
          const foreign = yield* checkpointCounter(stack.checkpointer)

          const env = {
            IMAGE_RETENTION: "with-result",
            MAX_CHECKPOINTS_PER_CONTAINER: "2",
            RESULT_TTL: String(resultTtlSeconds),
            STORAGE_BASE_PATH: path.join(stack.dir, "retention-storage")
          }
          const retaining = yield* stack.startAnotherCheckpointer({ extra: env })
          const images: Array<string> = []
          for (let n = 0; n < 3; n++) images.push(yield* checkpointCounter(retaining))
          const [oldest, middle, newest] = images.map(tagOf) as [string, string, string]

          const capped = yield* tagsOnce(stack, (tags) => !tags.includes(oldest))
          expect(capped).not.toContain(oldest)
          expect(capped).toEqual(expect.arrayContaining([middle, newest, tagOf(foreign)]))
          expect(yield* Effect.either(stack.registry.manifest(checkpointRepository, oldest))).toMatchObject({
            _tag: "Left"
          })
          expect(retaining.logs()).toMatch(deletedBecause("MAX_CHECKPOINTS_PER_CONTAINER"))

          // The results expire under RESULT_TTL; the sweep a Checkpointer makes when it starts deletes their images.
          yield* retaining.terminate
          yield* Effect.sleep(`${resultTtlSeconds + 1} seconds`)
          const restarted = yield* stack.startAnotherCheckpointer({ extra: env })
          const swept = yield* tagsOnce(stack, (tags) => !tags.includes(middle) && !tags.includes(newest))
          expect(swept).not.toContain(middle)
          expect(swept).not.toContain(newest)
          expect(swept).toContain(tagOf(foreign))
          expect(restarted.logs()).toMatch(deletedBecause("RESULT_TTL"))
          const kept = yield* stack.registry.manifest(checkpointRepository, tagOf(foreign))
          expect(kept.json.layers.length).toBeGreaterThan(0)
        }),
      240_000
    )
  })
})
