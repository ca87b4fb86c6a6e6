import { spawn, spawnSync } from "node:child_process"
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import path from "node:path"

/**
 * CRIU stops a task after its parasite code with a hardware breakpoint. On some virtual machines (this workplace's
 * firecracker kernel 6.18.44-fc-v1045 among them) the breakpoint never fires and every dump hangs; `CRIU_FAULT=130`
 * (CRIU's "no breakpoints" mode) makes it step to the same point with PTRACE_SYSCALL instead. This dumps a throwaway
 * process once, and only if that hangs and the fallback works sets `CRIU_FAULT=130` in this process's environment,
 * which the runtimes started by the harness inherit (CRI-O and podman, which do not pass their environment to runc,
 * get a runc wrapper: see `runcForRuntimes`). The answer is kept in `CHECKPOINTER_CRIU_PROBED` for child processes.
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

/**
 * What runtimes that clear runc's environment (CRI-O, podman) need to pass `CRIU_FAULT` on: the runc to run (the
 * system's, or a wrapper that sets it) and, for podman, a containers.conf override naming that wrapper `runc`.
 */
export const runcForRuntimes = (): RuncForRuntimes => (runcOfThisProcess ??= makeRuncForRuntimes())

interface RuncForRuntimes {
  readonly runc: string
  readonly podmanEnv: Readonly<Record<string, string>>
}

let runcOfThisProcess: RuncForRuntimes | undefined

const makeRuncForRuntimes = (): RuncForRuntimes => {
  prepareCriu()
  const fault = process.env.CRIU_FAULT
  if (fault === undefined) return { runc: "/usr/sbin/runc", podmanEnv: {} }
  const dir = path.join(tmpdir(), `checkpointer-criu-fault-${fault}`)
  mkdirSync(dir, { recursive: true })
  const runc = path.join(dir, "runc")
  const conf = path.join(dir, "containers.conf")
  writeAtomically(runc, `#!/bin/sh\nCRIU_FAULT=${fault} exec /usr/sbin/runc "$@"\n`, 0o755)
  writeAtomically(conf, `[engine.runtimes]\nrunc = [${JSON.stringify(runc)}]\n`, 0o644)
  return { runc, podmanEnv: { CONTAINERS_CONF_OVERRIDE: conf } }
}

/** Other processes may be running the file: it is replaced, never rewritten in place. */
const writeAtomically = (file: string, text: string, mode: number) => {
  const temporary = `${file}.${process.pid}`
  writeFileSync(temporary, text, { mode })
  renameSync(temporary, file)
}
