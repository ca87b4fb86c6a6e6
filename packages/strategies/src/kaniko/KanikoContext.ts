import { reasonOf } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { NodeStream } from "@effect/platform-node"
import { Data, Effect, Stream } from "effect"
import { createReadStream } from "node:fs"
import { basename, dirname } from "node:path"
import type { Readable } from "node:stream"
import { pipeline } from "node:stream"
import * as Zlib from "node:zlib"
import { Header, Pack, ReadEntry } from "tar"
import { sniffCompression, writeDrained } from "../archive/ArchiveFormat.ts"
import type { Compression } from "../archive/ArchiveFormat.ts"
import { decompressorFeed, decompressorPieces } from "../archive/ZstdFrames.ts"

export class BuildContextError extends Data.TaggedError("BuildContextError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** What the kubelet may have written: a tar, plain or compressed. */
export type ArchiveFormat = Compression | "xz"

const xzMagic = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]

export const sniffArchiveFormat = (head: Uint8Array): ArchiveFormat =>
  head.length >= xzMagic.length && xzMagic.every((byte, index) => head[index] === byte) ? "xz" : sniffCompression(head)

/** The format of an archive file, from its first bytes. */
export const readArchiveFormat = (path: string) =>
  Effect.scoped(Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const file = yield* fs.open(path, { flag: "r" })
    const head = new Uint8Array(xzMagic.length)
    const read = Number(yield* file.read(head))
    return sniffArchiveFormat(head.subarray(0, read))
  }))

/**
 * The archive as the executor's ADD reads it. ADD extracts plain, gzip and bzip2 tars only: a zstd archive is
 * decompressed on its way into the build context (`compression` says whether that is still to do); a gzip archive
 * stays as it is, since the executor holds the whole file in memory and the compressed one is the smaller.
 */
export interface ContextArchive {
  /** The file the bytes come from. */
  readonly path: string
  /** Its name in the build context (the Dockerfile ADDs it): the file's own name. */
  readonly name: string
  /** Bytes of the file as it is in the build context (decompressed when `compression` is zstd). */
  readonly size: number
  /** The compression undone on the way into the build context; `none`: the file goes as it is. */
  readonly compression: Compression
}

/** Small files of the build context besides the archive: the Dockerfile, the registry's CA. */
export type ContextFiles = ReadonlyArray<{ readonly name: string; readonly text: string }>

/** Decompressed output in 1 MiB pieces: few, large chunks for the pod attach and the file writes. */
const decompressedChunkSize = 1024 * 1024
/** node-tar and the decompressor read the archive file in slices of this size. */
export const readSize = 1024 * 1024

const decompressor = (compression: Exclude<Compression, "none">) =>
  compression === "zstd"
    ? Zlib.createZstdDecompress({ chunkSize: decompressedChunkSize })
    : Zlib.createGunzip({ chunkSize: decompressedChunkSize })

/**
 * Decompresses while the bytes flow: each chunk is written only when the decompressor has taken the previous one
 * (NodeStream.pipeThroughDuplex does not wait for "drain" after a chunk's last item), and output is read as it is
 * pulled, so the decompressor's buffers are all that is held, whatever the archive's size.
 */
export const decompress =
  (compression: Exclude<Compression, "none">) =>
  <E>(bytes: Stream.Stream<Uint8Array, E>): Stream.Stream<Uint8Array, E | BuildContextError> =>
    Stream.unwrapScoped(
      Effect.map(
        Effect.acquireRelease(
          Effect.sync(() => decompressor(compression)),
          (zlib) => Effect.sync(() => zlib.destroy())
        ),
        (zlib) => {
          const pieces = decompressorPieces(compression)
          const write = writeDrained<Uint8Array>(zlib)
          const writePieces = (chunk: Uint8Array) => Effect.forEach(pieces(chunk), write, { discard: true })
          const feed = Stream.runForEach(bytes, writePieces).pipe(Effect.zipRight(Effect.sync(() => zlib.end())))
          const output = NodeStream.fromReadable<BuildContextError, Uint8Array>(
            () => zlib,
            (cause) =>
              new BuildContextError({
                message: `cannot decompress the ${compression} archive: ${reasonOf(cause)}`,
                cause
              })
          )
          return Stream.merge(output, Stream.drain(Stream.fromEffect(feed)))
        }
      )
    )

