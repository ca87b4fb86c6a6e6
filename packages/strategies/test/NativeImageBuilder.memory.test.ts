import { ContainerName, ContainerRef, ImageBuilder, Namespace, PodName } from "@checkpointer/core"
import { Command, FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Fiber, Layer, Schedule } from "effect"
import { createHash } from "node:crypto"
import { createReadStream } from "node:fs"
import { describeE2E } from "../../../test/harness/E2E.ts"
import { startRegistry } from "../../../test/harness/Registry.ts"
import type { TestRegistry } from "../../../test/harness/Registry.ts"
import { nativeBuilder, trustedRegistry, writeKeyPair } from "./BuilderFixtures.ts"

const MiB = 1024 * 1024
const fileCount = 18
const fileSize = 60 * MiB

class Big extends Context.Tag("test/BigArchive")<Big, {
  readonly dir: string
  readonly registry: TestRegistry
  readonly archive: string
  readonly size: number
  readonly digest: string
}>() {}

/** A real tar of incompressible files, > 1 GiB, next to a token-auth registry. */
const BigLive = Layer.scoped(
  Big,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "native-builder-big-" })
    const registry = yield* startRegistry({ dir: `${dir}/registry`, auth: "token" })
    yield* fs.makeDirectory(`${dir}/content`)
    yield* Effect.forEach(
      Array.from({ length: fileCount }, (_, i) => i),
      (i) =>
        Command.make("sh", "-c", `head -c ${fileSize} /dev/urandom > pages-${i}.img`).pipe(
          Command.workingDirectory(`${dir}/content`),
          Command.exitCode
        ),
      { concurrency: 2 }
    )
    const archive = `${dir}/big.tar`
    yield* Command.make("tar", "-C", `${dir}/content`, "-cf", archive, ".").pipe(Command.exitCode)
    yield* fs.remove(`${dir}/content`, { recursive: true })
    const size = Number((yield* fs.stat(archive)).size)
    const digest = yield* Effect.promise(async () => {
      const hash = createHash("sha256")
      for await (const chunk of createReadStream(archive)) hash.update(chunk as Buffer)
      return `sha256:${hash.digest("hex")}`
    })
    return { dir, registry, archive, size, digest }
  })
).pipe(Layer.provide(NodeContext.layer))

/** Pushes the big archive with the native builder configured by `settings`; RSS is sampled every 20 ms meanwhile. */
const pushMeasured = (tag: string, settings: Record<string, string>) =>
  Effect.gen(function*() {
    const { archive, registry, size } = yield* Big
    const builder = nativeBuilder({ ...trustedRegistry(registry), ...settings })
    const request = {
      archive,
      imageName: `${registry.host}/big/archive:${tag}`,
      container: ContainerRef.make({
        namespace: Namespace.make("default"),
        pod: PodName.make("big"),
        container: ContainerName.make("big")
      })
    }
    const baseline = process.memoryUsage.rss()
    let peak = baseline
    const sampler = yield* Effect.fork(
      Effect.repeat(
        Effect.sync(() => {
          peak = Math.max(peak, process.memoryUsage.rss())
        }),
        Schedule.spaced("20 millis")
      )
    )
    const started = Date.now()
    const built = yield* Effect.flatMap(ImageBuilder, (b) => b.build(request)).pipe(Effect.provide(builder))
    const seconds = (Date.now() - started) / 1000
    yield* Fiber.interrupt(sampler)
    const growth = (peak - baseline) / MiB
    const mib = (bytes: number) => (bytes / MiB).toFixed(0)
    yield* Effect.logInfo(
      `pushed ${mib(size)} MiB (${tag}) in ${seconds.toFixed(2)} s (${(size / MiB / seconds).toFixed(0)} MiB/s); ` +
        `RSS baseline ${mib(baseline)} MiB, peak ${mib(peak)} MiB, growth ${growth.toFixed(1)} MiB`
    )
    return { built, growth, manifest: yield* registry.manifest("big/archive", tag) }
  })

describeE2E("NativeImageBuilder memory", () => {
  layer(BigLive, { timeout: "300 seconds", excludeTestServices: true })((it) => {
    it.effect("pushes a 1 GiB archive with flat memory (RSS growth < 100 MiB)", () =>
      Effect.gen(function*() {
        const { digest, registry, size } = yield* Big
        expect(size).toBeGreaterThanOrEqual(1024 * MiB)
        const { built, growth, manifest } = yield* pushMeasured("memory", {})
        expect(growth).toBeLessThan(100)
        expect(built.size).toBe(size)
        expect(manifest.digest).toBe(built.digest)
        expect(manifest.json.layers).toEqual([{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest, size }])
        const configBlob = yield* registry.blob("big/archive", manifest.json.config.digest)
        const config = JSON.parse(Buffer.from(configBlob).toString("utf8"))
        expect(config.rootfs.diff_ids).toEqual([digest])
        expect(yield* registry.blobDigest("big/archive", digest)).toEqual({ digest, size })
      }))

    it.effect(
      "encrypts a 1 GiB archive for two recipients, then zstd + encryption, with flat memory (< 100 MiB)",
      () =>
        Effect.gen(function*() {
          const { dir, digest, registry, size } = yield* Big
          const rsa = yield* writeKeyPair(dir, "rsa")
          const ec = yield* writeKeyPair(dir, "p256")
          const keys = `${rsa.publicFile},${ec.publicFile}`
          for (const compression of ["none", "zstd"] as const) {
            const { built, growth, manifest } = yield* pushMeasured(`encrypted-${compression}`, {
              CHECKPOINT_ENCRYPTION_KEYS: keys,
              CHECKPOINT_LAYER_COMPRESSION: compression
            })
            expect(growth, compression).toBeLessThan(100)
            const [layer] = manifest.json.layers
            expect(layer?.mediaType).toBe(
              `application/vnd.oci.image.layer.v1.tar${compression === "none" ? "" : "+zstd"}+encrypted`
            )
            expect(built.size).toBe(layer?.size)
            if (compression === "none") expect(layer?.size).toBe(size)
            expect(yield* registry.blobDigest("big/archive", layer!.digest)).toEqual({
              digest: layer!.digest,
              size: layer!.size
            })
            const configBlob = yield* registry.blob("big/archive", manifest.json.config.digest)
            expect(JSON.parse(Buffer.from(configBlob).toString("utf8")).rootfs.diff_ids).toEqual([digest])
          }
        }).pipe(Effect.provide(NodeContext.layer)),
      300_000
    )
  })
})
