import { ContainerName, ContainerRef, ImageBuilder, Namespace, PodName } from "@checkpointer/core"
import type { BuildRequest } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { expect, layer, vi } from "@effect/vitest"
import type { Duration } from "effect"
import { Cause, Context, Effect, Layer } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { createReadStream, createWriteStream } from "node:fs"
import { pipeline } from "node:stream/promises"
import tls from "node:tls"
import { createGzip, createZstdCompress } from "node:zlib"
import { replace } from "tar"
import { describeE2E } from "../../../test/harness/E2E.ts"
import * as Podman from "../../../test/harness/Podman.ts"
import { startRegistry } from "../../../test/harness/Registry.ts"
import type { TestRegistry } from "../../../test/harness/Registry.ts"
import { nativeBuilder, slowLinkTo, trustedRegistry } from "./BuilderFixtures.ts"

const fileDigest = (file: string) =>
  Effect.promise(async () => {
    const hash = createHash("sha256")
    for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer)
    return `sha256:${hash.digest("hex")}`
  })

const compress = (from: string, to: string, kind: "gzip" | "zstd") =>
  Effect.promise(() =>
    pipeline(createReadStream(from), kind === "gzip" ? createGzip() : createZstdCompress(), createWriteStream(to))
  )

interface Checkpoint {
  readonly dir: string
  readonly containerName: string
  /** The counter value the checkpointed process had written. */
  readonly counter: number
  readonly tar: string
  readonly gzip: string
  readonly zstd: string
  readonly tarDigest: string
}

class Fixture extends Context.Tag("test/NativeImageBuilderFixture")<Fixture, {
  readonly htpasswd: TestRegistry
  readonly token: TestRegistry
  readonly checkpoint: Checkpoint
}>() {}

const FixtureLive = Layer.scoped(
  Fixture,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "native-builder-" })
    const [htpasswd, token] = yield* Effect.all([
      startRegistry({ dir: `${dir}/registry-htpasswd`, auth: "htpasswd" }),
      startRegistry({ dir: `${dir}/registry-token`, auth: "token" })
    ], { concurrency: 2 })
    const containerName = `strategies-${randomBytes(4).toString("hex")}-counter`
    yield* Podman.runCounter(containerName)
    yield* Podman.waitForCounterAbove(containerName, 5)
    const tar = `${dir}/checkpoint.tar`
    yield* Podman.checkpointContainer({ name: containerName, archive: tar, timeout: "60 seconds" })
    const counter = yield* Podman.archivedCounterValue(tar)
    yield* compress(tar, `${dir}/checkpoint.tar.gz`, "gzip")
    yield* compress(tar, `${dir}/checkpoint.tar.zst`, "zstd")
    const checkpoint: Checkpoint = {
      dir,
      containerName,
      counter,
      tar,
      gzip: `${dir}/checkpoint.tar.gz`,
      zstd: `${dir}/checkpoint.tar.zst`,
      tarDigest: yield* fileDigest(tar)
    }
    return { htpasswd, token, checkpoint }
  })
).pipe(Layer.provide(NodeContext.layer))

const container = ContainerRef.make({
  namespace: Namespace.make("default"),
  pod: PodName.make("web"),
  container: ContainerName.make("counter")
})

const build = (request: Omit<BuildRequest, "container">, settings: Record<string, string>) =>
  Effect.flatMap(ImageBuilder, (builder) => builder.build({ ...request, container })).pipe(
    Effect.provide(nativeBuilder(settings))
  )

const randomTag = () => randomBytes(8).toString("hex")

