import { Array as Arr, Config, ConfigError, Data, Deferred, Effect, Either, FiberId, Option, Stream } from "effect"
import { createHash } from "node:crypto"
import * as Zlib from "node:zlib"
import { layerMediaType, sniffCompression } from "../archive/ArchiveFormat.ts"
import type { Compression } from "../archive/ArchiveFormat.ts"
import type { ArchiveDescription } from "../archive/ArchiveInspector.ts"
import { encryptedMediaType, encryptionAnnotations, keysVariable, makeLayerCipher } from "./LayerEncryption.ts"
import type { LayerEncryptionError, Recipient, SealedLayer } from "./LayerEncryption.ts"

export const compressionVariable = "CHECKPOINT_LAYER_COMPRESSION"

/** CHECKPOINT_LAYER_COMPRESSION: `none` (default), `zstd` or `gzip`. */
export const compression: Config.Config<Compression> = Config.literal("none", "zstd", "gzip")(compressionVariable).pipe(
  Config.withDefault("none" as const)
)

/** CHECKPOINT_ENCRYPTION_KEYS: the recipients' public key files, comma-separated (empty: no encryption). */
export const encryptionKeys: Config.Config<ReadonlyArray<string>> = Config.string(keysVariable).pipe(
  Config.withDefault(""),
  Config.map((value) => value.split(",").map((file) => file.trim()).filter((file) => file !== ""))
)

/**
 * The Kaniko builders make their own (gzip) layer around the archive: they cannot encrypt it, nor push the archive as
 * a zstd or gzip layer. Either setting is a startup error for them rather than a setting silently not applied.
 */
export const unsupportedByKaniko = (builder: string): Config.Config<void> =>
  Config.all({ compression, encryptionKeys }).pipe(
    Config.mapOrFail(({ compression, encryptionKeys }) => {
      const problems = [
        ...(encryptionKeys.length === 0 ? [] : [
          ConfigError.InvalidData(
            [keysVariable],
            `the ${builder} builder cannot encrypt images (Kaniko cannot); use CHECKPOINT_BUILDER=native, or unset it`
          )
        ]),
        ...(compression === "none" ? [] : [
          ConfigError.InvalidData(
            [compressionVariable],
            `the ${builder} builder cannot push the archive as a ${compression} layer (Kaniko makes its own gzip ` +
              "layer around it); use CHECKPOINT_BUILDER=native, or unset it"
          )
        ])
      ]
      return Arr.match(problems, {
        onEmpty: () => Either.void,
        onNonEmpty: ([first, ...rest]) => Either.left(Arr.reduce(rest, first, ConfigError.And))
      })
    })
  )

export class LayerCompressionError extends Data.TaggedError("LayerCompressionError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export interface LayerEncodingOptions {
  readonly compression: Compression
  readonly recipients: ReadonlyArray<Recipient>
}

/** The pushed layer's descriptor. */
export interface EncodedLayer {
  readonly mediaType: string
  readonly digest: string
  readonly size: number
  readonly annotations?: Readonly<Record<string, string>>
}

const measure = () => {
  const hash = createHash("sha256")
  let size = 0
  const update = (chunk: Uint8Array) => {
    hash.update(chunk)
    size += chunk.length
  }
  const result = () => ({ digest: `sha256:${hash.digest("hex")}`, size })
  return { update, result } as const
}

/** zlib output in 256 KiB pieces (its default is 16 KiB): fewer, larger writes to the upload. */
const outputChunkSize = 256 * 1024

/**
 * A compressor fed one chunk at a time: a write completes only when zlib has consumed the chunk (so the reader may
 * reuse its buffer) and yields the output that is ready; `end` yields the rest.
 */
const makeCompressor = (kind: Exclude<Compression, "none">) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const stream = kind === "gzip"
        ? Zlib.createGzip({ level: 1, chunkSize: outputChunkSize })
        : Zlib.createZstdCompress({ chunkSize: outputChunkSize })
      const ready: Array<Uint8Array> = []
      stream.on("data", (chunk: Buffer) => ready.push(chunk))
      stream.on("error", () => undefined)
      const taken = () => ready.splice(0)
      const failed = (cause: Error) =>
        new LayerCompressionError({ message: `${kind} compression failed: ${cause.message}`, cause })
      const write = (chunk: Uint8Array) =>
        Effect.async<ReadonlyArray<Uint8Array>, LayerCompressionError>((resume) => {
          stream.write(chunk, (error) => resume(error ? Effect.fail(failed(error)) : Effect.sync(taken)))
        })
      const end = Effect.async<ReadonlyArray<Uint8Array>, LayerCompressionError>((resume) => {
        const onEnd = () => {
          stream.off("error", onError)
          resume(Effect.sync(taken))
        }
        const onError = (error: Error) => {
          stream.off("end", onEnd)
          resume(Effect.fail(failed(error)))
        }
        stream.once("end", onEnd)
        stream.once("error", onError)
        stream.end()
      })
      return { write, end, destroy: () => stream.destroy() } as const
    }),
    (compressor) => Effect.sync(compressor.destroy)
  )

