import { describeConfigError } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, ConfigProvider, Effect, Exit, Option, Stream } from "effect"
import { generateKeyPairSync, randomBytes } from "node:crypto"
import { zstdCompressSync } from "node:zlib"
import type { ArchiveDescription } from "../src/archive/ArchiveInspector.ts"
import { readArchive } from "../src/archive/ArchiveReader.ts"
import * as LayerEncoding from "../src/native/LayerEncoding.ts"
import * as LayerEncryption from "../src/native/LayerEncryption.ts"
import {
  decompressLayer,
  openLayer,
  sha256,
  writeKeyPair,
  writeMarkedArchive,
  zstdFrameHeaders,
  zstdFrames
} from "./BuilderFixtures.ts"

const marker = "CHECKPOINTER-SECRET-MARKER-4711"
const MiB = 1024 * 1024

const plainDescription = (bytes: Uint8Array): ArchiveDescription => ({
  digest: sha256(bytes),
  size: bytes.length,
  compression: "none",
  mediaType: "application/vnd.oci.image.layer.v1.tar",
  diffId: sha256(bytes),
  configDump: Option.none(),
  specDump: Option.none()
})

/** The bytes of a stream whose chunks are valid only until a few more are taken (as an upload takes them). */
const collectCopies = <E, R>(stream: Stream.Stream<Uint8Array, E, R>) =>
  Effect.map(
    Stream.runCollect(Stream.map(stream, (chunk) => Buffer.from(chunk))),
    (chunks) => Buffer.concat(Chunk.toArray(chunks))
  )

/** Runs the encoder over `bytes` (in 64 KiB chunks) and returns what it would push. */
const encode = (bytes: Uint8Array, options: LayerEncoding.LayerEncodingOptions) =>
  Effect.gen(function*() {
    const chunks = Stream.fromIterable(
      Array.from({ length: Math.ceil(bytes.length / 65536) }, (_, i) => bytes.subarray(i * 65536, (i + 1) * 65536))
    )
    const encoded = yield* LayerEncoding.encodeLayer(chunks, options)
    const pushed = yield* collectCopies(encoded.stream)
    const layer = yield* encoded.layer(plainDescription(bytes))
    return { pushed, layer }
  })

const setup = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const dir = yield* fs.makeTempDirectoryScoped({ prefix: "layer-encoding-" })
  const rsa = yield* writeKeyPair(dir, "rsa")
  const p256 = yield* writeKeyPair(dir, "p256")
  const p384 = yield* writeKeyPair(dir, "p384")
  const archive = yield* fs.readFile(yield* writeMarkedArchive(dir, marker, 512 * 1024))
  return { dir, rsa, p256, p384, archive }
})

const containsMarker = (bytes: Uint8Array) => Buffer.from(bytes).includes(marker)

