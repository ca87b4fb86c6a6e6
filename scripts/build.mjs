// Bundles the server into one minified ESM file (dist/server/main.mjs): what `pnpm start` and the container image run.
// Also bundles the kubectl plugin into one executable, packages/cli/dist/bin/kubectl-checkpoint (its bin), and
// checkpointer-push into packages/strategies/dist/bin/checkpointer-push (the benchmark runs it).
import { build } from "esbuild"
import { chmod } from "node:fs/promises"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
// Some CommonJS dependencies call require(); give the ESM bundles one.
const requireShim =
  "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);"

/** What every bundle shares: one minified ESM file for Node 24. */
const bundle = {
  absWorkingDir: root,
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node24",
  mainFields: ["module", "main"],
  minify: true,
  logLevel: "warning"
}

await build({
  ...bundle,
  entryPoints: { main: "packages/server/src/main.ts" },
  outdir: "dist/server",
  outExtension: { ".js": ".mjs" },
  legalComments: "external",
  banner: { js: requireShim }
})

/** One executable file; esbuild keeps the entry's shebang on its first line. */
const executable = async (entry, outfile) => {
  await build({
    ...bundle,
    entryPoints: [entry],
    outfile,
    legalComments: "none",
    banner: { js: requireShim }
  })
  await chmod(`${root}/${outfile}`, 0o755)
}

await executable("packages/cli/src/kubectl-checkpoint.ts", "packages/cli/dist/bin/kubectl-checkpoint")
await executable("packages/strategies/src/cli/checkpointer-push.ts", "packages/strategies/dist/bin/checkpointer-push")
