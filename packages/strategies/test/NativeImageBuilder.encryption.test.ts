import { ContainerName, ContainerRef, ImageBuilder, Namespace, PodName } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { Command } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { randomBytes } from "node:crypto"
import { readFileSync } from "node:fs"
import { zstdCompressSync } from "node:zlib"
import { describeE2E } from "../../../test/harness/E2E.ts"
import { startRegistry } from "../../../test/harness/Registry.ts"
import type { TestRegistry } from "../../../test/harness/Registry.ts"
import {
  decompressLayer,
  nativeBuilder,
  ociLayoutLayer,
  openLayer,
  sha256,
  skopeo,
  slowLinkTo,
  trustedRegistry,
  writeKeyPair,
  writeMarkedArchive
} from "./BuilderFixtures.ts"
import type { KeyPair } from "./BuilderFixtures.ts"

const marker = "CHECKPOINTER-SECRET-MARKER-9131"
const tarType = "application/vnd.oci.image.layer.v1.tar"

class Fixture extends Context.Tag("test/EncryptionFixture")<Fixture, {
  readonly dir: string
  readonly registry: TestRegistry
  readonly rsa: KeyPair
  readonly ec: KeyPair
  readonly stranger: KeyPair
  readonly archive: string
  readonly archiveBytes: Uint8Array
  readonly zstdArchive: string
}>() {}

const FixtureLive = Layer.scoped(
  Fixture,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "native-encryption-" })
    const registry = yield* startRegistry({ dir: `${dir}/registry`, auth: "htpasswd" })
    yield* fs.makeDirectory(`${dir}/keys`)
    yield* fs.makeDirectory(`${dir}/stranger`)
    const rsa = yield* writeKeyPair(`${dir}/keys`, "rsa")
    const ec = yield* writeKeyPair(`${dir}/keys`, "p256")
    const stranger = yield* writeKeyPair(`${dir}/stranger`, "p384")
    const archive = yield* writeMarkedArchive(dir, marker)
    const archiveBytes = yield* fs.readFile(archive)
    const zstdArchive = `${dir}/checkpoint.tar.zst`
    yield* fs.writeFile(zstdArchive, zstdCompressSync(archiveBytes))
    return { dir, registry, rsa, ec, stranger, archive, archiveBytes, zstdArchive }
  })
).pipe(Layer.provide(NodeContext.layer))

const container = ContainerRef.make({
  namespace: Namespace.make("default"),
  pod: PodName.make("vault"),
  container: ContainerName.make("holder")
})

/**
 * Builds `archive` with the native builder configured by `settings` and returns what the registry serves; `via` is
 * the address the builder reaches the registry at, when not its own.
 */
const push = (archive: string, settings: Record<string, string>, to?: TestRegistry, via?: string) =>
  Effect.gen(function*() {
    const registry = to ?? (yield* Fixture).registry
    const repository = "checkpoints/sealed"
    const tag = randomBytes(8).toString("hex")
    const imageName = `${via ?? registry.host}/${repository}:${tag}`
    const built = yield* Effect.flatMap(ImageBuilder, (b) => b.build({ archive, imageName, container })).pipe(
      Effect.provide(nativeBuilder({ ...trustedRegistry(registry), ...settings }))
    )
    const manifest = yield* registry.manifest(repository, tag)
    expect(manifest.digest).toBe(built.digest)
    expect(manifest.json.layers).toHaveLength(1)
    const layer = manifest.json.layers[0]! as (typeof manifest.json.layers)[number] & {
      readonly annotations?: Readonly<Record<string, string>>
    }
    const layerBytes = yield* registry.blob(repository, layer.digest)
    expect(sha256(layerBytes)).toBe(layer.digest)
    expect(layerBytes.length).toBe(layer.size)
    expect(built.size).toBe(layer.size)
    const config = JSON.parse(Buffer.from(yield* registry.blob(repository, manifest.json.config.digest)).toString())
    return { imageName, manifest, layer, layerBytes, config }
  })

/** `skopeo copy` from the registry into an OCI layout, decrypting with a private key (independent ocicrypt code). */
const skopeoCopy = (imageName: string, privateKeyFile: string | undefined) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const { dir, registry } = yield* Fixture
    const target = yield* fs.makeTempDirectory({ directory: dir, prefix: "oci-" })
    const result = yield* skopeo([
      "copy",
      "--src-cert-dir",
      registry.certDir,
      "--src-creds",
      `${registry.username}:${registry.password}`,
      ...(privateKeyFile === undefined ? [] : ["--decryption-key", privateKeyFile]),
      `docker://${imageName}`,
      `oci:${target}:copy`
    ])
    return { ...result, target }
  })

