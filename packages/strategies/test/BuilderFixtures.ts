import { Command, FileSystem, Path } from "@effect/platform"
import { NodeFileSystem } from "@effect/platform-node"
import type { PlatformError } from "@effect/platform/Error"
import { ConfigProvider, Effect, Layer, Stream } from "effect"
import { flattenedDecrypt, generalDecrypt } from "jose"
import type { FlattenedJWE, GeneralJWE } from "jose"
import {
  createDecipheriv,
  createHash,
  createHmac,
  createPrivateKey,
  generateKeyPairSync,
  randomBytes,
  timingSafeEqual
} from "node:crypto"
import net from "node:net"
import { gunzipSync, zstdDecompressSync } from "node:zlib"
import { create } from "tar"
import { writeAuthFile } from "../../../test/harness/Registry.ts"
import type { TestRegistry } from "../../../test/harness/Registry.ts"
import * as NativeImageBuilder from "../src/native/NativeImageBuilder.ts"

/** The native builder as the server makes it, configured by `settings` alone (not the environment). */
export const nativeBuilder = (settings: Readonly<Record<string, string>>) =>
  NativeImageBuilder.layer.pipe(
    Layer.provide(NodeFileSystem.layer),
    Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(settings))))),
    Layer.orDie
  )

/** The settings that make the native builder trust `registry` and log in to it. */
export const trustedRegistry = (registry: TestRegistry, authFile = registry.authFile) => ({
  REGISTRY_AUTH_FILE: authFile,
  REGISTRY_CA_FILE: registry.caFile
})

export const sha256 = (bytes: Uint8Array) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`

/**
 * The frames of a zstd stream, split by their headers and block headers (RFC 8878, section 3.1.1): where each starts
 * and ends, and the content size its header declares (undefined when it declares none).
 */
export const zstdFrameHeaders = (bytes: Uint8Array) => {
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)
  const frames: Array<{ readonly start: number; readonly end: number; readonly contentSize: number | undefined }> = []
  for (let start = 0; start < view.length;) {
    if (view.readUInt32LE(start) !== 0xfd2fb528) throw new Error(`no zstd frame at byte ${start}`)
    const descriptor = view[start + 4]!
    const singleSegment = (descriptor & 0x20) !== 0
    const contentSizeBytes = [singleSegment ? 1 : 0, 2, 4, 8][descriptor >> 6]!
    const dictionaryIdBytes = [0, 1, 2, 4][descriptor & 0x03]!
    const contentSizeAt = start + 5 + (singleSegment ? 0 : 1) + dictionaryIdBytes
    const contentSize = contentSizeBytes === 0
      ? undefined
      : contentSizeBytes === 8
      ? Number(view.readBigUInt64LE(contentSizeAt))
      : view.readUIntLE(contentSizeAt, contentSizeBytes) + (contentSizeBytes === 2 ? 256 : 0)
    let offset = contentSizeAt + contentSizeBytes
    for (let last = false; !last;) {
      const header = view.readUIntLE(offset, 3)
      last = (header & 1) === 1
      offset += 3 + (((header >> 1) & 3) === 1 ? 1 : header >> 3)
    }
    if ((descriptor & 0x04) !== 0) offset += 4
    frames.push({ start, end: offset, contentSize })
    start = offset
  }
  return frames
}

/** Each frame of a zstd stream, decompressed on its own: Node's zstd decompressor may stop at the end of a frame. */
export const zstdFrames = (bytes: Uint8Array): ReadonlyArray<Buffer> =>
  zstdFrameHeaders(bytes).map(({ end, start }) => zstdDecompressSync(bytes.subarray(start, end)))

/** A compressed layer's tar: the native builder writes zstd frames and gzip members of 4 MiB. */
export const decompressLayer = (kind: "gzip" | "zstd", bytes: Uint8Array): Buffer =>
  kind === "gzip" ? gunzipSync(bytes) : Buffer.concat(zstdFrames(bytes))

export type KeyKind = "rsa" | "p256" | "p384"

export interface KeyPair {
  readonly kind: KeyKind
  readonly publicFile: string
  readonly privateFile: string
  readonly privatePem: string
}

const generate = (kind: KeyKind) =>
  kind === "rsa"
    ? generateKeyPairSync("rsa", { modulusLength: 2048 })
    : generateKeyPairSync("ec", { namedCurve: kind === "p256" ? "prime256v1" : "secp384r1" })

/** A recipient's key pair as PEM files (SPKI public key, PKCS#8 private key), as `openssl` would write them. */
export const writeKeyPair = (dir: string, kind: KeyKind) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const pair = generate(kind)
    const privatePem = pair.privateKey.export({ type: "pkcs8", format: "pem" }).toString()
    const publicFile = `${dir}/${kind}-public.pem`
    const privateFile = `${dir}/${kind}-private.pem`
    yield* fs.writeFileString(publicFile, pair.publicKey.export({ type: "spki", format: "pem" }).toString())
    yield* fs.writeFileString(privateFile, privatePem)
    return { kind, publicFile, privateFile, privatePem } satisfies KeyPair
  })

/** A TCP proxy to `target` (`host:port`) that forwards what its clients send slowly. Closed with the scope. */
const slowProxy = (target: string) =>
  Effect.acquireRelease(
    Effect.async<{ readonly server: net.Server; readonly sockets: Set<net.Socket> }>((resume) => {
      const { hostname, port } = new URL(`http://${target}`)
      const sockets = new Set<net.Socket>()
      const server = net.createServer((client) => {
        const upstream = net.connect(Number(port), hostname)
        for (const socket of [client, upstream]) {
          sockets.add(socket)
          socket.on("close", () => sockets.delete(socket))
          socket.on("error", () => {
            client.destroy()
            upstream.destroy()
          })
        }
        upstream.pipe(client)
        client.on("data", (chunk) => {
          client.pause()
          upstream.write(chunk)
          setTimeout(() => client.resume(), 2)
        })
        client.on("end", () => upstream.end())
      })
      server.listen(0, "127.0.0.1", () => resume(Effect.succeed({ server, sockets })))
    }),
    ({ server, sockets }) =>
      Effect.async<void>((resume) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map(({ server }) => `127.0.0.1:${(server.address() as net.AddressInfo).port}`))

