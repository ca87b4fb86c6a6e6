import { execFileSync } from "node:child_process"
import { fileURLToPath } from "node:url"
import { prepareCriu } from "./harness/Criu.ts"

/**
 * Builds the server bundle once, so that every test that starts a server process runs what `pnpm start` runs, and
 * finds out once whether CRIU needs its no-breakpoints mode here (the test workers inherit the answer).
 */
export default function setup() {
  prepareCriu()
  execFileSync(process.execPath, ["scripts/build.mjs"], {
    cwd: fileURLToPath(new URL("..", import.meta.url)),
    stdio: "inherit"
  })
}
