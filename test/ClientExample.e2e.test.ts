import { expect, layer } from "@effect/vitest"
import { Effect, Option } from "effect"
import { spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { projectRoot } from "./harness/CheckpointerProcess.ts"
import { startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { Stack } from "./harness/LocalStack.ts"

const examplePath = "packages/client/examples/checkpoint.ts"

const run = (command: string, args: ReadonlyArray<string>, env: Record<string, string>) =>
  Effect.async<{ readonly code: number | null; readonly stdout: string; readonly stderr: string }>((resume) => {
    const child = spawn(command, args, { cwd: projectRoot, env: { ...process.env, ...env } })
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
    child.on("close", (code) => resume(Effect.succeed({ code, stdout, stderr })))
  })

describeE2E("the typed client example of README", () => {
  layer(Stack.layer({ registryAuth: "htpasswd" }), { excludeTestServices: true, timeout: "180 seconds" })((it) => {
    it.effect("README shows the example file verbatim", () =>
      Effect.sync(() => {
        const readme = readFileSync(`${projectRoot}/README.md`, "utf8")
        const example = readFileSync(`${projectRoot}/${examplePath}`, "utf8")
        expect(readme).toContain(`\`\`\`ts\n${example.trimEnd()}\n\`\`\``)
      }))

    it.scoped("the example checkpoints a real container twice and deletes its pod", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const { container } = yield* startCounterPod(stack.cluster, {
          namespace: "default",
          name: "ops-client",
          nodeName: "node-a"
        })
        yield* container.waitAbove(3)
        const result = yield* run(
          process.execPath,
          ["--import", "tsx", examplePath, "default", "ops-client", "counter"],
          { CHECKPOINTER_URL: stack.checkpointer.url }
        )
        expect(result.code, result.stderr).toBe(0)
        const lines = result.stdout.trim().split("\n")
        const prefix = `${stack.registry.host}/checkpoints/counter`.replace(/\./g, "\\.")
        expect(lines[0]).toMatch(new RegExp(`^image ${prefix}:[0-9a-f]{16} \\(sha256:[0-9a-f]{64}\\)$`))
        expect(lines[1]).toMatch(new RegExp(`^image ${prefix}:[0-9a-f]{16}, pod default/ops-client deleted$`))
        expect(Option.isNone(yield* stack.cluster.apiServer.findPod("default", "ops-client"))).toBe(true)
      }))

    it.effect("the example exits non-zero naming a missing container", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const result = yield* run(
          process.execPath,
          ["--import", "tsx", examplePath, "default", "ops-client-missing", "counter"],
          { CHECKPOINTER_URL: stack.checkpointer.url }
        )
        expect(result.code).not.toBe(0)
        expect(result.stderr).toContain("no such container: ")
        expect(result.stderr).toContain("default/ops-client-missing/counter")
      }))
  })
})
