import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { decompressLayer, zstdFrames } from "../packages/strategies/test/BuilderFixtures.ts"
import { expectRestoredCounterContinues, tagOf } from "./Expectations.ts"
import { counterOf, counterPodManifest, runPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { checkpointRepository, Stack } from "./harness/LocalStack.ts"
import { counterScript } from "./harness/Podman.ts"
import { postCheckpoint } from "./HttpCalls.ts"

const MiB = 1024 * 1024

/**
 * CHECKPOINT_LAYER_COMPRESSION compresses the layer in 4 MiB frames (zstd) or members (gzip), several at once: CRI-O
 * must read every one of them. The counter writes 12 MiB of text into its root file system first (the checkpoint's
 * rootfs-diff.tar), so the layer holds at least four frames.
 */
describeE2E("compressed checkpoint images restore on CRI-O", () => {
  layer(Stack.layer({ registryAuth: "htpasswd" }), { excludeTestServices: true, timeout: "300 seconds" })((it) => {
    for (const compression of ["zstd", "gzip"] as const) {
      it.scoped(`${compression}: a layer of several frames restores; the counter goes on and its file is intact`, () =>
        Effect.gen(function*() {
          const stack = yield* Stack
          const server = yield* stack.startAnotherCheckpointer({
            extra: { CHECKPOINT_LAYER_COMPRESSION: compression }
          })
          const name = `counter-${compression}`
          yield* runPod(
            stack.cluster,
            "default",
            counterPodManifest({
              name,
              nodeName: "node-a",
              image: stack.cluster.workloads.counterImage,
              command: ["sh", "-c", `head -c ${9 * MiB} /dev/urandom | base64 > /ballast && ${counterScript}`]
            })
          )
          const counter = counterOf(stack.cluster, "default", name)
          const before = yield* counter.waitAbove(5)
          const ballast = ["busybox", "sha256sum", "/ballast"]
          const ballastSum = yield* stack.cluster.agent.exec("default", name, "counter", ballast)

          const response = yield* postCheckpoint(server.url, `default/${name}/counter`)
          expect(response.status, response.text).toBe(201)
          const image: string = JSON.parse(response.text).containerImageName
          const manifest = yield* stack.registry.manifest(checkpointRepository, tagOf(image))
          const [layer] = manifest.json.layers
          expect(layer?.mediaType).toBe(`application/vnd.oci.image.layer.v1.tar+${compression}`)
          const pushed = yield* stack.registry.blob(checkpointRepository, layer!.digest)
          const tar = decompressLayer(compression, pushed)
          expect(tar.length).toBeGreaterThan(12 * MiB)
          if (compression === "zstd") {
            const frames = zstdFrames(pushed).map((frame) => frame.length)
            expect(frames.length).toBe(Math.ceil(tar.length / (4 * MiB)))
            expect(frames.slice(0, -1).every((size) => size === 4 * MiB)).toBe(true)
          }

          const restored = `${name}-restored`
          const counted = yield* expectRestoredCounterContinues(stack, image, restored, before)
          expect(yield* stack.cluster.agent.exec("default", restored, "counter", ballast)).toBe(ballastSum)
          yield* Effect.log(
            `${compression}: ${(tar.length / MiB).toFixed(1)} MiB archive pushed as ${
              (pushed.length / MiB).toFixed(1)
            } MiB; counter ${before} at checkpoint, ${counted.first} restored, then ${counted.later}`
          )
        }))
    }
  })
})
