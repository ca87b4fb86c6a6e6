import { Command } from "@effect/platform"
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { readFileSync } from "node:fs"
import { projectRoot } from "./harness/CheckpointerProcess.ts"
import { startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { Stack } from "./harness/LocalStack.ts"

/** The curl command lines of README.md's shell blocks, in order. */
const readmeCurlCommands = (): ReadonlyArray<string> => {
  const readme = readFileSync(`${projectRoot}/README.md`, "utf8")
  const blocks = [...readme.matchAll(/```(?:sh|shell|bash)\n([\s\S]*?)```/g)].map((match) => match[1]!)
  return blocks.flatMap((block) => block.split("\n")).filter((line) => line.startsWith("curl "))
}

describeE2E("the curl commands README shows", () => {
  // The node pulls checkpoint images with its own credentials: README's restore example needs no pull secret.
  const stack = Stack.layer({ registryAuth: "htpasswd", nodesPullCheckpoints: true })
  layer(stack, { excludeTestServices: true, timeout: "180 seconds" })((it) => {
    it.scoped("run as written against a Checkpointer (only its address and the example identifier replaced)", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        yield* startCounterPod(stack.cluster, {
          namespace: "default",
          name: "timer-sleep",
          nodeName: "node-a",
          container: "timer"
        })
        const commands = readmeCurlCommands()
        expect(commands.length).toBeGreaterThanOrEqual(4)
        let identifier = "worker-1:b2c79a5bd8520ab5"
        const statuses: Array<string> = []
        for (const command of commands) {
          const line = command
            .replaceAll("http://localhost:3333", stack.checkpointer.url)
            .replaceAll("worker-1:b2c79a5bd8520ab5", identifier)
          // Asynchronously: the simulated kubelet and API server answer from this process's event loop.
          const output = yield* Command.string(
            Command.make("sh", "-c", `${line} --silent --write-out '\\n%{http_code}'`)
          )
          const status = output.slice(output.lastIndexOf("\n") + 1)
          const body = output.slice(0, output.lastIndexOf("\n"))
          statuses.push(`${command.slice(0, 60)} -> ${status}`)
          const accepted = /"checkpointIdentifier":"([^"]+)"/.exec(body)
          if (accepted !== null) identifier = accepted[1]!
        }
        expect(statuses.map((line) => line.slice(line.lastIndexOf(" ") + 1)), statuses.join("\n")).toEqual([
          "201",
          "202",
          "200",
          "200",
          "201"
        ])
        expect(identifier).toMatch(/^node-a:[0-9a-f]{16}$/)
      }))
  })
})
