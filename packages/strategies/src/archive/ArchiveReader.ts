import { FileSystem } from "@effect/platform"
import { Effect, Option, Stream } from "effect"

/**
 * The archive's bytes, read into a small ring of reused buffers. Fresh buffers per chunk would be freed only when
 * V8 next collects garbage, which lets RSS grow by tens of MiB during a large push. Reuse is safe with a ring of three
 * or more, because at most three chunks are in use at any time:
 * - hashing is synchronous, and compression and encryption copy the bytes into buffers of their own;
 * - the tar parser and the decompressor are written with backpressure, so only the previous chunk's last bytes may
 *   still wait in them (a partial tar header, the end of a compressed frame) until the next chunk is written;
 * - the upload's body is read one chunk ahead: while a chunk is being sent, the next one is read and waits, and the
 *   one after is read only once the socket took the waiting one, which it does after it drained the one before (a
 *   chunk is larger than the socket's high-water mark). Over TLS a chunk's bytes are encrypted when it is written;
 *   over plain HTTP the socket holds the chunk until it is sent, so the chunk being sent, the one waiting and the one
 *   being read are three.
 * The archive is complete when it is read, so reading stops at its size. Buffers are allocated when first needed and
 * are no larger than the archive: a checkpoint of a few hundred KiB takes one buffer of its size, not the whole ring.
 */
export const readArchive = (path: string, options: { readonly chunkSize: number; readonly buffers: number }) =>
  Stream.unwrapScoped(Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const file = yield* fs.open(path, { flag: "r" })
    const size = Number((yield* file.stat).size)
    const bufferSize = Math.min(options.chunkSize, size)
    const ring: Array<Buffer> = []
    let turn = 0
    let left = size
    return Stream.repeatEffectOption(Effect.gen(function*() {
      if (left <= 0) return yield* Effect.fail(Option.none())
      const buffer = ring[turn % options.buffers] ??= Buffer.allocUnsafeSlow(bufferSize)
      turn++
      const bytesRead = Number(yield* Effect.mapError(file.read(buffer), Option.some))
      if (bytesRead === 0) return yield* Effect.fail(Option.none())
      left -= bytesRead
      return buffer.subarray(0, bytesRead)
    }))
  }))