/**
 * A slow link to `registry`: a TCP proxy on loopback that forwards what its clients send 64 KiB at most every 2 ms,
 * so that a client's socket fills and keeps what it was given to write until the proxy takes it, and a docker config
 * in `dir` with the registry's credentials for the proxy's address.
 */
export const slowLinkTo = (registry: TestRegistry, dir: string) =>
  Effect.gen(function*() {
    const host = yield* slowProxy(registry.host)
    const authFile = yield* writeAuthFile(`${dir}/slow-link-auth.json`, host, registry.username, registry.password)
    return { host, authFile } as const
  })

/** A small tar shaped like a checkpoint archive whose CRIU pages contain `marker` in clear, many times. */
export const writeMarkedArchive = (dir: string, marker: string, pagesSize = 3 * 1024 * 1024) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const content = path.join(dir, "content")
    yield* fs.makeDirectory(path.join(content, "checkpoint"), { recursive: true })
    yield* fs.writeFileString(
      path.join(content, "config.dump"),
      JSON.stringify({ name: "secret-holder", runtime: "runc", rootfsImageName: "localhost/busybox:test" })
    )
    yield* fs.writeFileString(
      path.join(content, "spec.dump"),
      JSON.stringify({ ociVersion: "1.2.0", annotations: { "io.container.manager": "libpod" } })
    )
    const page = () => Buffer.concat([randomBytes(65536 - 64), Buffer.from(marker.padEnd(64, "."))])
    const pages = Buffer.concat(Array.from({ length: Math.ceil(pagesSize / 65536) }, page))
    yield* fs.writeFile(path.join(content, "checkpoint", "pages-1.img"), pages)
    const file = path.join(dir, "checkpoint.tar")
    yield* Effect.promise(() =>
      create({ file, cwd: content, portable: true }, ["config.dump", "spec.dump", "checkpoint"])
    )
    yield* fs.remove(content, { recursive: true })
    return file
  })

