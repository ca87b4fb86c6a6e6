import { describe, expect, it } from "vitest"
import { spawnSync } from "node:child_process"
import { projectRoot, serverCommand } from "./harness/CheckpointerProcess.ts"

/** Runs the built server as `pnpm start` does, with only `env`, and returns its exit code and output. */
const startServer = (env: Record<string, string>) => {
  const result = spawnSync(serverCommand.argv[0]!, serverCommand.argv.slice(1), {
    cwd: projectRoot,
    env: { PATH: process.env.PATH ?? "", ...serverCommand.env, ...env },
    encoding: "utf8",
    timeout: 30_000
  })
  return { status: result.status, output: `${result.stdout}${result.stderr}` }
}

describe("server startup", () => {
  it("lists every missing required variable in one error and exits non-zero", () => {
    const { output, status } = startServer({})
    expect(status).toBe(1)
    expect(output).toContain("invalid configuration")
    for (const name of ["CHECKPOINT_IMAGE_PREFIX", "CHECKPOINTER_NODE", "CHECKPOINTER_NODE_IP"]) {
      expect(output).toContain(`${name} is required but not set`)
    }
  })

  it("names an invalid value's variable", () => {
    const { output, status } = startServer({
      CHECKPOINT_IMAGE_PREFIX: "r/x",
      CHECKPOINTER_NODE: "n",
      CHECKPOINTER_NODE_IP: "127.0.0.1",
      KANIKO_TIMEOUT: "soon"
    })
    expect(status).toBe(1)
    expect(output).toMatch(/KANIKO_TIMEOUT: Expected an integer value but received "soon"/)
  })

  it("says the Kaniko builders are not available yet instead of starting", () => {
    const { output, status } = startServer({
      CHECKPOINT_IMAGE_PREFIX: "r/x",
      CHECKPOINTER_NODE: "n",
      CHECKPOINTER_NODE_IP: "127.0.0.1",
      CHECKPOINTER_PORT: "39990",
      STORAGE_BASE_PATH: "/tmp/checkpointer-startup-test"
    })
    expect(status).toBe(1)
    expect(output).toContain("CHECKPOINT_BUILDER=kaniko is not available yet")
  })
})
