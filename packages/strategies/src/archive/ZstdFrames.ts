import { Transform } from "node:stream"

/**
 * A zstd stream may hold any number of frames, one after the other (RFC 8878, section 3.1): `pzstd` and other
 * parallel compressors write several. Node 24's zstd decompressor stops at the end of the first frame when more input
 * follows in the same write, and fails on the rest (nodejs/node#64741); it goes on when a write ends where a frame
 * ends. `splitAtFrameEnds` cuts the compressed bytes there, reading just enough of each frame (its header and its
 * blocks' headers) to know where it ends.
 */

const frameMagic = 0xfd2fb528
const isSkippableMagic = (magic: number) => (magic & 0xfffffff0) >>> 0 === 0x184d2a50

/** Whether `head` starts a zstd stream: a frame, or a skippable frame (pzstd starts with one). */
export const startsZstd = (head: Uint8Array) => {
  if (head.length < 4) return false
  const magic = Buffer.from(head.buffer, head.byteOffset, 4).readUInt32LE(0)
  return magic === frameMagic || isSkippableMagic(magic)
}

/** What comes next: `skip` bytes passed as they are, then a field of `wanted` bytes handed to `read`. */
interface Step {
  readonly skip: number
  readonly wanted: number
  readonly read: (field: Buffer) => Step | undefined
  /** The skipped bytes end a frame: the bytes are cut after them. */
  readonly frameEnds?: boolean
}

const littleEndian = (field: Buffer) => field.readUIntLE(0, field.length)

const nextFrame = (skip: number): Step => ({ skip, frameEnds: true, wanted: 4, read: frame })

/** A frame's magic number; undefined (nothing more is cut) for bytes that are not zstd. */
function frame(field: Buffer): Step | undefined {
  const magic = littleEndian(field)
  if (magic === frameMagic) return { skip: 0, wanted: 1, read: frameHeader }
  if (isSkippableMagic(magic)) return { skip: 0, wanted: 4, read: (size) => nextFrame(littleEndian(size)) }
  return undefined
}

/** Frame_Header_Descriptor: how long the rest of the header is, and whether a checksum follows the last block. */
function frameHeader(field: Buffer): Step {
  const descriptor = field[0]!
  const singleSegment = (descriptor >> 5) & 1
  const checksum = (descriptor >> 2) & 1 ? 4 : 0
  const windowDescriptor = singleSegment ? 0 : 1
  const dictionaryId = [0, 1, 2, 4][descriptor & 3]!
  const contentSize = [singleSegment, 2, 4, 8][descriptor >> 6]!
  const blocks = (header: Buffer): Step | undefined => {
    const value = littleEndian(header)
    const last = value & 1
    const type = (value >> 1) & 3
    if (type === 3) return undefined
    const content = type === 1 ? 1 : value >>> 3
    return last ? nextFrame(content + checksum) : { skip: content, wanted: 3, read: blocks }
  }
  return { skip: windowDescriptor + dictionaryId + contentSize, wanted: 3, read: blocks }
}

/** Cuts zstd bytes, however they arrive, so that each piece ends at most one frame, at its own end. */
export const splitAtFrameEnds = () => {
  let step: Step | undefined = nextFrame(0)
  let skipped = 0
  let field: Array<number> = []
  return (chunk: Uint8Array): ReadonlyArray<Uint8Array> => {
    const pieces: Array<Uint8Array> = []
    let start = 0
    let offset = 0
    while (step !== undefined && offset < chunk.length) {
      const passed = Math.min(step.skip - skipped, chunk.length - offset)
      skipped += passed
      offset += passed
      if (skipped < step.skip) break
      if (step.frameEnds === true && field.length === 0 && offset > start) {
        pieces.push(chunk.subarray(start, offset))
        start = offset
      }
      while (field.length < step.wanted && offset < chunk.length) field.push(chunk[offset++]!)
      if (field.length < step.wanted) break
      step = step.read(Buffer.from(field))
      skipped = 0
      field = []
    }
    if (start < chunk.length) pieces.push(chunk.subarray(start))
    return pieces
  }
}

/** The bytes of an archive of `compression` in pieces its decompressor reads whole: cut at frame ends for zstd. */
export const decompressorPieces = (compression: "gzip" | "zstd"): (chunk: Uint8Array) => ReadonlyArray<Uint8Array> =>
  compression === "zstd" ? splitAtFrameEnds() : (chunk) => [chunk]

/** For a pipe into the decompressor of `compression`: passes the bytes on in `decompressorPieces`. */
export const decompressorFeed = (compression: "gzip" | "zstd") => {
  const pieces = decompressorPieces(compression)
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      for (const piece of pieces(chunk)) this.push(piece)
      callback()
    }
  })
}
