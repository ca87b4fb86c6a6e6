import { CheckpointDirectory } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect } from "effect"
import { execFileSync } from "node:child_process"

/** A temporary KUBELET_CHECKPOINT_DIR with a secret file next to it, outside. */
const setUp = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const base = yield* fs.makeTempDirectoryScoped({ prefix: "checkpoint-dir-" })
  const dir = `${base}/checkpoints`
  yield* fs.makeDirectory(dir)
  const secret = `${base}/secret`
  yield* fs.writeFileString(secret, "do not push me")
  const directory = yield* CheckpointDirectory.pipe(
    Effect.provide(CheckpointDirectory.Default),
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["KUBELET_CHECKPOINT_DIR", dir]])))
  )
  return { fs, dir, secret, directory }
})

describe("CheckpointDirectory", () => {
  it.scoped("claims a regular file directly inside the directory and removes it", () =>
    Effect.gen(function*() {
      const { dir, directory, fs } = yield* setUp
      yield* fs.writeFileString(`${dir}/checkpoint-a.tar`, "archive")
      const claimed = yield* Effect.scoped(directory.claim(`${dir}/checkpoint-a.tar`))
      expect(claimed.path).toBe(`${yield* fs.realPath(dir)}/checkpoint-a.tar`)
      yield* directory.remove(claimed)
      expect(yield* fs.exists(`${dir}/checkpoint-a.tar`)).toBe(false)
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("refuses paths outside, with '..', relative, links, directories, FIFOs; nothing is touched", () =>
    Effect.gen(function*() {
      const { dir, directory, fs, secret } = yield* setUp
      yield* fs.symlink(secret, `${dir}/link.tar`)
      yield* fs.makeDirectory(`${dir}/sub.tar`)
      execFileSync("mkfifo", [`${dir}/fifo.tar`])
      const cases: ReadonlyArray<readonly [string, string]> = [
        [secret, "not directly inside KUBELET_CHECKPOINT_DIR"],
        [`${dir}/../secret`, "'..'"],
        [`${dir}/./x.tar`, "'..'"],
        ["checkpoints/x.tar", "not an absolute path"],
        [`${dir}/link.tar`, "symbolic link"],
        [`${dir}/sub.tar`, "not a regular file"],
        [`${dir}/fifo.tar`, "not a regular file"],
        [`${dir}/missing.tar`, "does not exist"],
        ["/etc/passwd", "not directly inside"]
      ]
      for (const [answered, reason] of cases) {
        const error = yield* Effect.scoped(Effect.flip(directory.claim(answered)))
        expect(error.phase, answered).toBe("kubelet")
        expect(error.message, answered).toContain(`the kubelet answered, ${JSON.stringify(answered)}: `)
        expect(error.message, answered).toContain(reason)
      }
      expect(yield* fs.readFileString(secret)).toBe("do not push me")
      expect((yield* fs.readDirectory(dir)).sort()).toEqual(["fifo.tar", "link.tar", "sub.tar"])
    }).pipe(Effect.provide(NodeContext.layer)))

  it.scoped("leaves the path alone when it names another file by the time the archive is removed", () =>
    Effect.gen(function*() {
      const { dir, directory, fs } = yield* setUp
      yield* fs.writeFileString(`${dir}/checkpoint-b.tar`, "archive")
      // The claim holds the file open until the checkpoint ends: its inode cannot be reused meanwhile.
      yield* Effect.scoped(Effect.gen(function*() {
        const claimed = yield* directory.claim(`${dir}/checkpoint-b.tar`)
        yield* fs.remove(`${dir}/checkpoint-b.tar`)
        yield* fs.writeFileString(`${dir}/other`, "someone else's")
        yield* fs.rename(`${dir}/other`, `${dir}/checkpoint-b.tar`)
        yield* directory.remove(claimed)
      }))
      expect(yield* fs.readFileString(`${dir}/checkpoint-b.tar`)).toBe("someone else's")
    }).pipe(Effect.provide(NodeContext.layer)))
})
