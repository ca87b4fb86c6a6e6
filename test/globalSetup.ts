import { execFileSync } from "node:child_process"
import { fileURLToPath } from "node:url"

/** Builds the server bundle once, so that every test that starts a server process runs what `pnpm start` runs. */
export default function setup() {
  execFileSync(process.execPath, ["scripts/build.mjs"], {
    cwd: fileURLToPath(new URL("..", import.meta.url)),
    stdio: "inherit"
  })
}
