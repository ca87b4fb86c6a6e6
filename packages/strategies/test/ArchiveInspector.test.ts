import { FileSystem, Path } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { gzipSync, zstdCompressSync } from "node:zlib"
import { create } from "tar"
import { sniffCompression } from "../src/archive/ArchiveFormat.ts"
import { describeArchive } from "../src/archive/ArchiveInspector.ts"
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
