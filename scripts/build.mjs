// Bundles the server into minified ESM (dist/server/main.mjs and its chunks/): what `pnpm start` and the container
// image run. Also bundles the kubectl plugin (packages/cli/dist/bin/kubectl-checkpoint, its bin) and checkpointer-push
// (packages/strategies/dist/bin/checkpointer-push, which the benchmark runs and the package publishes), each a launcher
// of its dist/bundle/.
import { build } from "esbuild"
import { spawnSync } from "node:child_process"
import { access, chmod, mkdir, readdir, readFile, realpath, rm, writeFile } from "node:fs/promises"
import { basename, dirname } from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
// Some CommonJS dependencies call require(); give the ESM bundles one.
const requireShim =
  "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);"

/**
 * `node:http` through require(), not import: for an import Node builds the module's ESM facade, which reads every
 * export, among them the lazy `WebSocket`, `CloseEvent` and `MessageEvent`, and so loads Node's own copy of undici,
 * which nothing here uses (the registry and API clients share the npm one): about 16 MiB resident in a bare process.
 */
const httpThroughRequire = {
  name: "http-through-require",
  setup(build) {
    build.onResolve({ filter: /^(node:)?http$/ }, (args) =>
      args.namespace === "required-builtin"
        ? { path: "node:http", external: true }
        : { path: "node:http", namespace: "required-builtin" })
    build.onLoad({ filter: /.*/, namespace: "required-builtin" }, () => ({
      contents: "module.exports = require(\"node:http\")",
      loader: "js"
    }))
  }
}

/** What every bundle shares: one minified ESM file for Node 24. */
const bundle = {
  absWorkingDir: root,
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node24",
  mainFields: ["module", "main"],
  minify: true,
  plugins: [httpThroughRequire],
  logLevel: "warning"
}

/** The server's bundle and its compile cache. */
const buildServer = async () => {
  const server = await build({
    ...bundle,
    entryPoints: { main: "packages/server/src/main.ts" },
    outdir: "dist/server",
    outExtension: { ".js": ".mjs" },
    // Code only some configurations load (the OTLP exporter) stays in chunks of its own, imported when needed.
    splitting: true,
    chunkNames: "chunks/[name]-[hash]",
    legalComments: "external",
    banner: { js: requireShim },
    metafile: true
  })
  // Chunk names change with their content: stale chunks are removed after the build (not before: a server starting
  // from the bundle meanwhile must find it).
  const written = new Set(Object.keys(server.metafile.outputs).map((output) => `${root}/${output}`))
  const chunks = `${root}/dist/server/chunks`
  for (const name of await readdir(chunks).catch(() => [])) {
    if (!written.has(`${chunks}/${name}`)) await rm(`${chunks}/${name}`, { force: true })
  }

  // Node's compile cache (NODE_COMPILE_CACHE, which `pnpm start` and the container image set) holds V8's compiled code
  // of the bundle, so that a server starting from it does not parse 3 MB of JavaScript again: that parse leaves about
  // 20 MiB of freed but unreturned malloc memory behind for the life of the process. Written here by running the bundle
  // once with no settings but `pnpm start`'s node flags (V8 accepts a cache only from a run with the same flags): it
  // loads everything a start loads, reports the missing settings and exits.
  const compileCache = `${root}/dist/server/compile-cache`
  await rm(compileCache, { recursive: true, force: true })
  const startFlags = JSON.parse(await readFile(`${root}/package.json`, "utf8")).scripts.start.split(/\s+/)
    .filter((word) => word.startsWith("--"))
  spawnSync(process.execPath, [...startFlags, `${root}/dist/server/main.mjs`], {
    env: { PATH: process.env.PATH ?? "", NODE_COMPILE_CACHE: compileCache, NODE_COMPILE_CACHE_PORTABLE: "1" },
    stdio: "ignore"
  })
}

/**
 * A command run with an older Node (a workstation's, for the kubectl plugin) stops with a plain message instead of
 * failing inside a bundled dependency, which prints a screenful of minified code. Exit status 2, as wrong usage.
 */
const nodeVersionCheck = (command) =>
  "if (Number(process.versions.node.split('.')[0]) < 24) { " +
  `process.stderr.write('${command} needs Node.js 24 or later; this is Node.js ' + process.versions.node + '\\n'); ` +
  "process.exit(2) }"