describe("LayerEncryption", () => {
  it.scoped("one RSA recipient: a flattened JWE (RSA-OAEP, A256GCM) that opens to the key, nonce and digest", () =>
    Effect.gen(function*() {
      const { archive, rsa } = yield* setup
      expect(containsMarker(archive)).toBe(true)
      const recipients = yield* LayerEncryption.loadRecipients([rsa.publicFile])
      expect(recipients.map((r) => r.algorithm)).toEqual(["RSA-OAEP"])
      const { layer, pushed } = yield* encode(archive, { compression: "none", recipients })
      expect(layer.mediaType).toBe("application/vnd.oci.image.layer.v1.tar+encrypted")
      expect(layer.digest).toBe(sha256(pushed))
      expect(layer.size).toBe(archive.length)
      expect(containsMarker(pushed)).toBe(false)
      expect(Object.keys(layer.annotations ?? {}).sort()).toEqual([
        "org.opencontainers.image.enc.keys.jwe",
        "org.opencontainers.image.enc.pubopts"
      ])
      const opened = yield* openLayer(pushed, layer.annotations!, rsa.privatePem)
      expect(opened.protectedHeader).toEqual({ alg: "RSA-OAEP", enc: "A256GCM" })
      expect("recipients" in opened.jwe).toBe(false)
      expect(opened.publicOptions).toEqual({
        cipher: "AES_256_CTR_HMAC_SHA256",
        hmac: expect.any(String),
        cipheroptions: {}
      })
      expect(opened.hmacValid).toBe(true)
      expect(Buffer.from(opened.privateOptions.symkey, "base64")).toHaveLength(32)
      expect(Buffer.from(opened.privateOptions.cipheroptions.nonce, "base64")).toHaveLength(16)
      expect(opened.privateOptions.digest).toBe(sha256(archive))
      expect(opened.plaintext.equals(Buffer.from(archive))).toBe(true)
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("RSA and EC recipients: one general JWE, each private key alone opens it; tampering fails the HMAC", () =>
    Effect.gen(function*() {
      const { archive, p256, p384, rsa } = yield* setup
      const recipients = yield* LayerEncryption.loadRecipients([rsa.publicFile, p256.publicFile, p384.publicFile])
      expect(recipients.map((r) => r.algorithm)).toEqual(["RSA-OAEP", "ECDH-ES+A256KW", "ECDH-ES+A256KW"])
      const { layer, pushed } = yield* encode(archive, { compression: "none", recipients })
      for (const pair of [rsa, p256, p384]) {
        const opened = yield* openLayer(pushed, layer.annotations!, pair.privatePem)
        expect(opened.protectedHeader).toEqual({ enc: "A256GCM" })
        expect(opened.hmacValid, pair.kind).toBe(true)
        expect(opened.plaintext.equals(Buffer.from(archive)), pair.kind).toBe(true)
      }
      const opened = yield* openLayer(pushed, layer.annotations!, p256.privatePem)
      const jwe = opened.jwe
      if (!("recipients" in jwe)) return expect.fail("several recipients need the general JWE serialization")
      expect(jwe.recipients.map((r) => r.header?.alg)).toEqual(["RSA-OAEP", "ECDH-ES+A256KW", "ECDH-ES+A256KW"])
      expect(jwe.recipients.map((r) => (r.header?.epk as { crv?: string } | undefined)?.crv)).toEqual([
        undefined,
        "P-256",
        "P-384"
      ])
      const stranger = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey
      const refused = yield* Effect.exit(
        openLayer(pushed, layer.annotations!, stranger.export({ type: "pkcs8", format: "pem" }).toString())
      )
      expect(Exit.isFailure(refused)).toBe(true)
      const tampered = Buffer.from(pushed)
      tampered[1000] = tampered[1000]! ^ 1
      expect((yield* openLayer(tampered, layer.annotations!, rsa.privatePem)).hmacValid).toBe(false)
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("every image gets a fresh symmetric key and nonce", () =>
    Effect.gen(function*() {
      const { archive, p256 } = yield* setup
      const recipients = yield* LayerEncryption.loadRecipients([p256.publicFile])
      const first = yield* encode(archive, { compression: "none", recipients })
      const second = yield* encode(archive, { compression: "none", recipients })
      expect(first.layer.digest).not.toBe(second.layer.digest)
      const a = yield* openLayer(first.pushed, first.layer.annotations!, p256.privatePem)
      const b = yield* openLayer(second.pushed, second.layer.annotations!, p256.privatePem)
      expect(a.privateOptions.symkey).not.toBe(b.privateOptions.symkey)
      expect(a.privateOptions.cipheroptions.nonce).not.toBe(b.privateOptions.cipheroptions.nonce)
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("zstd then encryption: +zstd+encrypted; the options' digest is the compressed layer's", () =>
    Effect.gen(function*() {
      const { archive, rsa } = yield* setup
      const recipients = yield* LayerEncryption.loadRecipients([rsa.publicFile])
      const { layer, pushed } = yield* encode(archive, { compression: "zstd", recipients })
      expect(layer.mediaType).toBe("application/vnd.oci.image.layer.v1.tar+zstd+encrypted")
      expect(layer.digest).toBe(sha256(pushed))
      const opened = yield* openLayer(pushed, layer.annotations!, rsa.privatePem)
      expect(opened.hmacValid).toBe(true)
      expect(opened.privateOptions.digest).toBe(sha256(opened.plaintext))
      expect(decompressLayer("zstd", opened.plaintext).equals(Buffer.from(archive))).toBe(true)
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("key files: unreadable, private, too weak or of an unsupported kind are all named at once", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const { dir, p384, rsa } = yield* setup
      const write = (name: string, text: string) =>
        Effect.as(fs.writeFileString(`${dir}/${name}`, text), `${dir}/${name}`)
      const pem = (key: { export: (o: { type: "spki"; format: "pem" }) => string | Buffer }) =>
        key.export({ type: "spki", format: "pem" }).toString()
      const weak = yield* write("weak.pem", pem(generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey))
      const p521 = yield* write("p521.pem", pem(generateKeyPairSync("ec", { namedCurve: "secp521r1" }).publicKey))
      const ed = yield* write("ed.pem", pem(generateKeyPairSync("ed25519").publicKey))
      const garbage = yield* write("garbage.pem", "-----BEGIN PUBLIC KEY-----\nbm90\n-----END PUBLIC KEY-----\n")
      const text = yield* write("text.pem", "hello")
      const missing = `${dir}/missing.pem`
      const error = yield* Effect.flip(LayerEncryption.loadRecipients([
        rsa.publicFile,
        missing,
        rsa.privateFile,
        weak,
        p521,
        ed,
        garbage,
        text,
        p384.publicFile
      ]))
      const lines = describeConfigError(error)
      expect(lines).toHaveLength(7)
      expect(lines.every((line) => line.startsWith("CHECKPOINT_ENCRYPTION_KEYS: "))).toBe(true)
      expect(lines[0]).toMatch(new RegExp(`cannot read ${missing} \\(NotFound`))
      expect(lines[1]).toContain(`${rsa.privateFile} holds a private key; give the recipient's public key`)
      expect(lines[2]).toContain(`${weak} is a 1024-bit RSA key; at least 2048 bits are needed`)
      expect(lines[3]).toContain(`${p521} is an EC key on curve secp521r1; supported are P-256 and P-384`)
      expect(lines[4]).toContain(`${ed} is a ed25519 key; supported are RSA and EC (P-256, P-384)`)
      expect(lines[5]).toContain(`${garbage} is not a readable public key`)
      expect(lines[6]).toContain(`${text} is not a PEM public key`)
    }).pipe(Effect.provide(NodeContext.layer)))

  it.effect("CHECKPOINT_ENCRYPTION_KEYS is split at commas; blanks mean no encryption", () =>
    Effect.gen(function*() {
      const read = (value: string) =>
        Effect.withConfigProvider(
          LayerEncoding.encryptionKeys,
          ConfigProvider.fromMap(new Map([["CHECKPOINT_ENCRYPTION_KEYS", value]]))
        )
      expect(yield* read(" /keys/a.pem, /keys/b.pem ,")).toEqual(["/keys/a.pem", "/keys/b.pem"])
      expect(yield* read("  ")).toEqual([])
      expect(yield* Effect.withConfigProvider(LayerEncoding.encryptionKeys, ConfigProvider.fromMap(new Map())))
        .toEqual([])
    }))
})

describe("LayerEncoding compression", () => {
  it.scoped("gzip and zstd compress an uncompressed archive; the digest and size are the compressed bytes'", () =>
    Effect.gen(function*() {
      const { archive } = yield* setup
      for (const kind of ["gzip", "zstd"] as const) {
        const { layer, pushed } = yield* encode(archive, { compression: kind, recipients: [] })
        expect(layer).toEqual({
          mediaType: `application/vnd.oci.image.layer.v1.tar+${kind}`,
          digest: sha256(pushed),
          size: pushed.length
        })
        const unpacked = decompressLayer(kind, pushed)
        expect(unpacked.equals(Buffer.from(archive)), kind).toBe(true)
      }
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("the level is zstd's and gzip's own: level 1 by default, a higher level compresses text further", () =>
    Effect.gen(function*() {
      const text = Buffer.from(
        Array.from({ length: 40000 }, (_, i) => `{"id":${i},"name":"customer ${i % 977}","note":"line ${i % 131}"}\n`)
          .join("")
      )
      for (const kind of ["gzip", "zstd"] as const) {
        const sizes = []
        for (const level of [undefined, 1, kind === "gzip" ? 9 : 19]) {
          const { pushed } = yield* encode(text, { compression: kind, recipients: [], ...(level && { level }) })
          expect(decompressLayer(kind, pushed).equals(text), kind).toBe(true)
          sizes.push(pushed.length)
        }
        const [byDefault, one, highest] = sizes
        expect(byDefault, kind).toBe(one)
        expect(highest!, kind).toBeLessThan(one!)
      }
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("every frame is compressed alone, at the level asked for, however many came before it", () =>
    Effect.gen(function*() {
      const lines = Array.from({ length: 70000 }, (_, i) => `{"id":${i % 5003},"note":"line ${(i * 7) % 131}"}\n`)
      const frame = Buffer.alloc(4 * MiB, lines.join(""))
      const text = Buffer.concat([frame, frame, frame])
      for (const kind of ["gzip", "zstd"] as const) {
        // Three frames of the same bytes at the same level: three copies of the same compressed frame.
        const frameAt = (level: number) =>
          Effect.map(encode(text, { compression: kind, recipients: [], level }), ({ pushed }) => {
            expect(decompressLayer(kind, pushed).equals(text), kind).toBe(true)
            const first = pushed.subarray(0, pushed.length / 3)
            expect(Buffer.concat([first, first, first]).equals(pushed), kind).toBe(true)
            return first
          })
        const [one, six] = [yield* frameAt(1), yield* frameAt(6)]
        expect(six.equals(one), kind).toBe(false)
      }
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("an archive that is compressed already passes unchanged", () =>
    Effect.gen(function*() {
      const { archive } = yield* setup
      const zstd = zstdCompressSync(archive)
      const { layer, pushed } = yield* encode(zstd, { compression: "gzip", recipients: [] })
      expect(pushed.equals(zstd)).toBe(true)
      expect(layer).toEqual({
        mediaType: "application/vnd.oci.image.layer.v1.tar",
        digest: sha256(zstd),
        size: zstd.length
      })
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("compression is safe with the reader's reused buffers (a ring of two); 4 MiB frames stay in order", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const { dir } = yield* setup
      const file = `${dir}/random.bin`
      // Frames that compress at very different speeds finish out of order on the thread pool.
      const bytes = Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(3 * MiB, 7), randomBytes(4 * MiB + 12345)])
      yield* fs.writeFile(file, bytes)
      for (const kind of ["gzip", "zstd"] as const) {
        const encoded = yield* LayerEncoding.encodeLayer(
          readArchive(file, { chunkSize: 64 * 1024, buffers: 2 }),
          { compression: kind, recipients: [] }
        )
        const pushed = yield* collectCopies(encoded.stream)
        expect(sha256(decompressLayer(kind, pushed)), kind).toBe(sha256(bytes))
        if (kind === "zstd") {
          const sizes = [4 * MiB, 4 * MiB, 2 * MiB + 12345]
          expect(zstdFrames(pushed).map((frame) => frame.length)).toEqual(sizes)
          // Each frame was compressed in one pass, given whole: its header says how large it is.
          expect(zstdFrameHeaders(pushed).map((frame) => frame.contentSize)).toEqual(sizes)
        }
      }
    }).pipe(Effect.provide(NodeContext.layer)))
})
