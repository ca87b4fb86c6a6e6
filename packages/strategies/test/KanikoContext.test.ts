import { FileSystem, Path } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Ref, Stream } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { gunzipSync, gzipSync, zstdCompressSync } from "node:zlib"
import { create, Parser } from "tar"
import type { ReadEntry } from "tar"
import {
  buildContext,
  contextArchiveBytes,
  decompress,
  describeContextArchive,
  readArchiveFormat,
  sniffArchiveFormat
} from "../src/kaniko/KanikoContext.ts"

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex")

/** A plain tar of `size` incompressible bytes (so that the compressed archive is about as large). */
const plainTar = (size: number) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "kaniko-context-test-" })
    yield* fs.makeDirectory(path.join(dir, "content"))
    yield* fs.writeFileString(path.join(dir, "content", "config.dump"), "{}")
    yield* fs.writeFile(path.join(dir, "content", "pages-1.img"), randomBytes(size))
    const archive = path.join(dir, "checkpoint.tar")
    yield* Effect.promise(() =>
      create({ file: archive, cwd: path.join(dir, "content"), portable: true }, ["config.dump", "pages-1.img"])
    )
    return { dir, archive, bytes: yield* fs.readFile(archive) }
  })

/** Chunks of `bytes`, counting how many were pulled. */
const countedSource = (bytes: Uint8Array, chunkSize: number, pulled: Ref.Ref<number>) =>
  Stream.fromIterable(Array.from({ length: Math.ceil(bytes.length / chunkSize) }, (_, index) => index)).pipe(
    Stream.mapEffect((index) =>
      Effect.as(Ref.update(pulled, (n) => n + 1), bytes.subarray(index * chunkSize, (index + 1) * chunkSize))
    )
  )

/** zstd in frames ending at odd offsets (not at 4 MiB multiples), as parallel compressors such as pzstd write it. */
const zstdInFrames = (bytes: Uint8Array) =>
  Buffer.concat(
    [0, 100_001, 777_777, bytes.length].slice(1).map((end, index, ends) =>
      zstdCompressSync(bytes.subarray(index === 0 ? 0 : ends[index - 1], end))
    )
  )

const collect = <E>(stream: Stream.Stream<Uint8Array, E>) =>
  Effect.map(Stream.runCollect(stream), (chunks) => Buffer.concat(Chunk.toArray(chunks)))

