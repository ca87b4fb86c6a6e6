import { execFileSync } from "node:child_process"
import { describe } from "vitest"

const requiredCommands = ["podman", "criu", "runc", "docker-registry", "skopeo", "openssl", "htpasswd"]

const missingRequirements = (): ReadonlyArray<string> => {
  const missing: Array<string> = []
  if (process.getuid?.() !== 0) missing.push("root")
  for (const command of requiredCommands) {
    try {
      execFileSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" })
    } catch {
      missing.push(command)
    }
  }
  return missing
}

/**
 * `describe` for tests that need root, CRIU, podman and the registry. They skip where those are missing,
 * unless REQUIRE_E2E=1 (CI), where a missing requirement fails the run.
 */
export const describeE2E = (name: string, body: () => void) => {
  const missing = missingRequirements()
  if (missing.length > 0 && process.env.REQUIRE_E2E === "1") {
    throw new Error(`REQUIRE_E2E=1 but this machine lacks: ${missing.join(", ")} (run scripts/setup.sh as root)`)
  }
  return missing.length > 0 ? describe.skip(name, body) : describe(name, body)
}
