import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import { startBallastPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { KanikoStackTag } from "./harness/KanikoStack.ts"
import { postCheckpoint } from "./HttpCalls.ts"

const MiB = 1024 * 1024
const ballastBytes = 560 * MiB
/**
 * Measured 140 to 155 MiB, flat while the archive streams. Unlike the native builder, fresh buffers cannot be avoided
 * (gzip output, client-node's and ws's copies of each WebSocket message): garbage buffers pile up until V8 collects
 * them, which it does at the latest 64 MiB of external memory after the last collection. The bound says the archive is
 * never held in memory, whatever its size.
 */
const peakBound = 184 * MiB
const name = `kaniko-${randomBytes(3).toString("hex")}-ballast`

describeE2E("a checkpoint archive larger than 512 MiB through the kaniko builder", () => {
  layer(KanikoStackTag.layer, { excludeTestServices: true, timeout: "300 seconds" })((it) => {
    it.scoped("is streamed over pod attach while the server's peak RSS stays under 184 MiB", () =>
      Effect.gen(function*() {
        const stack = yield* KanikoStackTag
        const checkpointer = yield* stack.startKanikoCheckpointer("kaniko", { KANIKO_TIMEOUT: "240" })
        yield* startBallastPod(stack.cluster, {
          namespace: "default",
          name,
          nodeName: "node-a",
          bytes: ballastBytes
        })
        const rssBefore = checkpointer.peakRss()
        const started = Date.now()
        const response = yield* postCheckpoint(checkpointer.url, `default/${name}/main`)
        const seconds = (Date.now() - started) / 1000
        expect(response.status, response.text).toBe(201)
        const peak = checkpointer.peakRss()
        yield* Effect.log(
          `560 MiB of ballast checkpointed and built by Kaniko in ${seconds.toFixed(1)} s; server peak RSS ` +
            `${(rssBefore / MiB).toFixed(0)} MiB before, ${(peak / MiB).toFixed(0)} MiB after`
        )
        expect(peak).toBeLessThan(peakBound)
      }), 300_000)
  })
})
