// Bundles the server into minified ESM (dist/server/main.mjs and its chunks/): what `pnpm start` and the container
// image run.
// Also bundles the kubectl plugin into one executable, packages/cli/dist/bin/kubectl-checkpoint (its bin).
import { build } from "esbuild"
import { chmod, rm } from "node:fs/promises"
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

// Chunk names change with their content: no stale chunk may stay next to the bundle.
await rm(`${root}/dist/server`, { recursive: true, force: true })
await build({
  ...bundle,
  entryPoints: { main: "packages/server/src/main.ts" },
  outdir: "dist/server",
  outExtension: { ".js": ".mjs" },
  // Code only some configurations load (the OTLP exporter) stays in chunks of its own, imported when needed.
  splitting: true,
  chunkNames: "chunks/[name]-[hash]",
  legalComments: "external",
  banner: { js: requireShim }
})

const plugin = "packages/cli/dist/bin/kubectl-checkpoint"
await build({
  ...bundle,
  entryPoints: ["packages/cli/src/kubectl-checkpoint.ts"],
  outfile: plugin,
  legalComments: "none",
  banner: { js: `#!/usr/bin/env node\n${requireShim}` }
})
await chmod(`${root}/${plugin}`, 0o755)
