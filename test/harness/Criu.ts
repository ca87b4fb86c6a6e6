import { spawn, spawnSync } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import path from "node:path"

/**
 * CRIU stops a task after its parasite code with a hardware breakpoint. On some virtual machines (this workplace's
 * firecracker kernel 6.18.44-fc-v1045 among them) the breakpoint never fires and every dump hangs; `CRIU_FAULT=130`
 * (CRIU's "no breakpoints" mode) makes it step to the same point with PTRACE_SYSCALL instead. This dumps a throwaway
 * process once, and only if that hangs and the fallback works sets `CRIU_FAULT=130` in this process's environment,
 * which the runtimes started by the harness inherit (CRI-O, which does not pass its environment to runc, gets a runc
 * wrapper: see `runcForCrio`). The answer is kept in `CHECKPOINTER_CRIU_PROBED` for child processes.
 */
export const prepareCriu = (): void => {
  if (process.env.CHECKPOINTER_CRIU_PROBED !== undefined) return
  process.env.CHECKPOINTER_CRIU_PROBED = "1"
  if (process.getuid?.() !== 0 || spawnSync("criu", ["--version"], { stdio: "ignore" }).status !== 0) return
  if (dumps({})) return
  if (!dumps({ CRIU_FAULT: "130" })) return
  process.env.CRIU_FAULT = "130"
  console.warn("[harness] CRIU hangs at its hardware breakpoint on this machine: CRIU_FAULT=130 (no breakpoints) set")
}

/** Whether `criu dump --leave-running` of a small shell loop finishes within 10 s with the given environment. */
const dumps = (env: Readonly<Record<string, string>>): boolean => {
  const dir = mkdtempSync(path.join(tmpdir(), "criu-probe-"))
  const target = spawn("sh", ["-c", "while :; do sleep 0.2; done"], { stdio: "ignore", detached: true })
  try {
    spawnSync("sleep", ["0.2"])
    const dump = spawnSync("criu", ["dump", "-t", String(target.pid), "-D", dir, "--leave-running"], {
      env: { ...process.env, ...env },
      stdio: "ignore",
      timeout: 10_000,
      killSignal: "SIGKILL"
    })
    return dump.status === 0
  } finally {
    try {
      process.kill(-target.pid!, "SIGKILL")
    } catch {
      // already gone
    }
    rmSync(dir, { recursive: true, force: true })
  }
}

/** The runc CRI-O should run: the system's, or a wrapper that passes `CRIU_FAULT` on (CRI-O clears runc's env). */
export const runcForCrio = (dir: string): { readonly path: string; readonly script?: string } =>
  process.env.CRIU_FAULT === undefined
    ? { path: "/usr/sbin/runc" }
    : {
      path: path.join(dir, "runc-criu-env"),
      script: `#!/bin/sh\nCRIU_FAULT=${process.env.CRIU_FAULT} exec /usr/sbin/runc "$@"\n`
    }
