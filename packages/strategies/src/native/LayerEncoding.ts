import {
  Array as Arr,
  Config,
  ConfigError,
  Data,
  Deferred,
  Effect,
  Either,
  FiberId,
  Option,
  Pool,
  Sink,
  Stream
} from "effect"
import { createHash } from "node:crypto"
import { availableParallelism } from "node:os"
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

export const compressionLevelVariable = "CHECKPOINT_LAYER_COMPRESSION_LEVEL"

/**
 * zstd level 1 is zstd's fastest standard level: on two CPUs it compresses a checkpoint's memory about twice as fast
 * as level 3 (its library default) into about 12% more bytes, which makes it the level that beats a 1 Gbit/s link.
 * Higher levels pay only on slower links (see README).
 */
export const compressionLevels = {
  zstd: { default: 1, max: 19 },
  gzip: { default: 1, max: 9 }
} as const

/** CHECKPOINT_LAYER_COMPRESSION_LEVEL: zstd 1–19, gzip 1–9 (default 1 for both); only with a compression. */
export const compressionLevel: Config.Config<Option.Option<number>> = Config.all({
  compression,
  level: Config.option(Config.integer(compressionLevelVariable))
}).pipe(
  Config.mapOrFail(({ compression, level }): Either.Either<Option.Option<number>, ConfigError.ConfigError> => {
    if (Option.isNone(level)) return Either.right(level)
    if (compression === "none") {
      return Either.left(
        ConfigError.InvalidData(
          [compressionLevelVariable],
          `is set but ${compressionVariable} is none; set ${compressionVariable} to zstd or gzip, or unset it`
        )
      )
    }
    const { max } = compressionLevels[compression]
    return level.value >= 1 && level.value <= max ? Either.right(level) : Either.left(
      ConfigError.InvalidData(
        [compressionLevelVariable],
        `${compression} levels go from 1 to ${max}, received ${level.value}`
      )
    )
  })
)

/** CHECKPOINT_ENCRYPTION_KEYS: the recipients' public key files, comma-separated (empty: no encryption). */
export const encryptionKeys: Config.Config<ReadonlyArray<string>> = Config.string(keysVariable).pipe(
  Config.withDefault(""),
  Config.map((value) => value.split(",").map((file) => file.trim()).filter((file) => file !== ""))
)

/**
 * The Kaniko builders make their own (gzip) layer around the archive: they cannot encrypt it, nor push the archive as
 * a zstd or gzip layer at a level. Any of these settings is a startup error for them rather than a setting silently
 * not applied.
 */
