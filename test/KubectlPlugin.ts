import { Effect } from "effect"
import { execFileSync, spawn } from "node:child_process"
import { projectRoot } from "./harness/CheckpointerProcess.ts"

/** Where scripts/build.mjs puts the plugin (the bin of @checkpointer/cli); kubectl finds it on PATH. */
export const pluginDir = `${projectRoot}/packages/cli/dist/bin`

export const hasKubectl = (() => {
  try {
    execFileSync("sh", ["-c", "command -v kubectl"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
})()

export interface Outcome {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

export const run = (command: string, args: ReadonlyArray<string>, env: Record<string, string>) =>
  Effect.async<Outcome>((resume) => {
    const child = spawn(command, args, {
      env: { PATH: `${pluginDir}:${process.env.PATH ?? ""}`, HOME: process.env.HOME ?? "/root", ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
    child.on("close", (code) => resume(Effect.succeed({ code, stdout, stderr })))
  })

/** `kubectl checkpoint ARGS` (the real kubectl when installed, which runs kubectl-checkpoint from PATH). */
export const kubectlCheckpoint = (args: ReadonlyArray<string>, env: Record<string, string>) =>
  hasKubectl ? run("kubectl", ["checkpoint", ...args], env) : run("kubectl-checkpoint", args, env)

/** The same on a terminal (script(1) gives it one), to see the progress line. */
export const kubectlCheckpointOnTerminal = (args: ReadonlyArray<string>, env: Record<string, string>) =>
  run("script", ["-qec", ["kubectl-checkpoint", ...args].map((word) => `'${word}'`).join(" "), "/dev/null"], env).pipe(
    Effect.map(({ code, stderr, stdout }) => ({ code, output: `${stdout}${stderr}` }))
  )
