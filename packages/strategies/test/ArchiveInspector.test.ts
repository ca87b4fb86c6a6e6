import { FileSystem, Path } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { constants, gzipSync, zstdCompressSync } from "node:zlib"
import { create } from "tar"
import { sniffCompression } from "../src/archive/ArchiveFormat.ts"
import { describeArchive } from "../src/archive/ArchiveInspector.ts"
import { readArchiveMetadata } from "../src/archive/CheckpointMetadata.ts"
import { podmanConfigDump, podmanSpecDump } from "./ArchiveFixtures.ts"

const sha256 = (bytes: Uint8Array) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`

/** A small tar shaped like a checkpoint archive: config.dump, spec.dump and some opaque CRIU images. */
const makeArchive = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const dir = yield* fs.makeTempDirectoryScoped({ prefix: "archive-test-" })
  const content = path.join(dir, "content")
  yield* fs.makeDirectory(path.join(content, "checkpoint"), { recursive: true })
  yield* fs.writeFileString(path.join(content, "config.dump"), JSON.stringify(podmanConfigDump))
  yield* fs.writeFileString(path.join(content, "spec.dump"), JSON.stringify(podmanSpecDump))
  yield* fs.writeFile(path.join(content, "checkpoint", "pages-1.img"), randomBytes(3 * 1024 * 1024 + 17))
  yield* fs.writeFileString(path.join(content, "rootfs-diff.tar"), "")
  const tarFile = path.join(dir, "checkpoint.tar")
  yield* Effect.promise(() =>
    create({ file: tarFile, cwd: content, portable: true }, [
      "config.dump",
      "spec.dump",
      "checkpoint",
      "rootfs-diff.tar"
    ])
  )
  const tar = yield* fs.readFile(tarFile)
  return { dir, tarFile, tar }
})

describe("ArchiveInspector", () => {
  it("sniffs compression from the magic numbers", () => {
    expect(sniffCompression(Uint8Array.of(0x1f, 0x8b, 0x08, 0))).toBe("gzip")
    expect(sniffCompression(Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd))).toBe("zstd")
    expect(sniffCompression(Uint8Array.of(0x50, 0x2a, 0x4d, 0x18))).toBe("zstd")
    expect(sniffCompression(Uint8Array.of(0x63, 0x6f, 0x6e, 0x66))).toBe("none")
    expect(sniffCompression(Uint8Array.of(0x28, 0xb5))).toBe("none")
  })

  it.scoped("describes plain, gzip and zstd archives in one pass", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const { dir, tar, tarFile } = yield* makeArchive
      const layer = "application/vnd.oci.image.layer.v1.tar"
      const variants = [
        { file: tarFile, bytes: tar, compression: "none", mediaType: layer },
        { file: `${dir}/c.tar.gz`, bytes: gzipSync(tar), compression: "gzip", mediaType: `${layer}+gzip` },
        { file: `${dir}/c.tar.zst`, bytes: zstdCompressSync(tar), compression: "zstd", mediaType: `${layer}+zstd` }
      ] as const
      for (const variant of variants) {
        if (variant.file !== tarFile) yield* fs.writeFile(variant.file, variant.bytes)
        const description = yield* describeArchive(fs.stream(variant.file, { chunkSize: 1000 }))
        expect(description.compression).toBe(variant.compression)
        expect(description.mediaType).toBe(variant.mediaType)
        expect(description.digest).toBe(sha256(variant.bytes))
        expect(description.size).toBe(variant.bytes.length)
        expect(description.diffId).toBe(sha256(tar))
        expect(description.configDump).toEqual(Option.some(podmanConfigDump))
        expect(description.specDump).toEqual(Option.some(podmanSpecDump))
      }
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("describes a zstd archive of many frames, as parallel compressors write them, and reads its metadata", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const { dir, tar } = yield* makeArchive
      const { ZSTD_c_checksumFlag, ZSTD_c_contentSizeFlag } = constants
      const frame = (from: number, to: number, params: Record<number, number> = {}) =>
        zstdCompressSync(tar.subarray(from, to), { params })
      const skippable = Buffer.concat([Buffer.from([0x53, 0x2a, 0x4d, 0x18, 5, 0, 0, 0]), Buffer.from("hello")])
      // Frames end at odd offsets (so that Node's decompressor has output space left at a frame's end), with and
      // without checksums and content sizes, raw (random pages), RLE (zeros) and compressed blocks, skippable frames
      // (pzstd starts with one).
      const bytes = Buffer.concat([
        skippable,
        frame(0, 700),
        frame(700, 1_000_001),
        frame(1_000_001, 1_000_002, { [ZSTD_c_checksumFlag]: 1 }),
        skippable,
        frame(1_000_002, 2_345_679, { [ZSTD_c_contentSizeFlag]: 0 }),
        frame(2_345_679, tar.length - 1537, { [ZSTD_c_checksumFlag]: 1 }),
        frame(tar.length - 1537, tar.length)
      ])
      const file = `${dir}/frames.tar.zst`
      yield* fs.writeFile(file, bytes)
      for (const chunkSize of [1000, 64 * 1024, 1024 * 1024]) {
        const description = yield* describeArchive(fs.stream(file, { chunkSize }))
        expect({ compression: description.compression, digest: description.digest, diffId: description.diffId })
          .toEqual({ compression: "zstd", digest: sha256(bytes), diffId: sha256(tar) })
        expect(description.specDump).toEqual(Option.some(podmanSpecDump))
      }
      // The metadata alone, read by node-tar, which decompresses with node:zlib too (the first frame ends in it).
      expect(yield* readArchiveMetadata(file)).toEqual({
        configDump: Option.some(podmanConfigDump),
        specDump: Option.some(podmanSpecDump)
      })
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("fails with ArchiveError for what is not a tar archive", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const { dir, tar } = yield* makeArchive
      const cases = {
        random: randomBytes(200_000),
        empty: new Uint8Array(0),
        truncated: tar.subarray(0, 1_000_000),
        "broken gzip": Buffer.concat([gzipSync(tar).subarray(0, 5000), randomBytes(5000)]),
        "broken zstd": Buffer.concat([Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd), randomBytes(5000)])
      }
      for (const [name, bytes] of Object.entries(cases)) {
        yield* fs.writeFile(`${dir}/${name}`, bytes)
        const error = yield* Effect.flip(describeArchive(fs.stream(`${dir}/${name}`)))
        expect(error._tag, name).toBe("ArchiveError")
        expect(error.message, name).toMatch(/not a readable tar archive|cannot decompress/)
      }
      const missing = yield* Effect.flip(describeArchive(fs.stream(`${dir}/missing.tar`)))
      expect(missing.message).toMatch(/^read failed: .*ENOENT/)
    }).pipe(Effect.provide(NodeContext.layer)))
})