/** Pushes `archive` and checks everything the registry now serves for it. */
const pushAndVerify = (registry: TestRegistry, archive: string, expected: {
  readonly layerMediaType: string
  readonly diffId: string
  readonly repository?: string
}) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const { checkpoint } = yield* Fixture
    const repository = expected.repository ?? "checkpoints/counter"
    const tag = randomTag()
    const imageName = `${registry.host}/${repository}:${tag}`
    const started = Date.now()
    const built = yield* build({ archive, imageName }, trustedRegistry(registry))
    const seconds = (Date.now() - started) / 1000
    const size = Number((yield* fs.stat(archive)).size)
    expect(built).toEqual({ name: imageName, digest: expect.stringMatching(/^sha256:[0-9a-f]{64}$/), size })

    const manifest = yield* registry.manifest(repository, tag)
    expect(manifest.contentType).toBe("application/vnd.oci.image.manifest.v1+json")
    expect(manifest.digest).toBe(built.digest)
    expect(manifest.computedDigest).toBe(built.digest)
    expect(manifest.json.schemaVersion).toBe(2)
    expect(manifest.json.mediaType).toBe("application/vnd.oci.image.manifest.v1+json")
    const layerDigest = yield* fileDigest(archive)
    expect(manifest.json.layers).toEqual([{ mediaType: expected.layerMediaType, digest: layerDigest, size }])
    expect(manifest.json.config.mediaType).toBe("application/vnd.oci.image.config.v1+json")
    expect(manifest.json.annotations).toMatchObject({
      "io.kubernetes.cri-o.annotations.checkpoint.name": "counter",
      "org.criu.checkpoint.container.name": checkpoint.containerName,
      "org.criu.checkpoint.engine.name": "Podman",
      "org.criu.checkpoint.runtime.name": "runc",
      "org.criu.checkpoint.rootfsImageName": Podman.busyboxImage,
      "org.criu.checkpoint.pod.name": "web",
      "org.criu.checkpoint.pod.namespace": "default",
      "io.podman.annotations.checkpoint.name": checkpoint.containerName,
      "io.podman.annotations.checkpoint.runtime.name": "runc",
      "io.podman.annotations.checkpoint.rootfsImageName": Podman.busyboxImage
    })

    const configBytes = yield* registry.blob(repository, manifest.json.config.digest)
    expect(configBytes.length).toBe(manifest.json.config.size)
    const config = JSON.parse(Buffer.from(configBytes).toString("utf8"))
    expect(config).toMatchObject({
      architecture: process.arch === "x64" ? "amd64" : process.arch,
      os: "linux",
      rootfs: { type: "layers", diff_ids: [expected.diffId] }
    })
    expect(Date.parse(config.created)).toBeGreaterThan(started - 60_000)
    expect(yield* registry.blobDigest(repository, manifest.json.layers[0]!.digest)).toEqual({
      digest: manifest.json.layers[0]!.digest,
      size
    })
    expect(yield* registry.tags(repository)).toContain(tag)
    const file = archive.split("/").at(-1)
    yield* Effect.logInfo(`pushed ${file} (${size} bytes) to the ${registry.auth} registry in ${seconds.toFixed(2)} s`)
    return { built, imageName, tag, repository }
  })