/** The openssl command lines of README.md's shell blocks, in order. */
const readmeOpensslCommands = (): ReadonlyArray<string> => {
  const readme = readFileSync(new URL("../../../README.md", import.meta.url), "utf8")
  const section = readme.slice(readme.indexOf("## Encryption and compression"))
  const encryption = section.slice(0, section.indexOf("\n## ", 1))
  const blocks = [...encryption.matchAll(/```(?:sh|shell|bash)\n([\s\S]*?)```/g)].map((match) => match[1]!)
  return blocks.flatMap((block) => block.split("\n")).filter((line) => line.startsWith("openssl "))
}

describeE2E("NativeImageBuilder encryption and compression against a real registry", () => {
  layer(FixtureLive, { timeout: "180 seconds", excludeTestServices: true })((it) => {
    it.effect("encrypts for RSA and EC recipients: no plaintext in the registry, skopeo decrypts with either key", () =>
      Effect.gen(function*() {
        const { archive, archiveBytes, ec, rsa, stranger } = yield* Fixture
        expect(Buffer.from(archiveBytes).includes(marker)).toBe(true)
        const pushed = yield* push(archive, { CHECKPOINT_ENCRYPTION_KEYS: `${rsa.publicFile}, ${ec.publicFile}` })
        expect(pushed.layer.mediaType).toBe(`${tarType}+encrypted`)
        expect(pushed.layer.size).toBe(archiveBytes.length)
        expect(Object.keys(pushed.layer.annotations ?? {}).sort()).toEqual([
          "org.opencontainers.image.enc.keys.jwe",
          "org.opencontainers.image.enc.pubopts"
        ])
        expect(Buffer.from(pushed.layerBytes).includes(marker)).toBe(false)
        expect(pushed.manifest.raw).not.toContain(marker)
        expect(pushed.config.rootfs.diff_ids).toEqual([sha256(archiveBytes)])
        expect(pushed.manifest.json.annotations).toMatchObject({
          "io.kubernetes.cri-o.annotations.checkpoint.name": "holder",
          "org.criu.checkpoint.container.name": "secret-holder",
          "io.podman.annotations.checkpoint.runtime.name": "runc"
        })
        for (const key of [rsa, ec]) {
          const opened = yield* openLayer(pushed.layerBytes, pushed.layer.annotations!, key.privatePem)
          expect(opened.hmacValid, key.kind).toBe(true)
          expect(opened.plaintext.equals(Buffer.from(archiveBytes)), key.kind).toBe(true)
          const copied = yield* skopeoCopy(pushed.imageName, key.privateFile)
          expect(copied.exitCode, copied.output).toBe(0)
          const layer = yield* ociLayoutLayer(copied.target)
          expect(layer.descriptor.mediaType, key.kind).toBe(tarType)
          expect(layer.descriptor.digest, key.kind).toBe(sha256(archiveBytes))
          expect(Buffer.from(layer.bytes).equals(Buffer.from(archiveBytes)), key.kind).toBe(true)
        }
        const refused = yield* skopeoCopy(pushed.imageName, stranger.privateFile)
        expect(refused.exitCode).not.toBe(0)
        expect(refused.output).toMatch(/decrypt|private key/i)
      }).pipe(Effect.provide(NodeContext.layer)))

    it.effect("zstd before encryption: +zstd+encrypted; skopeo decrypts to the zstd layer of the archive", () =>
      Effect.gen(function*() {
        const { archive, archiveBytes, ec } = yield* Fixture
        const pushed = yield* push(archive, {
          CHECKPOINT_ENCRYPTION_KEYS: ec.publicFile,
          CHECKPOINT_LAYER_COMPRESSION: "zstd"
        })
        expect(pushed.layer.mediaType).toBe(`${tarType}+zstd+encrypted`)
        expect(pushed.config.rootfs.diff_ids).toEqual([sha256(archiveBytes)])
        expect(Buffer.from(pushed.layerBytes).includes(marker)).toBe(false)
        const copied = yield* skopeoCopy(pushed.imageName, ec.privateFile)
        expect(copied.exitCode, copied.output).toBe(0)
        const layer = yield* ociLayoutLayer(copied.target)
        expect(layer.descriptor.mediaType).toBe(`${tarType}+zstd`)
        expect(decompressLayer("zstd", layer.bytes).equals(Buffer.from(archiveBytes))).toBe(true)
      }).pipe(Effect.provide(NodeContext.layer)))

    it.effect("an archive compressed already is encrypted as it is (+zstd+encrypted, same bytes once decrypted)", () =>
      Effect.gen(function*() {
        const fs = yield* FileSystem.FileSystem
        const { archiveBytes, rsa, zstdArchive } = yield* Fixture
        const pushed = yield* push(zstdArchive, {
          CHECKPOINT_ENCRYPTION_KEYS: rsa.publicFile,
          CHECKPOINT_LAYER_COMPRESSION: "gzip"
        })
        expect(pushed.layer.mediaType).toBe(`${tarType}+zstd+encrypted`)
        expect(pushed.config.rootfs.diff_ids).toEqual([sha256(archiveBytes)])
        const copied = yield* skopeoCopy(pushed.imageName, rsa.privateFile)
        expect(copied.exitCode, copied.output).toBe(0)
        const layer = yield* ociLayoutLayer(copied.target)
        expect(sha256(layer.bytes)).toBe(sha256(yield* fs.readFile(zstdArchive)))
      }).pipe(Effect.provide(NodeContext.layer)))

    it.effect("compression alone: zstd and gzip layers, digest of the compressed bytes, diff_id of the tar", () =>
      Effect.gen(function*() {
        const { archive, archiveBytes } = yield* Fixture
        for (const kind of ["zstd", "gzip"] as const) {
          const pushed = yield* push(archive, { CHECKPOINT_LAYER_COMPRESSION: kind })
          expect(pushed.layer).toEqual({
            mediaType: `${tarType}+${kind}`,
            digest: sha256(pushed.layerBytes),
            size: pushed.layerBytes.length
          })
          expect(pushed.config.rootfs.diff_ids).toEqual([sha256(archiveBytes)])
          const unpacked = decompressLayer(kind, pushed.layerBytes)
          expect(unpacked.equals(Buffer.from(archiveBytes)), kind).toBe(true)
          const copied = yield* skopeoCopy(pushed.imageName, undefined)
          expect(copied.exitCode, copied.output).toBe(0)
          expect((yield* ociLayoutLayer(copied.target)).descriptor.digest, kind).toBe(pushed.layer.digest)
        }
      }).pipe(Effect.provide(NodeContext.layer)))

    it.effect("the README's openssl commands make keys that the builder takes and skopeo decrypts with", () =>
      Effect.gen(function*() {
        const fs = yield* FileSystem.FileSystem
        const { archive, archiveBytes, dir } = yield* Fixture
        const commands = readmeOpensslCommands()
        expect(commands).toHaveLength(4)
        const keys = yield* fs.makeTempDirectory({ directory: dir, prefix: "readme-keys-" })
        for (const command of commands) {
          yield* Command.exitCode(Command.make("sh", "-c", command).pipe(Command.workingDirectory(keys))).pipe(
            Effect.filterOrDieMessage((code) => code === 0, `${command} failed`)
          )
        }
        const outputs = commands.map((command) => `${keys}/${/-out (\S+)/.exec(command)![1]}`)
        const publicFiles = outputs.filter((file) => file.endsWith(".pub.pem"))
        const privateFiles = outputs.filter((file) => !file.endsWith(".pub.pem"))
        expect(publicFiles).toHaveLength(2)
        const pushed = yield* push(archive, { CHECKPOINT_ENCRYPTION_KEYS: publicFiles.join(",") })
        expect(pushed.layer.mediaType).toBe(`${tarType}+encrypted`)
        for (const privateFile of privateFiles) {
          const copied = yield* skopeoCopy(pushed.imageName, privateFile)
          expect(copied.exitCode, copied.output).toBe(0)
          expect(sha256((yield* ociLayoutLayer(copied.target)).bytes), privateFile).toBe(sha256(archiveBytes))
        }
      }).pipe(Effect.provide(NodeContext.layer)))

    // Over a slow link the socket holds the ciphertext it was given, in a slot of the cipher's ring, until it is sent.
    it.effect("a 24 MiB archive over a slow plain-HTTP link (each cipher slot used many times) decrypts right", () =>
      Effect.gen(function*() {
        const fs = yield* FileSystem.FileSystem
        const { dir, ec } = yield* Fixture
        const work = yield* fs.makeTempDirectoryScoped({ directory: dir, prefix: "large-" })
        const archive = yield* writeMarkedArchive(work, marker, 24 * 1024 * 1024)
        const archiveBytes = yield* fs.readFile(archive)
        const plain = yield* startRegistry({ dir: `${work}/registry`, auth: "token", tls: false })
        const slow = yield* slowLinkTo(plain, work)
        const { layer, layerBytes } = yield* push(
          archive,
          {
            REGISTRY_INSECURE: "true",
            REGISTRY_AUTH_FILE: slow.authFile,
            CHECKPOINT_ENCRYPTION_KEYS: ec.publicFile
          },
          plain,
          slow.host
        )
        expect(layerBytes.length).toBe(archiveBytes.length)
        expect(Buffer.from(layerBytes).includes(marker)).toBe(false)
        const opened = yield* openLayer(layerBytes, layer.annotations!, ec.privatePem)
        expect(opened.hmacValid).toBe(true)
        expect(opened.plaintext.equals(Buffer.from(archiveBytes))).toBe(true)
      }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))
  })
})
