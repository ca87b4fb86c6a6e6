import { Deferred, Effect, FiberId, Option, Stream } from "effect"
import { createHash } from "node:crypto"
import { Writable } from "node:stream"
import * as Zlib from "node:zlib"
import { Parser } from "tar"
import {
  ArchiveError,
  bufferView,
  drained,
  fatalTarWarnings,
  layerMediaType,
  readFailed,
  sniffCompression,
  unreadableTar
} from "./ArchiveFormat.ts"
import type { Compression } from "./ArchiveFormat.ts"
import { collectMetadata, parseMetadata } from "./CheckpointMetadata.ts"
import type { CheckpointMetadata, CollectedMetadata } from "./CheckpointMetadata.ts"
import { decompressorPieces } from "./ZstdFrames.ts"

/** What one pass over a checkpoint archive tells: the layer descriptor and the metadata files. */
export interface ArchiveDescription extends CheckpointMetadata {
  /** `sha256:<hex>` of the bytes as stored (the layer digest). */
  readonly digest: string
  readonly size: number
  readonly compression: Compression
  readonly mediaType: string
  /** `sha256:<hex>` of the uncompressed tar (`rootfs.diff_ids[0]`). */
  readonly diffId: string
}

const sniffLength = 4

/**
 * A single pass of inspection over the archive bytes: digest of the raw bytes, compression, digest of the
 * uncompressed tar and the small metadata files, all computed while the bytes flow by. Writes respect the
 * backpressure of the decompressor and the tar parser, so memory stays flat.
 */
const makeInspector = Effect.sync(() => {
  const rawHash = createHash("sha256")
  const diffHash = createHash("sha256")
  const completed: CollectedMetadata = new Map()
  let size = 0
  let head: Buffer | undefined = Buffer.alloc(0)
  let compression: Compression = "none"
  let decompressor: Zlib.Gunzip | Zlib.ZstdDecompress | undefined
  let pieces: ((chunk: Uint8Array) => ReadonlyArray<Uint8Array>) | undefined
  let failure: ArchiveError | undefined

  const settled = Deferred.unsafeMake<void>(FiberId.none)
  const failWith = (error: ArchiveError) => {
    failure ??= error
    Deferred.unsafeDone(settled, Effect.void)
  }

  const parser = new Parser({
    zstd: false,
    brotli: false,
    onwarn: (code: string, message: string | Error) => {
      if (fatalTarWarnings.has(code)) failWith(unreadableTar(message))
    },
    onReadEntry: collectMetadata(completed)
  })
  parser.on("error", (cause: unknown) => failWith(unreadableTar(cause)))

  const tar: Writable = new Writable({
    highWaterMark: 1024 * 1024,
    write(chunk: Buffer, _encoding, callback) {
      if (compression !== "none") diffHash.update(chunk)
      if (parser.write(chunk)) callback()
      else parser.once("drain", () => callback())
    },
    final(callback) {
      parser.end(() => callback())
    }
  })
  tar.on("finish", () => Deferred.unsafeDone(settled, Effect.void))

  const target = (): Writable => decompressor ?? tar

  const writeDown = (chunk: Uint8Array) =>
    Effect.suspend(() => {
      if (failure !== undefined) return Effect.void
      const stream = target()
      if (stream.write(chunk)) return Effect.void
      return Effect.race(drained(stream), Deferred.await(settled))
    })

  const start = (bytes: Buffer) => {
    compression = sniffCompression(bytes)
    if (compression !== "none") {
      decompressor = compression === "gzip" ? Zlib.createGunzip() : Zlib.createZstdDecompress()
      pieces = decompressorPieces(compression)
      decompressor.on("error", (cause) => {
        const message = `cannot decompress the ${compression} archive: ${cause.message}`
        failWith(new ArchiveError({ message, cause }))
      })
      decompressor.pipe(tar)
    }
  }

  const failed = Effect.suspend(() => failure === undefined ? Effect.void : Effect.fail(failure))

  const writeAll = (bytes: Uint8Array) =>
    pieces === undefined ? writeDown(bytes) : Effect.forEach(pieces(bytes), writeDown, { discard: true })

  const write = (chunk: Uint8Array) =>
    Effect.suspend(() => {
      const bytes = bufferView(chunk)
      rawHash.update(bytes)
      size += bytes.length
      if (head !== undefined) {
        head = Buffer.concat([head, bytes])
        if (head.length < sniffLength) return Effect.void
        const first = head
        head = undefined
        start(first)
        return Effect.zipRight(writeAll(first), failed)
      }
      return Effect.zipRight(writeAll(bytes), failed)
    })

  const finish = Effect.gen(function*() {
    if (head !== undefined) {
      const first = head
      head = undefined
      start(first)
      if (first.length > 0) yield* writeAll(first)
    }
    yield* failed
    target().end()
    yield* Deferred.await(settled)
    yield* failed
    const digest = `sha256:${rawHash.digest("hex")}`
    return {
      digest,
      size,
      compression,
      mediaType: layerMediaType(compression),
      diffId: compression === "none" ? digest : `sha256:${diffHash.digest("hex")}`,
      ...yield* parseMetadata(completed)
    } satisfies ArchiveDescription
  })

  const dispose = Effect.sync(() => {
    decompressor?.destroy()
    tar.destroy()
    parser.abort(new Error("inspection stopped"))
  })

  return { write, finish, dispose } as const
})

/**
 * Lets the archive bytes through unchanged while describing them. `description` completes when the last byte
 * has passed (or fails if the bytes cannot be read or are not a tar archive, in which case the stream fails too).
 */
export const inspectWhileStreaming = <E>(bytes: Stream.Stream<Uint8Array, E>) =>
  Effect.gen(function*() {
    const description = yield* Deferred.make<ArchiveDescription, ArchiveError>()
    const stream = Stream.unwrapScoped(
      Effect.acquireRelease(makeInspector, (inspector) => inspector.dispose).pipe(
        Effect.map((inspector) =>
          bytes.pipe(
            Stream.mapError(readFailed),
            Stream.tap(inspector.write),
            Stream.concat(
              Stream.execute(Effect.flatMap(inspector.finish, (done) => Deferred.succeed(description, done)))
            ),
            Stream.tapError((error) => Deferred.fail(description, error))
          )
        )
      )
    )
    const readFailure: Effect.Effect<Option.Option<ArchiveError>> = Effect.flatMap(
      Deferred.poll(description),
      Option.match({
        onNone: () => Effect.succeedNone,
        onSome: (outcome) => Effect.match(outcome, { onFailure: Option.some, onSuccess: () => Option.none() })
      })
    )
    return { stream, description: Deferred.await(description), readFailure } as const
  })

/** Describes an archive file in one pass without sending it anywhere (used by tests and tools). */
export const describeArchive = <E>(bytes: Stream.Stream<Uint8Array, E>) =>
  Effect.flatMap(
    inspectWhileStreaming(bytes),
    ({ description, stream }) => Effect.zipRight(Stream.runDrain(stream), description)
  )
