import { invalidConfiguration } from "@checkpointer/core"
import { ArchivePusher, NativeImageBuilder, pushArchive } from "@checkpointer/strategies"
import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it, layer } from "@effect/vitest"
import { ConfigProvider, Effect, Layer, Option } from "effect"
import { spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { create } from "tar"
import { describeE2E } from "../../../test/harness/E2E.ts"
import * as Podman from "../../../test/harness/Podman.ts"
import { startRegistry } from "../../../test/harness/Registry.ts"

const cliPath = `${import.meta.dirname}/../src/cli/checkpointer-push.ts`

/** Runs checkpointer-push from its sources; with `terminal`, stderr is a TTY (through script(1)). */
const runCli = (args: ReadonlyArray<string>, options?: { readonly terminal?: boolean }) =>
  Effect.async<{ readonly code: number | null; readonly stdout: string; readonly stderr: string }>((resume) => {
    const command = [process.execPath, "--import", "tsx", cliPath, ...args]
    const quoted = command.map((word) => `'${word.replace(/'/g, "'\\''")}'`).join(" ")
    const child = options?.terminal === true
      ? spawn("script", ["--quiet", "--return", "--command", `${quoted} 2>/dev/tty`, "/dev/null"])
      : spawn(command[0]!, command.slice(1))
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
    child.on("close", (code) => resume(Effect.succeed({ code, stdout, stderr })))
  })

/** The message the server prints at startup for these settings of its native builder. */
const serverStartupMessage = (settings: Record<string, string>) =>
  Layer.build(NativeImageBuilder.layer).pipe(
    Effect.scoped,
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(settings)))),
    Effect.flip,
    Effect.map((error) => invalidConfiguration(error).message)
  )

const pusherError = (pusher: Layer.Layer<ArchivePusher, unknown, FileSystem.FileSystem>) =>
  Layer.build(pusher).pipe(Effect.scoped, Effect.flip)

describe("ArchivePusher", () => {
  it.effect("wrong settings fail with the server's startup messages", () =>
    Effect.gen(function*() {
      for (
        const settings of [
          { CHECKPOINT_LAYER_COMPRESSION: "brotli" },
          { REGISTRY_CA_FILE: "/nonexistent/ca.pem" },
          { CHECKPOINT_ENCRYPTION_KEYS: "/nonexistent/key.pem", REGISTRY_INSECURE: "maybe" }
        ]
      ) {
        const message = yield* serverStartupMessage(settings)
        expect(message).toMatch(/^invalid configuration:\n {2}(CHECKPOINT_LAYER_COMPRESSION|REGISTRY_)/)
        expect(yield* pusherError(ArchivePusher.layer(settings))).toMatchObject({
          _tag: "InvalidConfiguration",
          message
        })
      }
      expect(
        yield* pusherError(ArchivePusher.layerWith({
          authFile: Option.none(),
          caFile: Option.some("/nonexistent/ca.pem"),
          insecure: false
        }))
      ).toMatchObject({
        _tag: "InvalidConfiguration",
        message: yield* serverStartupMessage({ REGISTRY_CA_FILE: "/nonexistent/ca.pem" })
      })
    }).pipe(Effect.provide(NodeContext.layer)))

  it.effect("refuses a missing file or one that is not a checkpoint archive, naming it, before any request", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "archive-pusher-" })
      yield* fs.writeFile(`${dir}/random.tar`, randomBytes(64 * 1024))
      yield* fs.writeFile(`${dir}/empty.tar`, new Uint8Array())
      yield* fs.writeFileString(`${dir}/notes.txt`, "no checkpoint here")
      yield* Effect.promise(() => create({ cwd: dir, file: `${dir}/plain.tar` }, ["notes.txt"]))
      const cases = {
        [`${dir}/missing.tar`]: "cannot be read: ",
        [dir]: "is not a regular file",
        [`${dir}/random.tar`]: "is not a checkpoint archive: ",
        [`${dir}/empty.tar`]: "is not a checkpoint archive: ",
        [`${dir}/plain.tar`]: "is not a checkpoint archive: no config.dump or spec.dump names its container"
      }
      // Port 9 (discard) on loopback refuses connections: any request would fail the push step instead.
      const pushed = Effect.forEach(
        Object.keys(cases),
        (archive) =>
          Effect.flip(pushArchive(archive, `127.0.0.1:9/checkpoints/refused:${randomBytes(4).toString("hex")}`))
      )
      const errors = yield* pushed.pipe(
        Effect.provide(ArchivePusher.layerWith({ authFile: Option.none(), caFile: Option.none(), insecure: true }))
      )
      expect(errors.map((error) => [error._tag, error.step, error.message])).toEqual(
        Object.entries(cases).map(([archive, reason]) => [
          "ImageBuildError",
          "read archive",
          expect.stringContaining(`${archive} ${reason}`)
        ])
      )
    }).pipe(Effect.scoped, Effect.provide(NodeContext.layer)))

  it.effect("checkpointer-push: exit 2 with the usage for wrong arguments or settings, 1 for a bad archive", () =>
    Effect.gen(function*() {
      const usage = yield* runCli(["only-one-argument"])
      expect(usage.code).toBe(2)
      expect(usage.stderr).toContain("expected ARCHIVE and IMAGE, got 1 argument(s)")
      expect(usage.stderr).toContain("Usage:\n  checkpointer-push ARCHIVE IMAGE")
      const settings = yield* runCli(["/nonexistent.tar", "127.0.0.1:9/x/y:z", "--compression", "brotli"])
      expect(settings.code).toBe(2)
      expect(settings.stderr).toContain(yield* serverStartupMessage({ CHECKPOINT_LAYER_COMPRESSION: "brotli" }))
      const missing = yield* runCli(["/nonexistent.tar", "127.0.0.1:9/x/y:z", "--insecure"])
      expect([missing.code, missing.stdout]).toEqual([1, ""])
      expect(missing.stderr).toContain("checkpointer-push: /nonexistent.tar cannot be read: ")
    }).pipe(Effect.provide(NodeContext.layer)))
})

