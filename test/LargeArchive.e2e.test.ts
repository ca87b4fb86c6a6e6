import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { startBallastPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { checkpointRepository, Stack } from "./harness/LocalStack.ts"
import { postCheckpoint } from "./HttpCalls.ts"

const StackLive = Stack.layer({ registryAuth: "htpasswd" })

const MiB = 1024 * 1024
const ballastBytes = 560 * MiB

describeE2E("a checkpoint archive larger than 512 MiB", () => {
  layer(StackLive, { excludeTestServices: true, timeout: "300 seconds" })((it) => {
    it.scoped(
      "is streamed to the registry while the server's peak RSS stays under 150 MiB",
      () =>
        Effect.gen(function*() {
          const stack = yield* Stack
          yield* startBallastPod(stack.cluster, {
            namespace: "default",
            name: "ballast",
            nodeName: "node-a",
            bytes: ballastBytes
          })
          const rssBefore = stack.checkpointer.peakRss()
          const response = yield* postCheckpoint(stack.checkpointer.url, "default/ballast/main")
          expect(response.status, response.text).toBe(201)
          const body = JSON.parse(response.text)
          const tag = body.containerImageName.slice(body.containerImageName.lastIndexOf(":") + 1)
          const manifest = yield* stack.registry.manifest(checkpointRepository, tag)
          const layerSize = manifest.json.layers[0]!.size
          const peak = stack.checkpointer.peakRss()
          yield* Effect.log(
            `archive ${(layerSize / MiB).toFixed(0)} MiB pushed; server peak RSS ${(rssBefore / MiB).toFixed(0)} MiB ` +
              `before, ${(peak / MiB).toFixed(0)} MiB after`
          )
          expect(layerSize).toBeGreaterThanOrEqual(512 * MiB)
          expect((yield* stack.registry.blobDigest(checkpointRepository, manifest.json.layers[0]!.digest)).size).toBe(
            layerSize
          )
          expect(peak).toBeLessThan(150 * MiB)
        }),
      300_000
    )
  })
})
