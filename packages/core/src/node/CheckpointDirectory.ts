import { Effect } from "effect"
import { constants } from "node:fs"
import { lstat, open, realpath, unlink } from "node:fs/promises"
import { basename, dirname, isAbsolute, join } from "node:path"
import { checkpointDirConfig } from "../config/Config.ts"
import { PhaseFailed } from "../domain/Errors.ts"
import { reasonOf } from "../domain/Reason.ts"

/** An archive the kubelet answered, verified to be a regular file directly inside KUBELET_CHECKPOINT_DIR. */
export interface ClaimedArchive {
  /** The resolved path: KUBELET_CHECKPOINT_DIR (resolved) and the file name. */
  readonly path: string
  readonly device: number
  readonly inode: number
}

const noFollow = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY

/** Why a path the kubelet answered cannot be used, in words; other failures by their reason. */
const pathProblem = (cause: unknown): string => {
  const code = typeof cause === "object" && cause !== null && "code" in cause ? String(cause.code) : ""
  switch (code) {
    case "ELOOP":
      return "it is a symbolic link"
    case "ENOENT":
      return "it does not exist"
    case "ENOTDIR":
      return "a part of it is not a directory"
    default:
      return reasonOf(cause)
  }
}

/**
 * The kubelet's checkpoint directory. The kubelet answers a path; only a regular file directly inside
 * KUBELET_CHECKPOINT_DIR is ever read or deleted, whatever the kubelet (or whoever answers in its place) says.
 */
export class CheckpointDirectory extends Effect.Service<CheckpointDirectory>()("checkpointer/CheckpointDirectory", {
  effect: Effect.gen(function*() {
    const kubeletCheckpointDir = yield* checkpointDirConfig
    const refused = (answered: string, reason: string, cause?: unknown) =>
      new PhaseFailed({
        phase: "kubelet",
        message: `refused the archive path the kubelet answered, ${JSON.stringify(answered)}: ${reason}`,
        cause
      })
    const attempt = <A>(answered: string, run: () => Promise<A>) =>
      Effect.tryPromise({ try: run, catch: (cause) => refused(answered, pathProblem(cause), cause) })

    /**
     * Verifies the path and holds the file open (O_NOFOLLOW) until the scope closes, so that `remove` can tell
     * whether the path still names the same file.
     */
    const claim = Effect.fn("CheckpointDirectory.claim")(function*(answered: string) {
      if (!isAbsolute(answered)) return yield* refused(answered, "it is not an absolute path")
      if (answered.split("/").some((segment) => segment === ".." || segment === ".")) {
        return yield* refused(answered, "it contains '.' or '..'")
      }
      const root = yield* Effect.tryPromise({
        try: () => realpath(kubeletCheckpointDir),
        catch: (cause) =>
          refused(answered, `KUBELET_CHECKPOINT_DIR ${kubeletCheckpointDir}: ${pathProblem(cause)}`, cause)
      })
      const parent = yield* attempt(answered, () => realpath(dirname(answered)))
      if (parent !== root) {
        return yield* refused(answered, `it is not directly inside KUBELET_CHECKPOINT_DIR (${kubeletCheckpointDir})`)
      }
      const path = join(root, basename(answered))
      const handle = yield* Effect.acquireRelease(
        attempt(answered, () => open(path, noFollow)),
        (handle) => Effect.promise(() => handle.close().catch(() => undefined))
      )
      const stat = yield* attempt(answered, () => handle.stat())
      if (!stat.isFile()) return yield* refused(answered, "it is not a regular file")
      return { path, device: stat.dev, inode: stat.ino } satisfies ClaimedArchive
    })

    /** Deletes the archive, unless its path no longer names the file that was claimed (then it is left alone). */
    const remove = Effect.fn("CheckpointDirectory.remove")(function*(archive: ClaimedArchive) {
      const current = yield* Effect.tryPromise(() => lstat(archive.path)).pipe(Effect.option)
      if (current._tag === "None") return
      const same = current.value.isFile() && current.value.dev === archive.device && current.value.ino === archive.inode
      if (!same) {
        return yield* Effect.logWarning("the archive path names another file now: left in place").pipe(
          Effect.annotateLogs({ archive: archive.path })
        )
      }
      yield* Effect.tryPromise(() => unlink(archive.path)).pipe(
        Effect.tapError((error) =>
          Effect.logWarning("could not remove the checkpoint archive").pipe(
            Effect.annotateLogs({ archive: archive.path, error: String(error.cause) })
          )
        ),
        Effect.ignore
      )
    })

    return { claim, remove } as const
  })
}) {}