describe("KanikoContext", () => {
  it("recognises the archive's format by its magic number", () => {
    expect(sniffArchiveFormat(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 1]))).toBe("xz")
    expect(sniffArchiveFormat(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0]))).toBe("zstd")
    expect(sniffArchiveFormat(Buffer.from([0x1f, 0x8b, 8]))).toBe("gzip")
    expect(sniffArchiveFormat(Buffer.from("config.dump"))).toBe("none")
    expect(sniffArchiveFormat(Buffer.from([0xfd, 0x37]))).toBe("none")
  })

  for (const [compression, compress] of [["zstd", zstdCompressSync], ["gzip", gzipSync]] as const) {
    it.scoped(`${compression}: decompresses to the exact plain tar while the archive is still being read`, () =>
      Effect.gen(function*() {
        const { bytes } = yield* plainTar(8 * 1024 * 1024)
        const compressed = compress(bytes)
        const chunkSize = 64 * 1024
        const total = Math.ceil(compressed.length / chunkSize)
        const pulled = yield* Ref.make(0)
        const whole = yield* collect(decompress(compression)(countedSource(compressed, chunkSize, pulled)))
        expect(sha256(whole)).toBe(sha256(bytes))
        expect(yield* Ref.get(pulled)).toBe(total)
        const early = yield* Ref.make(0)
        yield* Stream.runDrain(Stream.take(decompress(compression)(countedSource(compressed, chunkSize, early)), 1))
        expect(yield* Ref.get(early)).toBeLessThan(total / 2)
      }).pipe(Effect.provide(NodeContext.layer)))
  }

  it.effect("a corrupt zstd archive fails the stream, naming the format", () =>
    Effect.gen(function*() {
      const compressed = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(4096, 0xff)])
      const error = yield* Stream.runDrain(decompress("zstd")(Stream.make(compressed))).pipe(Effect.flip)
      expect(error.message).toMatch(/^cannot decompress the zstd archive: /)
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("describes the archive as ADD reads it: zstd (in frames) decompressed, gzip and plain as they are", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const { archive, bytes, dir } = yield* plainTar(1024 * 1024)
      const zst = `${dir}/checkpoint.tar.zst`
      const gz = `${dir}/checkpoint.tar.gz`
      yield* fs.writeFile(zst, zstdInFrames(bytes))
      yield* fs.writeFile(gz, gzipSync(bytes))
      expect(yield* readArchiveFormat(zst)).toBe("zstd")
      expect(yield* describeContextArchive(zst, "zstd")).toEqual({
        path: zst,
        name: "checkpoint.tar.zst",
        size: bytes.length,
        compression: "zstd"
      })
      expect(yield* describeContextArchive(gz, "gzip")).toMatchObject({
        size: gzipSync(bytes).length,
        compression: "none"
      })
      expect(yield* describeContextArchive(archive, "none")).toMatchObject({ size: bytes.length, compression: "none" })
      const plain = contextArchiveBytes(zst, "zstd").pipe(Stream.provideService(FileSystem.FileSystem, fs))
      expect(sha256(yield* collect(plain))).toBe(sha256(bytes))
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("the kaniko build context holds the small files, then the zstd archive (in frames) as the plain tar", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const { bytes, dir } = yield* plainTar(3 * 1024 * 1024)
      const zst = `${dir}/checkpoint.tar.zst`
      yield* fs.writeFile(zst, zstdInFrames(bytes))
      const archive = yield* describeContextArchive(zst, "zstd")
      const targz = yield* collect(
        buildContext(archive, [{ name: "Dockerfile", text: "FROM x\n" }, { name: "registry-ca.pem", text: "PEM" }])
      )
      const entries: Array<{ path: string; size: number; sha256: string }> = []
      yield* Effect.async<void>((resume) => {
        const parser = new Parser({
          onReadEntry: (entry: ReadEntry) => {
            const hash = createHash("sha256")
            entry.on("data", (chunk: Buffer) => hash.update(chunk))
            entry.on("end", () => entries.push({ path: entry.path, size: entry.size, sha256: hash.digest("hex") }))
          }
        })
        parser.on("end", () => resume(Effect.void))
        parser.end(gunzipSync(targz))
      })
      expect(entries.map((entry) => [entry.path, entry.size])).toEqual([
        ["Dockerfile", 7],
        ["registry-ca.pem", 3],
        ["checkpoint.tar.zst", bytes.length]
      ])
      expect(entries[2]!.sha256).toBe(sha256(bytes))
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("a zstd archive that cannot be decompressed fails the kaniko build context", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const { dir } = yield* plainTar(1024)
      const zst = `${dir}/broken.tar.zst`
      yield* fs.writeFile(zst, Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), randomBytes(4096)]))
      const error = yield* Stream.runDrain(
        buildContext({ path: zst, name: "broken.tar.zst", size: 8192, compression: "zstd" }, [])
      ).pipe(Effect.flip)
      expect(error.message).toContain(`cannot read the checkpoint archive ${zst}`)
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("a zstd archive cut short fails the kaniko build context instead of crashing the process", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const { bytes, dir } = yield* plainTar(64 * 1024)
      const compressed = zstdCompressSync(bytes)
      const zst = `${dir}/cut.tar.zst`
      // The decompressor fails only when it ends, after the stream pipeline has settled.
      yield* fs.writeFile(zst, compressed.subarray(0, compressed.length / 2))
      const error = yield* Stream.runDrain(
        buildContext({ path: zst, name: "cut.tar.zst", size: bytes.length, compression: "zstd" }, [])
      ).pipe(Effect.flip)
      expect(error.message).toBe(`cannot read the checkpoint archive ${zst}: unexpected end of file`)
    }).pipe(Effect.provide(NodeContext.layer)))
})