const readFailed = (path: string) => (cause: unknown) =>
  new BuildContextError({ message: `cannot read the checkpoint archive ${path}: ${reasonOf(cause)}`, cause })

/** The archive's bytes as ADD gets them, read once from the file. */
export const contextArchiveBytes = (path: string, compression: Compression) =>
  Effect.map(FileSystem.FileSystem, (fs) => {
    const bytes = fs.stream(path, { chunkSize: readSize }).pipe(Stream.mapError(readFailed(path)))
    return compression === "none" ? bytes : decompress(compression)(bytes)
  }).pipe(Stream.unwrap)

/**
 * Describes the archive for the build context. A zstd archive is decompressed once to learn its size: the tar
 * header of the `kaniko` context and the pod's memory need it before the first byte is sent.
 */
export const describeContextArchive = (path: string, format: Compression) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const compression = format === "zstd" ? format : "none"
    const size = compression === "zstd"
      ? yield* Stream.runFold(contextArchiveBytes(path, compression), 0, (n, chunk) => n + chunk.length)
      : Number((yield* Effect.mapError(fs.stat(path), readFailed(path))).size)
    return { path, name: basename(path), size, compression } satisfies ContextArchive
  })

/** gzip output in 256 KiB pieces (node:zlib's chunkSize, passed on by node-tar): fewer, larger WebSocket messages. */
const gzipOptions = { level: 1, chunkSize: 256 * 1024 }

const fileEntry = (name: string, size: number) =>
  new ReadEntry(new Header({ path: name, type: "File", size, mode: 0o644, mtime: new Date() }))

/**
 * The `kaniko` build context as a tar.gz made while it is read: the small files, then the archive, streamed from its
 * file (never copied; a zstd archive decompressed on the way). gzip level 1 keeps the CPU from holding the stream up;
 * checkpointed memory still compresses well.
 */
export const buildContext = (
  archive: ContextArchive,
  files: ContextFiles
): Stream.Stream<Uint8Array, BuildContextError> =>
  Stream.unwrapScoped(
    Effect.acquireRelease(
      Effect.sync(() => {
        const pack = new Pack({ cwd: dirname(archive.path), gzip: gzipOptions, portable: true, maxReadSize: readSize })
        // Failures reach the reader through the async iterator; this listener only keeps a late one from throwing.
        pack.on("error", () => undefined)
        for (const file of files) {
          const text = Buffer.from(file.text, "utf8")
          const entry = fileEntry(file.name, text.length)
          entry.end(text)
          pack.add(entry)
        }
        let content: Readable | undefined
        if (archive.compression === "none") {
          pack.add(basename(archive.path))
        } else {
          const entry = fileEntry(archive.name, archive.size)
          const decompressing = decompressor(archive.compression)
          // A truncated archive fails when the decompressor ends, after the pipeline has settled: that error must
          // fail the context too, not go unhandled (which would crash the process).
          decompressing.on("error", (error) => pack.emit("error", error))
          content = pipeline(
            createReadStream(archive.path, { highWaterMark: readSize }),
            decompressorFeed(archive.compression),
            decompressing,
            (error) => {
              if (error) pack.emit("error", error)
            }
          )
          content.pipe(entry as unknown as NodeJS.WritableStream)
          pack.add(entry)
        }
        pack.end()
        return { pack, content }
      }),
      // A pack left unfinished reads (and drops) the rest, so that it closes the archive file.
      ({ content, pack }) =>
        Effect.sync(() => {
          content?.destroy()
          pack.resume()
        })
    ).pipe(
      Effect.map(({ pack }) => Stream.fromAsyncIterable(pack, readFailed(archive.path)))
    )
  )
