import { Command, FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Duration, Effect, Option } from "effect"
import { ociLayoutLayerFile, skopeo, writeKeyPair } from "../packages/strategies/test/BuilderFixtures.ts"
import { expectRestoredCounterContinues } from "./Expectations.ts"
import { addPullSecret, counterPodManifest, startBallastPod, startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { checkpointRepository, Stack } from "./harness/LocalStack.ts"
import { pollUntil } from "./harness/Process.ts"
import { postCheckpoint } from "./HttpCalls.ts"

const MiB = 1024 * 1024

describeE2E("an encrypted checkpoint through the server", () => {
  layer(Stack.layer({ registryAuth: "htpasswd" }), { excludeTestServices: true, timeout: "300 seconds" })((it) => {
    it.scoped(
      "a 560 MiB checkpoint is pushed encrypted by the server (peak RSS < 150 MiB); skopeo decrypts it",
      () =>
        Effect.gen(function*() {
          const fs = yield* FileSystem.FileSystem
          const stack = yield* Stack
          const keys = yield* fs.makeTempDirectoryScoped({ prefix: "encrypted-checkpoint-" })
          const key = yield* writeKeyPair(keys, "p384")
          const server = yield* stack.startAnotherCheckpointer({
            extra: { CHECKPOINT_ENCRYPTION_KEYS: key.publicFile }
          })
          yield* startBallastPod(stack.cluster, {
            namespace: "default",
            name: "sealed",
            nodeName: "node-a",
            bytes: 560 * MiB
          })
          const rssBefore = server.peakRss()
          const response = yield* postCheckpoint(server.url, "default/sealed/main")
          expect(response.status, response.text).toBe(201)
          const peak = server.peakRss()
          expect(peak).toBeLessThan(150 * MiB)
          const image: string = JSON.parse(response.text).containerImageName
          const manifest = yield* stack.registry.manifest(checkpointRepository, image.slice(image.lastIndexOf(":") + 1))
          const [sealed] = manifest.json.layers
          expect(sealed?.mediaType).toBe("application/vnd.oci.image.layer.v1.tar+encrypted")
          expect(sealed?.size).toBeGreaterThanOrEqual(560 * MiB)
          yield* Effect.log(
            `encrypted ${(sealed!.size / MiB).toFixed(0)} MiB pushed; server peak RSS ${
              (rssBefore / MiB).toFixed(0)
            } ` +
              `MiB before, ${(peak / MiB).toFixed(0)} MiB after`
          )
          const target = yield* fs.makeTempDirectoryScoped({ prefix: "encrypted-checkpoint-oci-" })
          const copied = yield* skopeo([
            "copy",
            "--src-cert-dir",
            stack.registry.certDir,
            "--src-creds",
            `${stack.registry.username}:${stack.registry.password}`,
            "--decryption-key",
            key.privateFile,
            `docker://${image}`,
            `oci:${target}:copy`
          ])
          expect(copied.exitCode, copied.output).toBe(0)
          const { descriptor, file } = yield* ociLayoutLayerFile(target)
          expect(descriptor.mediaType).toBe("application/vnd.oci.image.layer.v1.tar")
          const entries = (yield* Command.string(Command.make("tar", "-tf", file))).split("\n")
          expect(entries).toEqual(expect.arrayContaining(["config.dump", "spec.dump", "rootfs-diff.tar"]))
        }).pipe(Effect.provide(NodeContext.layer)),
      300_000
    )

    it.scoped(
      "CRI-O refuses the encrypted image without a private key; with either recipient's key it restores",
      () =>
        Effect.gen(function*() {
          const fs = yield* FileSystem.FileSystem
          const stack = yield* Stack
          const { agent, apiServer, runtime } = stack.cluster
          const keys = yield* fs.makeTempDirectoryScoped({ prefix: "encrypted-restore-" })
          const rsa = yield* writeKeyPair(keys, "rsa")
          const ec = yield* writeKeyPair(keys, "p256")
          const server = yield* stack.startAnotherCheckpointer({
            extra: { CHECKPOINT_ENCRYPTION_KEYS: `${rsa.publicFile},${ec.publicFile}` }
          })
          const { container } = yield* startCounterPod(stack.cluster, {
            namespace: "default",
            name: "sealed-counter",
            nodeName: "node-a"
          })
          const before = yield* container.waitAbove(10)
          const response = yield* postCheckpoint(server.url, "default/sealed-counter/counter")
          expect(response.status, response.text).toBe(201)
          const image: string = JSON.parse(response.text).containerImageName

          // No key in CRI-O's decryption_keys_path: the pull fails and the pod never runs.
          const pullSecret = yield* addPullSecret(stack, "default")
          yield* Effect.scoped(Effect.gen(function*() {
            yield* Effect.addFinalizer(() => Effect.ignore(apiServer.deletePod("default", "sealed-nokey", 0)))
            yield* apiServer.createPod(
              "default",
              counterPodManifest({
                name: "sealed-nokey",
                image,
                nodeName: "node-a",
                imagePullSecrets: [pullSecret]
              })
            )
            const refused = yield* pollUntil(
              Effect.map(apiServer.findPod("default", "sealed-nokey"), (pod) => JSON.stringify(Option.getOrNull(pod))),
              (status) => status.includes("missing private key needed for decryption"),
              { timeout: Duration.seconds(60), onTimeout: () => new Error("the pull without a key did not fail") }
            )
            expect(refused).toContain("ErrImagePull")
          }))

          // Each recipient's private key alone lets CRI-O pull, decrypt and restore it.
          for (const [label, key] of [["rsa", rsa], ["p256", ec]] as const) {
            const inRuntime = `${runtime.decryptionKeysDir}/${label}.pem`
            yield* Effect.acquireRelease(
              fs.copyFile(key.privateFile, inRuntime),
              () => Effect.ignore(fs.remove(inRuntime))
            )
            yield* Effect.scoped(expectRestoredCounterContinues(stack, image, `sealed-restored-${label}`, before))
            yield* fs.remove(inRuntime)
            yield* runtime.crictl(["rmi", image])
          }
          expect(yield* agent.containerId("default", "sealed-counter", "counter")).toBeDefined()
        }).pipe(Effect.provide(NodeContext.layer)),
      300_000
    )
  })
})