export const unsupportedByKaniko = (builder: string): Config.Config<void> =>
  Config.all({ compression, encryptionKeys, level: Config.option(Config.string(compressionLevelVariable)) }).pipe(
    Config.mapOrFail(({ compression, encryptionKeys, level }) => {
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
        ]),
        ...(Option.isNone(level) ? [] : [
          ConfigError.InvalidData(
            [compressionLevelVariable],
            `the ${builder} builder does not compress the archive (Kaniko makes its own gzip layer around it); ` +
              "use CHECKPOINT_BUILDER=native, or unset it"
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
  /** The compression's level (`compressionLevels`' default when absent). */
  readonly level?: number
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

/**
 * The layer is compressed in independent frames of 4 MiB (zstd frames, gzip members), several at once on libuv's
 * thread pool: one zlib stream keeps one CPU busy, far below what a 1 Gbit/s link carries. Concatenated frames are
 * one valid zstd stream (RFC 8878, section 3.1) and concatenated members one gzip file (RFC 1952, section 2.2); the
 * runtimes' decompressors (containers/image, containerd) read them all, as they read zstd:chunked and eStargz layers.
 */
const frameSize = 4 * 1024 * 1024
const framesInFlight = Math.min(4, Math.max(2, availableParallelism()))
/** zlib output in 256 KiB pieces (its default is 16 KiB): fewer, larger writes to the upload. */
const outputChunkSize = 256 * 1024

/**
 * A compressor that takes whole frames, one at a time, and is reused from frame to frame: each frame is written once
 * with the finishing flush, so a whole zstd frame (or gzip member) comes out, and the next starts afresh.
 * zstd's window is a whole frame (windowLog 22), so the frame is never compressed against a window that wrapped
 * round (zstd's slower external-dictionary path), and the window's 4 MiB buffer is allocated once per compressor, not
 * once per frame (which would make the garbage collector run more). README, "Compression", has what it measured.
 */
const frameCompressor = (kind: Exclude<Compression, "none">, level: number) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const compressor = kind === "gzip"
        ? Zlib.createGzip({ level, chunkSize: outputChunkSize, flush: Zlib.constants.Z_FINISH })
        : Zlib.createZstdCompress({
          chunkSize: outputChunkSize,
          flush: Zlib.constants.ZSTD_e_end,
          params: {
            [Zlib.constants.ZSTD_c_compressionLevel]: level,
            [Zlib.constants.ZSTD_c_windowLog]: Math.log2(frameSize)
          }
        })
      // zstd starts the next frame by itself (Node's reset would also drop the level); deflate needs deflateReset,
      // which Node's gzip streams have although @types/node leaves it out.
      const startNext = kind === "gzip" ? () => (compressor as Zlib.Gzip & Zlib.ZlibReset).reset() : () => {}
      let pieces: Array<Buffer> = []
      let failCurrent: ((cause: Error) => void) | undefined
      compressor.on("data", (piece: Buffer) => pieces.push(piece))
      // Listening for the whole compressor's life: an error between frames (there is none to fail) cannot go unheard.
      compressor.on("error", (cause) => failCurrent?.(cause))
      const compress = (frame: Uint8Array) =>
        Effect.async<ReadonlyArray<Buffer>, LayerCompressionError>((resume) => {
          failCurrent = (cause) => {
            failCurrent = undefined
            compressor.destroy()
            resume(
              Effect.fail(new LayerCompressionError({ message: `${kind} compression failed: ${cause.message}`, cause }))
            )
          }
          compressor.write(frame, (error) => {
            // A compressor that failed or was interrupted is destroyed, and its write may still call back, with or
            // without the error: the failure has been told already.
            if (error) return failCurrent?.(error)
            if (compressor.destroyed) return
            failCurrent = undefined
            const done = pieces
            pieces = []
            startNext()
            resume(Effect.succeed(done))
          })
          return Effect.sync(() => {
            failCurrent = undefined
            compressor.destroy()
          })
        })
      return { compress, close: () => compressor.close() } as const
    }),
    ({ close }) => Effect.sync(close)
  )

/**
 * The stream's bytes copied into frames of `frameSize` (the last one shorter). The reader reuses its buffers, so the
 * bytes are copied as they arrive; a frame's buffer is reused once `release` gave it back.
 */
const framed = <E, R>(bytes: Stream.Stream<Uint8Array, E, R>) => {
  const free: Array<Buffer> = []
  let frame: Buffer | undefined
  let filled = 0
  const take = (): Buffer => free.pop() ?? Buffer.allocUnsafeSlow(frameSize)
  const fill = (chunk: Uint8Array): ReadonlyArray<Buffer> => {
    const full: Array<Buffer> = []
    for (let offset = 0; offset < chunk.length;) {
      frame ??= take()
      const copied = Math.min(chunk.length - offset, frameSize - filled)
      frame.set(chunk.subarray(offset, offset + copied), filled)
      offset += copied
      filled += copied
      if (filled === frameSize) {
        full.push(frame)
        frame = undefined
        filled = 0
      }
    }
    return full
  }
  const rest = Effect.sync((): ReadonlyArray<Buffer> => {
    const last = frame === undefined ? [] : [frame.subarray(0, filled)]
    frame = undefined
    return last
  })
  const release = (used: Buffer) => free.push(Buffer.from(used.buffer, used.byteOffset, frameSize))
  return {
    frames: Stream.flattenIterables(Stream.concat(Stream.map(bytes, fill), Stream.fromEffect(rest))),
    release
  } as const
}

/**
 * Compresses the layer while it streams, unless the archive is compressed already (its first bytes tell): then
 * the bytes pass unchanged. `result` is None when they passed.
 */
const compressionStage = (kind: Exclude<Compression, "none">, level: number) => {
  const output = measure()
  let compressing: boolean | undefined
  const apply = <E, R>(
    bytes: Stream.Stream<Uint8Array, E, R>
  ): Stream.Stream<Uint8Array, E | LayerCompressionError, R> =>
    Stream.unwrapScoped(Effect.gen(function*() {
      const [first, rest] = yield* Stream.peel(bytes, Sink.head())
      if (Option.isNone(first)) return rest
      const all = Stream.concat(Stream.make(first.value), rest)
      compressing = sniffCompression(first.value) === "none"
      if (!compressing) return all
      const compressors = yield* Pool.make({ acquire: frameCompressor(kind, level), size: framesInFlight })
      const { frames, release } = framed(all)
      const compress = (frame: Buffer) =>
        Effect.scoped(Effect.flatMap(compressors.get, (compressor) => compressor.compress(frame))).pipe(
          Effect.ensuring(Effect.sync(() => release(frame)))
        )
      // In order of the frames: mapEffect keeps it, however the compressions finish.
      return Stream.mapEffect(frames, compress, { concurrency: framesInFlight }).pipe(
        Stream.flattenIterables,
        Stream.tap((compressed) => Effect.sync(() => output.update(compressed)))
      )
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
    const compression = options.compression === "none"
      ? undefined
      : compressionStage(options.compression, options.level ?? compressionLevels[options.compression].default)
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