/** What a recipient recovers from the layer annotations, read by hand from the ocicrypt formats. */
export interface Opened {
  readonly jwe: FlattenedJWE | GeneralJWE
  /** The JWE's protected header, decoded. */
  readonly protectedHeader: Record<string, unknown>
  readonly privateOptions: {
    readonly symkey: string
    readonly digest: string
    readonly cipheroptions: { readonly nonce: string }
  }
  readonly publicOptions: { readonly cipher: string; readonly hmac: string; readonly cipheroptions: object }
  readonly plaintext: Buffer
  /** Whether the ciphertext's HMAC-SHA256 under the symmetric key equals the one in the public options. */
  readonly hmacValid: boolean
}

const fromBase64 = (text: string) => Buffer.from(text, "base64")

/**
 * Decrypts an ocicrypt layer with a private key, independently of the code under test: jose for the JWE,
 * node:crypto for AES-256-CTR and the HMAC.
 */
export const openLayer = (
  ciphertext: Uint8Array,
  annotations: Readonly<Record<string, string>>,
  privatePem: string
) =>
  Effect.promise(async (): Promise<Opened> => {
    const jwe = JSON.parse(fromBase64(annotations["org.opencontainers.image.enc.keys.jwe"]!).toString()) as
      | FlattenedJWE
      | GeneralJWE
    const key = createPrivateKey(privatePem)
    const decrypted = "recipients" in jwe ? await generalDecrypt(jwe, key) : await flattenedDecrypt(jwe, key)
    const privateOptions = JSON.parse(Buffer.from(decrypted.plaintext).toString()) as Opened["privateOptions"]
    const publicOptions = JSON.parse(
      fromBase64(annotations["org.opencontainers.image.enc.pubopts"]!).toString()
    ) as Opened["publicOptions"]
    const symkey = fromBase64(privateOptions.symkey)
    const mac = createHmac("sha256", symkey).update(ciphertext).digest()
    const expected = fromBase64(publicOptions.hmac)
    const decipher = createDecipheriv("aes-256-ctr", symkey, fromBase64(privateOptions.cipheroptions.nonce))
    const plaintext = Buffer.concat([decipher.update(ciphertext), decipher.final()])
    return {
      jwe,
      protectedHeader: JSON.parse(Buffer.from(jwe.protected ?? "", "base64url").toString() || "{}"),
      privateOptions,
      publicOptions,
      plaintext,
      hmacValid: mac.length === expected.length && timingSafeEqual(mac, expected)
    }
  })

/** `skopeo ARGS`: exit code and output, without judging them. */
export const skopeo = (args: ReadonlyArray<string>) =>
  Effect.scoped(Effect.gen(function*() {
    const process = yield* Command.start(Command.make("skopeo", ...args))
    const text = (bytes: Stream.Stream<Uint8Array, PlatformError>) => Stream.mkString(Stream.decodeText(bytes))
    const [stdout, stderr, exitCode] = yield* Effect.all(
      [text(process.stdout), text(process.stderr), process.exitCode],
      { concurrency: "unbounded" }
    )
    return { exitCode, output: `${stdout}${stderr}` }
  }))

/** The single layer of the image in an OCI layout directory (as `skopeo copy ... oci:DIR` writes it), and its file. */
export const ociLayoutLayerFile = (dir: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const blobFile = (digest: string) => `${dir}/blobs/${digest.replace(":", "/")}`
    const index = JSON.parse(yield* fs.readFileString(`${dir}/index.json`)) as {
      readonly manifests: ReadonlyArray<{ readonly digest: string }>
    }
    const manifest = JSON.parse(yield* fs.readFileString(blobFile(index.manifests[0]!.digest))) as {
      readonly layers: ReadonlyArray<{ readonly mediaType: string; readonly digest: string; readonly size: number }>
    }
    const [layer] = manifest.layers
    return { descriptor: layer!, file: blobFile(layer!.digest) }
  })

/** The same layer with its bytes (small images). */
export const ociLayoutLayer = (dir: string) =>
  Effect.flatMap(
    ociLayoutLayerFile(dir),
    ({ descriptor, file }) =>
      Effect.map(Effect.flatMap(FileSystem.FileSystem, (fs) => fs.readFile(file)), (bytes) => ({ descriptor, bytes }))
  )