/** Where `dependency` of the package in `dir` is installed (pnpm's layout and npm's alike), undefined if it is not. */
const installedDependency = async (dir, dependency) => {
  for (let at = dir; at !== dirname(at); at = dirname(at)) {
    const candidate = basename(at) === "node_modules" ? `${at}/${dependency}` : `${at}/node_modules/${dependency}`
    if (await access(`${candidate}/package.json`).then(() => true, () => false)) return realpath(candidate)
  }
  return undefined
}

/**
 * The name, version, license and license text of every package whose code is in a bundle, and of the packages those
 * depend on (some ship a build with their dependencies inside, as tar does): a published bundle carries them, since
 * most of its packages' licenses ask for their notice to go with every copy.
 */
const thirdPartyNotices = async (name, metafile) => {
  const manifests = new Map()
  const add = async (dir) => {
    if (manifests.has(dir)) return
    const manifest = JSON.parse(await readFile(`${dir}/package.json`, "utf8"))
    manifests.set(dir, manifest)
    for (const dependency of Object.keys(manifest.dependencies ?? {})) {
      const installed = await installedDependency(dir, dependency)
      if (installed !== undefined) await add(installed)
    }
  }
  for (const output of Object.values(metafile.outputs)) {
    for (const [input, { bytesInOutput }] of Object.entries(output.inputs)) {
      const found = bytesInOutput > 0 && /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input)
      if (found) await add(await realpath(`${root}/${found[1]}`))
    }
  }
  const sections = []
  for (const [dir, manifest] of manifests) {
    const licenseFile = (await readdir(dir)).find((file) => /^licen[cs]e/i.test(file))
    const text = licenseFile === undefined
      ? `(the package has no license file; its package.json says ${manifest.license})`
      : (await readFile(`${dir}/${licenseFile}`, "utf8")).trim()
    sections.push({ title: `${manifest.name} ${manifest.version} (${manifest.license})`, text })
  }
  sections.sort((left, right) => left.title.localeCompare(right.title))
  const body = sections.map(({ text, title }) => `== ${title} ==\n\n${text}\n`).join("\n")
  const heading =
    `${name} holds code of the packages below, under these licenses (a package's dependencies are listed ` +
    "with it, whether the bundle uses them or not)."
  return `${heading}\n\n${body}`
}

/**
 * An executable in two files: bin/NAME, a launcher of a few lines, and bundle/NAME.mjs (outside bin/, where kubectl
 * would take any kubectl-* file for a plugin). The launcher checks Node's version, then turns on Node's compile cache
 * (module.enableCompileCache: V8's compiled code, kept in the system's temporary directory or in NODE_COMPILE_CACHE)
 * and imports the bundle; a bundle cannot do that for itself, it is compiled before its first line runs. From the
 * second run on, a command starts without parsing its bundle again.
 */
const executable = async (name, { dist, entry }) => {
  const { metafile } = await build({
    ...bundle,
    entryPoints: [entry],
    outfile: `${dist}/bundle/${name}.mjs`,
    legalComments: "none",
    banner: { js: requireShim },
    metafile: true
  })
  await writeFile(`${root}/${dist}/bundle/${name}.licenses.txt`, await thirdPartyNotices(name, metafile))
  const launcher = [
    "#!/usr/bin/env node",
    nodeVersionCheck(name),
    "const { enableCompileCache } = await import('node:module')",
    "enableCompileCache?.()",
    `await import('../bundle/${name}.mjs')`,
    ""
  ].join("\n")
  await chmod(`${root}/${dist}/bundle/${name}.mjs`, 0o644)
  await mkdir(`${root}/${dist}/bin`, { recursive: true })
  await writeFile(`${root}/${dist}/bin/${name}`, launcher)
  await chmod(`${root}/${dist}/bin/${name}`, 0o755)
}

const commands = {
  "kubectl-checkpoint": { entry: "packages/cli/src/kubectl-checkpoint.ts", dist: "packages/cli/dist" },
  "checkpointer-push": { entry: "packages/strategies/src/cli/checkpointer-push.ts", dist: "packages/strategies/dist" }
}

// `node scripts/build.mjs NAME...` builds only those commands (a package's prepack); no names: everything.
const only = process.argv.slice(2)
for (const name of only) {
  if (!(name in commands)) throw new Error(`no command ${name}; the commands are ${Object.keys(commands).join(", ")}`)
}
if (only.length === 0) await buildServer()
for (const [name, command] of Object.entries(commands)) {
  if (only.length === 0 || only.includes(name)) await executable(name, command)
}
