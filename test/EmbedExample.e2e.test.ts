import { FileSystem } from "@effect/platform"
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { expectNoArchiveLeft, expectRestoredCounterContinues, tagOf } from "./Expectations.ts"
import { projectRoot } from "./harness/CheckpointerProcess.ts"
import { startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { KanikoStackTag } from "./harness/KanikoStack.ts"
import { checkpointerEnv, checkpointRepository } from "./harness/LocalStack.ts"
import { run, runProcess } from "./harness/Process.ts"

const pnpm = "pnpm"
const minutes = (count: number) => `${count} minutes` as const

describeE2E("examples/embed: the packed libraries installed outside the workspace, on the real runtime", () => {
  layer(KanikoStackTag.layer, { excludeTestServices: true, timeout: "240 seconds" })((it) => {
    it.scoped(
      "a clean clone packs, the example installs the tarballs, type-checks, and checkpoints with two builders",
      () =>
        Effect.gen(function*() {
          const fs = yield* FileSystem.FileSystem
          const stack = yield* KanikoStackTag
          const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpointer-embed-" })
          const clone = `${dir}/clone`
          const example = `${clone}/examples/embed`

          yield* run(["git", "clone", "--quiet", projectRoot, clone])
          yield* run([pnpm, "install", "--offline", "--frozen-lockfile"], { cwd: clone, timeout: minutes(3) })
          yield* run([pnpm, "pack:libraries"], { cwd: clone, timeout: minutes(5) })
          yield* run([pnpm, "install", "--ignore-workspace", "--prefer-offline"], { cwd: example, timeout: minutes(3) })
          const installed = yield* fs.realPath(`${example}/node_modules/@checkpointer/core`)
          expect(installed).toContain(`${example}/node_modules/.pnpm/@checkpointer+core@file+..+..+dist+packs`)
          expect(yield* fs.exists(`${installed}/dist/lib/index.d.ts`)).toBe(true)
          yield* run([pnpm, "typecheck"], { cwd: example, timeout: minutes(3) })
          // The tarball's checkpointer-push is the bundled command (prepack bundles it), not the libraries' tree.
          const strategies = yield* fs.realPath(`${example}/node_modules/@checkpointer/strategies`)
          expect(yield* fs.exists(`${strategies}/dist/bundle/checkpointer-push.mjs`)).toBe(true)
          const notices = yield* fs.readFileString(`${strategies}/dist/bundle/checkpointer-push.licenses.txt`)
          expect(notices).toContain("== undici ")
          const usage = yield* run([`${example}/node_modules/.bin/checkpointer-push`, "--help"], {
            cwd: example,
            timeout: minutes(1)
          })
          expect(usage).toContain("Usage:")

          const { container } = yield* startCounterPod(stack.cluster, {
            namespace: "default",
            name: "embedded",
            nodeName: "node-a"
          })
          for (const builder of ["native", "kaniko"] as const) {
            const before = yield* container.waitAbove(3)
            const env = checkpointerEnv({
              registry: stack.registry,
              cluster: stack.cluster,
              node: stack.node,
              port: 3333,
              storage: `${dir}/unused-storage`,
              extra: builder === "native" ? {} : stack.kanikoSettings(builder)
            })
            const checkpointed = yield* runProcess(["node", "checkpoint.ts", "default", "embedded", "counter"], {
              cwd: example,
              env,
              timeout: minutes(3)
            })
            expect(checkpointed.exitCode, checkpointed.stderr).toBe(0)
            const [image = "", digest] = checkpointed.stdout.trim().split("@")
            expect(image).toMatch(new RegExp(`^${stack.registry.host}/${checkpointRepository}:[0-9a-f]{16}$`))
            const manifest = yield* stack.registry.manifest(checkpointRepository, tagOf(image))
            expect(manifest.digest).toBe(digest)
            expect(manifest.json.annotations?.["io.kubernetes.cri-o.annotations.checkpoint.name"]).toBe("counter")
            const ran = (yield* stack.cluster.agent.runs()).some((entry) =>
              entry.args.includes(`--destination=${image}`)
            )
            expect(ran, "a Kaniko pod built the image").toBe(builder === "kaniko")
            yield* expectNoArchiveLeft(stack.node.checkpointsDir)
            yield* expectRestoredCounterContinues(stack, image, `embedded-${builder}`, before)
          }
          expect(yield* fs.exists(`${dir}/unused-storage`), "the example keeps results in memory").toBe(false)
        }),
      { timeout: 900_000 }
    )
  })
})
