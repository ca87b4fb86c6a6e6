import { reasonOf } from "@checkpointer/core"
import { Data, Effect } from "effect"
import { startsZstd } from "./ZstdFrames.ts"

export type Compression = "none" | "gzip" | "zstd"

/**
 * Compression by magic number: gzip `1f 8b`, zstd `28 b5 2f fd` (or a skippable frame first), anything else is taken
 * as a plain tar.
 */
export const sniffCompression = (head: Uint8Array): Compression => {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return "gzip"
  if (startsZstd(head)) return "zstd"
  return "none"
}

const tarMediaType = "application/vnd.oci.image.layer.v1.tar"

export const layerMediaType = (compression: Compression): string =>
  compression === "none" ? tarMediaType : `${tarMediaType}+${compression}`

export class ArchiveError extends Data.TaggedError("ArchiveError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** Warnings of the tar parser that mean the bytes are not a tar archive. */
export const fatalTarWarnings: ReadonlySet<string> = new Set(["TAR_BAD_ARCHIVE", "TAR_ENTRY_INVALID", "TAR_ABORT"])

export const unreadableTar = (cause: unknown) =>
  new ArchiveError({ message: `not a readable tar archive: ${reasonOf(cause)}`, cause })

export const readFailed = (cause: unknown) => new ArchiveError({ message: `read failed: ${reasonOf(cause)}`, cause })

/** A stream that can be written to and tells with "drain" when its buffer has room again (Node's and node-tar's). */
interface DrainingStream<Chunk> {
  write(chunk: Chunk): boolean
  once(event: "drain", listener: () => void): unknown
  off(event: "drain", listener: () => void): unknown
}

/** The stream's next "drain". */
export const drained = <Chunk>(stream: DrainingStream<Chunk>) =>
  Effect.async<void>((resume) => {
    const onDrain = () => resume(Effect.void)
    stream.once("drain", onDrain)
    return Effect.sync(() => stream.off("drain", onDrain))
  })

/** The same bytes as a Buffer, not copied: for a chunk that is a buffer of its own (not one the producer reuses). */
export const bufferView = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)

/** Writes a chunk and, when that filled the stream's buffer, waits until it drains. */
export const writeDrained = <Chunk>(stream: DrainingStream<Chunk>) => (chunk: Chunk) =>
  Effect.suspend(() => stream.write(chunk) ? Effect.void : drained(stream))