describeE2E("ArchivePusher and checkpointer-push against a real registry", () => {
  layer(NodeContext.layer, { timeout: "180 seconds", excludeTestServices: true })((it) => {
    it.scoped("pushes a podman archive as is, named by the archive; progress to the end; podman restores it", () =>
      Effect.gen(function*() {
        const fs = yield* FileSystem.FileSystem
        const dir = yield* fs.makeTempDirectoryScoped({ prefix: "archive-pusher-e2e-" })
        const registry = yield* startRegistry({ dir: `${dir}/registry`, auth: "htpasswd" })
        const containerName = `pusher-${randomBytes(4).toString("hex")}-counter`
        yield* Podman.runCounter(containerName)
        yield* Podman.waitForCounterAbove(containerName, 3)
        const archive = `${dir}/checkpoint.tar`
        yield* Podman.checkpointContainer({ name: containerName, archive, timeout: "60 seconds" })
        const counter = yield* Podman.archivedCounterValue(archive)
        const size = Number((yield* fs.stat(archive)).size)
        const settings = { REGISTRY_AUTH_FILE: registry.authFile, REGISTRY_CA_FILE: registry.caFile }

        const progress: Array<number> = []
        const imageName = `${registry.host}/checkpoints/pushed:library`
        const built = yield* pushArchive(archive, imageName, {
          onProgress: (bytesRead) => Effect.sync(() => progress.push(bytesRead))
        }).pipe(Effect.provide(ArchivePusher.layer(settings)))
        expect(built).toEqual({ name: imageName, digest: expect.stringMatching(/^sha256:[0-9a-f]{64}$/), size })
        expect(progress.at(-1)).toBe(size)
        expect(progress).toEqual([...progress].sort((a, b) => a - b))
        const manifest = yield* registry.manifest("checkpoints/pushed", "library")
        expect(manifest.json.annotations).toMatchObject({
          "io.kubernetes.cri-o.annotations.checkpoint.name": containerName,
          "org.criu.checkpoint.container.name": containerName,
          "io.podman.annotations.checkpoint.name": containerName,
          "io.podman.annotations.checkpoint.runtime.name": "runc"
        })
        expect(manifest.json.annotations).not.toHaveProperty("org.criu.checkpoint.pod.name")

        const cli = yield* runCli(
          [
            archive,
            `${registry.host}/checkpoints/pushed:cli`,
            "--auth-file",
            registry.authFile,
            "--ca-file",
            registry.caFile
          ],
          { terminal: true }
        )
        expect(cli.code, cli.stdout).toBe(0)
        // script(1) merges the terminal's output: the image, then progress and the summary.
        expect(cli.stdout).toContain(`${registry.host}/checkpoints/pushed:cli@sha256:`)
        expect(cli.stdout).toMatch(/pushing [\d.]+ \/ [\d.]+ MiB \(100%\)/)
        expect(cli.stdout).toMatch(/pushed [\d.]+ MiB in [\d.]+ s/)

        const restoredName = `${containerName}-restored`
        yield* Podman.restoreFromImage({
          image: `${registry.host}/checkpoints/pushed:cli`,
          name: restoredName,
          certDir: registry.certDir,
          tlsVerify: true,
          creds: { username: registry.username, password: registry.password }
        })
        const first = yield* Podman.counterValue(restoredName)
        expect(first).toBeGreaterThanOrEqual(counter)
        yield* Podman.waitForCounterAbove(restoredName, first)
      }))
  })
})