/**
 * Compresses the layer while it streams, unless the archive is compressed already (its first bytes tell): then
 * the bytes pass unchanged. `result` is None when they passed.
 */
const compressionStage = (kind: Exclude<Compression, "none">) => {
  const output = measure()
  let compressing: boolean | undefined
  const apply = <E, R>(
    bytes: Stream.Stream<Uint8Array, E, R>
  ): Stream.Stream<Uint8Array, E | LayerCompressionError, R> =>
    Stream.unwrapScoped(Effect.map(makeCompressor(kind), (compressor) => {
      const compressed = (pieces: Effect.Effect<ReadonlyArray<Uint8Array>, LayerCompressionError>) =>
        Effect.tap(pieces, (ready) => ready.forEach(output.update))
      const body = Stream.mapEffect(bytes, (chunk) => {
        compressing ??= sniffCompression(chunk) === "none"
        return compressing ? compressed(compressor.write(chunk)) : Effect.succeed<ReadonlyArray<Uint8Array>>([chunk])
      })
      const tail = Stream.fromEffect(
        Effect.suspend(() =>
          compressing === true ? compressed(compressor.end) : Effect.succeed<ReadonlyArray<Uint8Array>>([])
        )
      )
      return Stream.flattenIterables(Stream.concat(body, tail))
    }))
  const result = () =>
    compressing === true ? Option.some({ mediaType: layerMediaType(kind), ...output.result() }) : Option.none()
  return { apply, result } as const
}

/** Encrypts the layer while it streams; `result` is the ciphertext's descriptor and the recipients' annotations. */
const encryptionStage = (recipients: Arr.NonEmptyReadonlyArray<Recipient>) => {
  const sealed = Deferred.unsafeMake<SealedLayer>(FiberId.none)
  let size = 0
  const apply = <E, R>(
    bytes: Stream.Stream<Uint8Array, E, R>
  ): Stream.Stream<Uint8Array, E | LayerEncryptionError, R> =>
    Stream.unwrapScoped(Effect.map(makeLayerCipher, (cipher) =>
      bytes.pipe(
        cipher.encrypt,
        Stream.tap((chunk) => Effect.sync(() => size += chunk.length)),
        Stream.concat(Stream.execute(Effect.flatMap(cipher.seal, (done) => Deferred.succeed(sealed, done))))
      )))
  const result = (plain: Omit<EncodedLayer, "annotations">) =>
    Effect.gen(function*() {
      const { ciphertextDigest, ...secrets } = yield* Deferred.await(sealed)
      const annotations = yield* encryptionAnnotations(recipients, { ...secrets, digest: plain.digest })
      return { mediaType: encryptedMediaType(plain.mediaType), digest: ciphertextDigest, size, annotations }
    })
  return { apply, result } as const
}

/**
 * The archive's bytes as the layer to push: compressed (CHECKPOINT_LAYER_COMPRESSION, unless already compressed),
 * then encrypted (CHECKPOINT_ENCRYPTION_KEYS), in one pass. `layer` describes what was pushed, once the stream ended
 * and the archive's description is known (the unchanged archive is described by it alone).
 */
export const encodeLayer = <E, R>(bytes: Stream.Stream<Uint8Array, E, R>, options: LayerEncodingOptions) =>
  Effect.sync(() => {
    const compression = options.compression === "none" ? undefined : compressionStage(options.compression)
    const encryption = Arr.isNonEmptyReadonlyArray(options.recipients)
      ? encryptionStage(options.recipients)
      : undefined
    const compressed = compression === undefined ? bytes : compression.apply(bytes)
    const stream = encryption === undefined ? compressed : encryption.apply(compressed)
    const layer = (archive: ArchiveDescription): Effect.Effect<EncodedLayer, LayerEncryptionError> => {
      const plain = Option.getOrElse(
        Option.flatMap(Option.fromNullable(compression), (stage) => stage.result()),
        () => ({ mediaType: archive.mediaType, digest: archive.digest, size: archive.size })
      )
      return encryption === undefined ? Effect.succeed(plain) : encryption.result(plain)
    }
    return { stream, layer } as const
  })