describeE2E("NativeImageBuilder against a real registry", () => {
  layer(FixtureLive, { timeout: "180 seconds", excludeTestServices: true })((it) => {
    it.effect("pushes a real CRIU checkpoint to an htpasswd registry; podman restores it and the counter goes on", () =>
      Effect.gen(function*() {
        const { checkpoint, htpasswd } = yield* Fixture
        const { imageName } = yield* pushAndVerify(htpasswd, checkpoint.tar, {
          layerMediaType: "application/vnd.oci.image.layer.v1.tar",
          diffId: checkpoint.tarDigest
        })
        const restoredName = `${checkpoint.containerName}-restored`
        yield* Podman.restoreFromImage({
          image: imageName,
          name: restoredName,
          certDir: htpasswd.certDir,
          tlsVerify: true,
          creds: { username: htpasswd.username, password: htpasswd.password }
        })
        const first = yield* Podman.counterValue(restoredName)
        expect(first).toBeGreaterThanOrEqual(checkpoint.counter)
        const later = yield* Podman.waitForCounterAbove(restoredName, first)
        yield* Effect.logInfo(`checkpointed counter ${checkpoint.counter}; restored counter ${first}, then ${later}`)
      }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

    it.effect("pushes to a token-auth registry (Bearer flow) and podman pulls the image", () =>
      Effect.gen(function*() {
        const { checkpoint, token } = yield* Fixture
        const { imageName } = yield* pushAndVerify(token, checkpoint.tar, {
          layerMediaType: "application/vnd.oci.image.layer.v1.tar",
          diffId: checkpoint.tarDigest
        })
        yield* Effect.acquireRelease(
          Podman.podman([
            "pull",
            "--quiet",
            "--cert-dir",
            token.certDir,
            "--creds",
            `${token.username}:${token.password}`,
            imageName
          ]),
          () => Effect.ignore(Podman.podman(["rmi", "--ignore", imageName]))
        )
        const annotations = JSON.parse(
          yield* Podman.podman(["image", "inspect", "--format", "{{json .Annotations}}", imageName])
        ) as Record<string, string>
        expect(annotations["io.podman.annotations.checkpoint.runtime.name"]).toBe("runc")
        expect(token.logs()).toMatch(
          /token-server: GET \/token .*scope=repository:checkpoints\/counter:pull,push account=checkpointer -> 200/
        )
      }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

    it.effect("labels gzip and zstd archives by their compression; diff_id is the digest of the uncompressed tar", () =>
      Effect.gen(function*() {
        const { checkpoint, htpasswd, token } = yield* Fixture
        for (const registry of [htpasswd, token]) {
          yield* pushAndVerify(registry, checkpoint.gzip, {
            layerMediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
            diffId: checkpoint.tarDigest
          })
          yield* pushAndVerify(registry, checkpoint.zstd, {
            layerMediaType: "application/vnd.oci.image.layer.v1.tar+zstd",
            diffId: checkpoint.tarDigest
          })
        }
      }).pipe(Effect.provide(NodeContext.layer)))

    it.effect("one builder pings and asks for a token once for many pushes, and renews a token before it expires", () =>
      Effect.gen(function*() {
        const fs = yield* FileSystem.FileSystem
        const { checkpoint, token } = yield* Fixture
        const pushes = (registry: TestRegistry, count: number, pause: Duration.DurationInput) =>
          Effect.flatMap(
            ImageBuilder,
            (builder) =>
              Effect.forEach(Array.from({ length: count }, (_, n) => n), (n) =>
                Effect.zipRight(
                  n === 0 ? Effect.void : Effect.sleep(pause),
                  builder.build({
                    archive: checkpoint.tar,
                    imageName: `${registry.host}/reused/counter:${randomTag()}`,
                    container
                  })
                ))
          ).pipe(Effect.provide(nativeBuilder(trustedRegistry(registry))))
        const counts = (registry: TestRegistry) => ({
          pings: registry.logs().match(/"GET \/v2\/ HTTP\/[\d.]+" 401 /g)?.length ?? 0,
          tokens: registry.logs().match(/token-server: GET \/token .* -> 200/g)?.length ?? 0,
          refused: registry.logs().match(/" 401 /g)?.length ?? 0
        })

        const before = counts(token)
        expect(yield* pushes(token, 3, 0)).toHaveLength(3)
        const after = counts(token)
        expect({ pings: after.pings - before.pings, tokens: after.tokens - before.tokens }).toEqual({
          pings: 1,
          tokens: 1
        })

        // Tokens valid for 4 s are renewed after 2 s: the second push, 3 s later, asks for a new one (the old one would
        // still be accepted for a second, so without the renewal there would be one token request).
        const dir = yield* fs.makeTempDirectoryScoped({ prefix: "short-tokens-" })
        const shortLived = yield* startRegistry({ dir: `${dir}/registry`, auth: "token", tokenSeconds: 4 })
        const ready = counts(shortLived)
        expect(yield* pushes(shortLived, 2, "3 seconds")).toHaveLength(2)
        const done = counts(shortLived)
        expect({
          pings: done.pings - ready.pings,
          tokens: done.tokens - ready.tokens,
          refused: done.refused - ready.refused
        }).toEqual({ pings: 1, tokens: 2, refused: 1 })
      }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

    it.effect("trusts REGISTRY_CA_FILE through one TLS context shared by all its connections", () =>
      Effect.gen(function*() {
        const fs = yield* FileSystem.FileSystem
        const { checkpoint, htpasswd, token } = yield* Fixture
        const registries = [htpasswd, token]
        const dir = yield* fs.makeTempDirectoryScoped({ prefix: "shared-trust-" })
        const caFile = `${dir}/cas.pem`
        yield* fs.writeFileString(
          caFile,
          (yield* Effect.forEach(registries, (r) => fs.readFileString(r.caFile))).join("")
        )
        const authFile = `${dir}/auth.json`
        const auths = Object.fromEntries(registries.map((r) => [r.host, {
          auth: Buffer.from(`${r.username}:${r.password}`).toString("base64")
        }]))
        yield* fs.writeFileString(authFile, JSON.stringify({ auths }))
        const builder = Context.get(
          yield* Layer.build(nativeBuilder({ REGISTRY_AUTH_FILE: authFile, REGISTRY_CA_FILE: caFile })),
          ImageBuilder
        )
        const connections = yield* Effect.acquireRelease(
          Effect.sync(() => vi.spyOn(tls, "connect")),
          (spy) => Effect.sync(() => spy.mockRestore())
        )
        const tags = yield* Effect.forEach(registries, (registry) => {
          const tag = randomTag()
          return Effect.as(
            builder.build({ archive: checkpoint.tar, imageName: `${registry.host}/trust/counter:${tag}`, container }),
            tag
          )
        })
        // Two registries (and the token server): connections to three origins, all verified by one context.
        const options = connections.mock.calls.map(([options]) => options as tls.ConnectionOptions)
        for (const [index, registry] of registries.entries()) {
          expect(yield* registry.tags("trust/counter")).toEqual([tags[index]])
        }
        expect(options.length).toBeGreaterThanOrEqual(3)
        expect(options.filter((each) => each.ca !== undefined)).toEqual([])
        expect(options[0]!.secureContext).toBeTypeOf("object")
        expect(new Set(options.map((each) => each.secureContext)).size).toBe(1)
      }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

    it.effect("speaks HTTP/1.1 to the registry, with REGISTRY_CA_FILE and with REGISTRY_INSECURE=true", () =>
      Effect.gen(function*() {
        const { checkpoint, htpasswd } = yield* Fixture
        const repository = `http1/counter-${randomTag()}`
        const settings = [trustedRegistry(htpasswd), {
          REGISTRY_AUTH_FILE: htpasswd.authFile,
          REGISTRY_INSECURE: "true"
        }]
        for (const each of settings) {
          yield* build({ archive: checkpoint.tar, imageName: `${htpasswd.host}/${repository}:${randomTag()}` }, each)
        }
        // The registry's access log: `... "PUT /v2/<repository>/blobs/uploads/<id>?<query> HTTP/1.1" 201 ...`.
        const requests = htpasswd.logs().split("\n").filter((line) => line.includes(` /v2/${repository}/`))
        const uploads = requests.filter((line) => /"(PATCH|PUT) \/v2\/\S+\/blobs\/uploads\//.test(line))
        expect(uploads.length).toBeGreaterThanOrEqual(2 * settings.length)
        expect(requests.filter((line) => !/ HTTP\/1\.1" /.test(line))).toEqual([])
      }).pipe(Effect.provide(NodeContext.layer)))

    it.effect("pushing the same archive again (blobs already there) gives the same layer and a valid manifest", () =>
      Effect.gen(function*() {
        const { checkpoint, token } = yield* Fixture
        const first = yield* pushAndVerify(token, checkpoint.tar, {
          layerMediaType: "application/vnd.oci.image.layer.v1.tar",
          diffId: checkpoint.tarDigest,
          repository: "again/counter"
        })
        const second = yield* pushAndVerify(token, checkpoint.tar, {
          layerMediaType: "application/vnd.oci.image.layer.v1.tar",
          diffId: checkpoint.tarDigest,
          repository: "again/counter"
        })
        expect(second.tag).not.toBe(first.tag)
      }).pipe(Effect.provide(NodeContext.layer)))

    it.effect("wrong credentials fail the push phase with the registry's answer and never show the password", () =>
      Effect.gen(function*() {
        const { checkpoint, htpasswd, token } = yield* Fixture
        for (const registry of [htpasswd, token]) {
          const error = yield* Effect.flip(
            build({ archive: checkpoint.tar, imageName: `${registry.host}/denied/counter:${randomTag()}` }, {
              ...trustedRegistry(registry, registry.wrongAuthFile)
            })
          )
          expect(error._tag).toBe("ImageBuildError")
          expect(error.step).toBe("push")
          expect(error.message).toContain("registry refused credentials (401 UNAUTHORIZED)")
          const shown = [error.message, String(error), Cause.pretty(Cause.fail(error)), registry.logs()].join("\n")
          for (const secret of [registry.password, registry.wrongPassword]) {
            expect(shown).not.toContain(secret)
            expect(shown).not.toContain(Buffer.from(`${registry.username}:${secret}`).toString("base64"))
          }
          const tags = yield* Effect.either(registry.tags("denied/counter"))
          expect(tags._tag === "Left" || tags.right.length === 0).toBe(true)
        }
      }).pipe(Effect.provide(NodeContext.layer)))

    it.effect("without credentials the error says that the auth file has none for the registry", () =>
      Effect.gen(function*() {
        const { checkpoint, htpasswd } = yield* Fixture
        const error = yield* Effect.flip(
          build({ archive: checkpoint.tar, imageName: `${htpasswd.host}/anonymous/counter:x` }, {
            REGISTRY_CA_FILE: htpasswd.caFile
          })
        )
        expect(error.step).toBe("push")
        expect(error.message).toContain(
          `registry requires credentials (401 UNAUTHORIZED); REGISTRY_AUTH_FILE has no credentials for ${htpasswd.host}`
        )
      }).pipe(Effect.provide(NodeContext.layer)))

    it.effect("an unknown CA fails the push with the TLS reason; REGISTRY_INSECURE=true skips verification", () =>
      Effect.gen(function*() {
        const { checkpoint, htpasswd } = yield* Fixture
        const imageName = `${htpasswd.host}/insecure/counter:${randomTag()}`
        const error = yield* Effect.flip(
          build({ archive: checkpoint.tar, imageName }, { REGISTRY_AUTH_FILE: htpasswd.authFile })
        )
        expect(error.step).toBe("push")
        expect(error.message).toMatch(/cannot reach 127\.0\.0\.1:\d+ .*(certificate|CERT)/i)
        const built = yield* build({ archive: checkpoint.tar, imageName }, {
          REGISTRY_AUTH_FILE: htpasswd.authFile,
          REGISTRY_INSECURE: "true"
        })
        expect((yield* htpasswd.manifest("insecure/counter", imageName.split(":").at(-1)!)).digest).toBe(built.digest)
      }).pipe(Effect.provide(NodeContext.layer)))

    it.effect("REGISTRY_INSECURE=true falls back to plain HTTP, which is refused otherwise", () =>
      Effect.gen(function*() {
        const fs = yield* FileSystem.FileSystem
        const { checkpoint } = yield* Fixture
        const dir = yield* fs.makeTempDirectoryScoped({ prefix: "plain-registry-" })
        const plain = yield* startRegistry({ dir: `${dir}/registry`, auth: "token", tls: false })
        expect(plain.url).toBe(`http://${plain.host}`)
        const tag = randomTag()
        const imageName = `${plain.host}/plain/counter:${tag}`
        const error = yield* Effect.flip(build({ archive: checkpoint.tar, imageName }, trustedRegistry(plain)))
        expect(error.step).toBe("push")
        expect(error.message).toContain(`registry ping failed: cannot reach ${plain.host}`)
        const built = yield* build({ archive: checkpoint.tar, imageName }, {
          REGISTRY_AUTH_FILE: plain.authFile,
          REGISTRY_INSECURE: "true"
        })
        const manifest = yield* plain.manifest("plain/counter", tag)
        expect(manifest.digest).toBe(built.digest)
        expect(manifest.json.layers[0]!.digest).toBe(checkpoint.tarDigest)

        // Over plain HTTP the socket holds a chunk until it is sent, while the next one waits in the body and the one
        // after is read into the reader's ring of reused buffers. Behind a slow link the socket is full, so it does
        // hold them: a 24 MiB archive goes round the ring eight times, and the registry checks every byte's digest.
        const large = `${dir}/large.tar`
        yield* fs.copyFile(checkpoint.tar, large)
        yield* fs.writeFile(`${dir}/pages-big.img`, randomBytes(24 * 1024 * 1024))
        yield* Effect.promise(() => replace({ cwd: dir, file: large }, ["pages-big.img"]))
        const slow = yield* slowLinkTo(plain, dir)
        const largeTag = randomTag()
        const largeBuilt = yield* build({ archive: large, imageName: `${slow.host}/plain/counter:${largeTag}` }, {
          REGISTRY_AUTH_FILE: slow.authFile,
          REGISTRY_INSECURE: "true"
        })
        const largeDigest = yield* fileDigest(large)
        const largeLayer = (yield* plain.manifest("plain/counter", largeTag)).json.layers[0]!
        expect(largeBuilt.size).toBe(Number((yield* fs.stat(large)).size))
        expect(largeLayer.digest).toBe(largeDigest)
        const stored = yield* plain.blobDigest("plain/counter", largeDigest)
        expect(stored).toEqual({ digest: largeDigest, size: largeBuilt.size })
      }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

    it.effect("a corrupt or missing archive fails the read archive phase and commits nothing", () =>
      Effect.gen(function*() {
        const fs = yield* FileSystem.FileSystem
        const { checkpoint, token } = yield* Fixture
        const corrupt = `${checkpoint.dir}/corrupt.tar.gz`
        const gzip = yield* fs.readFile(checkpoint.gzip)
        yield* fs.writeFile(corrupt, Buffer.concat([gzip.subarray(0, 2000), randomBytes(50_000)]))
        const notTar = `${checkpoint.dir}/not-a-tar`
        yield* fs.writeFile(notTar, randomBytes(100_000))
        for (const archive of [corrupt, notTar, `${checkpoint.dir}/missing.tar`]) {
          const error = yield* Effect.flip(
            build({ archive, imageName: `${token.host}/broken/counter:${randomTag()}` }, trustedRegistry(token))
          )
          expect(error.step, archive).toBe("read archive")
          expect(error.message, archive).toContain(`cannot read the checkpoint archive ${archive}`)
        }
        const tags = yield* Effect.either(token.tags("broken/counter"))
        expect(tags._tag === "Left" || tags.right.length === 0).toBe(true)
      }).pipe(Effect.provide(NodeContext.layer)))
  })
})
