import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Stream } from "effect"
import { randomBytes } from "node:crypto"
import { readArchive } from "../src/archive/ArchiveReader.ts"

const KiB = 1024
const MiB = 1024 * KiB

const readFile = (bytes: Uint8Array, options: { readonly chunkSize: number; readonly buffers: number }) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const file = `${yield* fs.makeTempDirectoryScoped()}/archive.tar`
    yield* fs.writeFile(file, bytes)
    return Chunk.toReadonlyArray(yield* Stream.runCollect(readArchive(file, options)))
  }).pipe(Effect.provide(NodeContext.layer))

describe("readArchive", () => {
  it.scoped("reads a small archive into one buffer of its own size, not a ring of chunk-sized ones", () =>
    Effect.gen(function*() {
      const bytes = randomBytes(300 * KiB)
      const chunks = yield* readFile(bytes, { chunkSize: MiB, buffers: 6 })
      expect(chunks).toHaveLength(1)
      expect(Buffer.compare(chunks[0]!, bytes)).toBe(0)
      expect(chunks[0]!.buffer.byteLength).toBe(300 * KiB)
    }))

  it.scoped("reads a large archive through its ring of reused buffers, in order", () =>
    Effect.gen(function*() {
      const bytes = randomBytes(2 * MiB + 12345)
      const chunks = yield* readFile(bytes, { chunkSize: 512 * KiB, buffers: 2 })
      expect(chunks.map((chunk) => chunk.length)).toEqual([512 * KiB, 512 * KiB, 512 * KiB, 512 * KiB, 12345])
      expect(new Set(chunks.map((chunk) => chunk.buffer)).size).toBe(2)
      // The ring's buffers are overwritten by later reads: only the last two chunks still hold what was read.
      expect(Buffer.compare(Buffer.concat(chunks.slice(3)), bytes.subarray(3 * 512 * KiB))).toBe(0)
    }))

  it.scoped("an empty archive is an empty stream", () =>
    Effect.gen(function*() {
      expect(yield* readFile(new Uint8Array(0), { chunkSize: MiB, buffers: 6 })).toEqual([])
    }))
})
