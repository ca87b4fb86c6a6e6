import { describe, expect, it } from "@effect/vitest"
import { build } from "esbuild"
import { spawnSync } from "node:child_process"
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { resolve } from "node:path"
import { pathToFileURL } from "node:url"
import { projectRoot } from "./harness/CheckpointerProcess.ts"

interface Manifest {
  readonly name: string
  readonly version: string
  readonly private?: boolean
  readonly license?: string
  readonly engines?: Record<string, string>
  readonly repository?: { readonly url: string; readonly directory: string }
  readonly files?: ReadonlyArray<string>
  readonly scripts?: Record<string, string>
  readonly exports: Record<string, unknown>
  readonly dependencies?: Record<string, string>
  readonly peerDependencies?: Record<string, string>
  readonly publishConfig?: { readonly exports?: Record<string, unknown>; readonly bin?: Record<string, string> }
}

const readJson = (path: string): unknown => JSON.parse(readFileSync(`${projectRoot}/${path}`, "utf8"))

const packages = readdirSync(`${projectRoot}/packages`).map((dir) => ({
  dir,
  manifest: readJson(`packages/${dir}/package.json`) as Manifest
}))
const published = packages.filter(({ manifest }) => manifest.private !== true)

describe("the packages", () => {
  it("publishes the libraries and the client; the server and the kubectl plugin stay private", () => {
    expect(published.map(({ manifest }) => manifest.name).sort()).toEqual([
      "@checkpointer/client",
      "@checkpointer/core",
      "@checkpointer/strategies"
    ])
  })

  it("move their versions together, and CHANGELOG.md has an entry for that version", () => {
    const versions = new Set(packages.map(({ manifest }) => manifest.version))
    expect(versions.size).toBe(1)
    const changelog = readFileSync(`${projectRoot}/CHANGELOG.md`, "utf8")
    expect(changelog).toMatch(new RegExp(`^## ${[...versions][0]!.replace(/\./g, "\\.")}\\b`, "m"))
  })

  it.each(published)(
    "$manifest.name: built ESM and declarations where tsc emits them, with its README",
    ({ dir, manifest }) => {
      const build = readJson(`packages/${dir}/tsconfig.build.json`) as {
        readonly compilerOptions: { readonly outDir: string; readonly rootDir: string }
      }
      const { outDir, rootDir } = build.compilerOptions
      expect(manifest.exports).toEqual({ ".": `./${rootDir}/index.ts` })
      expect(manifest.publishConfig?.exports).toEqual({
        ".": { types: `./${outDir}/index.d.ts`, import: `./${outDir}/index.js` }
      })
      // A command is published bundled (scripts/build.mjs, run by prepack): its launcher and its bundle.
      for (const [name, bin] of Object.entries(manifest.publishConfig?.bin ?? {})) {
        expect(bin).toBe(`./dist/bin/${name}`)
        expect(manifest.files).toEqual(expect.arrayContaining(["dist/bin", "dist/bundle"]))
        expect(manifest.scripts?.prepack).toContain(`scripts/build.mjs ${name}`)
        const source = `packages/${dir}/${rootDir}/cli/${name}.ts`
        expect(readFileSync(`${projectRoot}/${source}`, "utf8")).toMatch(/^#!\/usr\/bin\/env node\n/)
      }
      expect(manifest.files).toEqual(expect.arrayContaining([outDir, "README.md"]))
      expect(existsSync(`${projectRoot}/packages/${dir}/README.md`)).toBe(true)
      expect(manifest.engines).toEqual({ node: ">=24" })
      expect(manifest.license).toBe("Apache-2.0")
      expect(manifest.repository?.directory).toBe(`packages/${dir}`)
    }
  )

  it.each(published)("$manifest.name: Effect is a peer, so that an embedding program has one copy", ({ manifest }) => {
    expect(Object.keys(manifest.peerDependencies ?? {}).sort()).toEqual([
      "@effect/platform",
      "@effect/platform-node",
      "effect"
    ])
    const effectDependencies = Object.keys(manifest.dependencies ?? {}).filter((name) =>
      name === "effect" || name.startsWith("@effect/")
    )
    expect(effectDependencies).toEqual([])
  })

  it("let bundlers drop what a program does not use: the native builder without the Kubernetes client", async () => {
    const bundled = await build({
      stdin: {
        contents:
          "import { NativeImageBuilder } from \"@checkpointer/strategies\"\nconsole.log(NativeImageBuilder.layer)",
        resolveDir: projectRoot,
        loader: "ts"
      },
      bundle: true,
      platform: "node",
      format: "esm",
      write: false,
      metafile: true,
      logLevel: "silent"
    })
    // What the output holds (the metafile's inputs list every file read, kept or not).
    const inputs = Object.values(bundled.metafile.outputs).flatMap((output) =>
      Object.entries(output.inputs).filter(([, kept]) => kept.bytesInOutput > 0).map(([input]) => input)
    )
    expect(inputs.some((input) => input.includes("packages/strategies/src/native/NativeImageBuilder.ts"))).toBe(true)
    expect(inputs.filter((input) => input.includes("@kubernetes/client-node"))).toEqual([])
  })

  it("README shows the embedding example verbatim", () => {
    const readme = readFileSync(`${projectRoot}/README.md`, "utf8")
    const example = readFileSync(`${projectRoot}/examples/embed/checkpoint.ts`, "utf8")
    expect(readme).toContain(`\`\`\`ts\n${example.trimEnd()}\n\`\`\``)
  })
})

describe("the bundled commands (scripts/build.mjs)", () => {
  const commands = ["packages/cli/dist/bin/kubectl-checkpoint", "packages/strategies/dist/bin/checkpointer-push"]
  /** Each command's launcher imports its bundle from beside bin/. */
  const bundleOf = (command: string) => command.replace(/\/bin\/([^/]+)$/, "/bundle/$1.mjs")
  /** Runs a command with `node`, which reports `version` as its own when given. */
  const runWith = (command: string, version?: string) =>
    spawnSync(process.execPath, [
      ...(version === undefined
        ? []
        : ["--import", `data:text/javascript,Object.defineProperty(process.versions,"node",{value:"${version}"})`]),
      `${projectRoot}/${command}`,
      "--help"
    ], { encoding: "utf8" })

  it("refuse a Node older than 24 with one plain line, exit status 2", () => {
    for (const command of commands) {
      const name = command.split("/").at(-1)!
      const old = runWith(command, "22.12.0")
      expect(old.status, old.stderr).toBe(2)
      expect(old.stderr).toBe(`${name} needs Node.js 24 or later; this is Node.js 22.12.0\n`)
      expect(old.stdout).toBe("")
      const current = runWith(command)
      expect(current.status, current.stderr).toBe(0)
      expect(current.stdout + current.stderr).toContain("Usage:")
    }
  })

  it("start from Node's compile cache, in the temporary directory, from their second run", () => {
    for (const command of commands) {
      const name = command.split("/").at(-1)!
      const tmp = mkdtempSync(`${tmpdir()}/compile-cache-`)
      try {
        const run = () =>
          spawnSync(process.execPath, [`${projectRoot}/${command}`, "--help"], {
            encoding: "utf8",
            env: { PATH: process.env.PATH, TMPDIR: tmp, NODE_DEBUG_NATIVE: "COMPILE_CACHE" }
          })
        const first = run()
        expect(first.status, first.stderr).toBe(0)
        expect(readdirSync(`${tmp}/node-compile-cache`).length).toBeGreaterThan(0)
        const second = run()
        expect(second.status, second.stderr).toBe(0)
        const bundle = pathToFileURL(resolve(projectRoot, bundleOf(command))).href
        expect(second.stderr).toContain(`V8 code cache for ESM ${bundle} was accepted`)
        expect(second.stdout + second.stderr, name).toContain("Usage:")
      } finally {
        rmSync(tmp, { recursive: true, force: true })
      }
    }
  })

  it("carry the license of each package they bundle, and of its dependencies (tar ships its own inside)", () => {
    const notices = (command: string) =>
      readFileSync(`${projectRoot}/${bundleOf(command).replace(/\.mjs$/, ".licenses.txt")}`, "utf8")
    /** Package name to license text, from sections that start with `== NAME VERSION (LICENSE) ==`. */
    const sections = (text: string) =>
      new Map(
        text.split(/^== /m).slice(1).map((section) => {
          const [title = "", ...body] = section.split("\n")
          return [title.split(" ")[0]!, body.join("\n").trim()]
        })
      )
    const push = sections(notices("packages/strategies/dist/bin/checkpointer-push"))
    for (const name of ["effect", "@effect/platform", "undici", "tar", "minipass", "jose"]) {
      expect(push.get(name), name).toMatch(/\S/)
    }
    expect(push.get("effect")).toContain("Permission is hereby granted")
    const plugin = sections(notices("packages/cli/dist/bin/kubectl-checkpoint"))
    expect(plugin.get("@kubernetes/client-node")).toContain("Apache License")
  })

  it("leave the Kubernetes client out of checkpointer-push, which pushes archives and never calls the API", () => {
    const bundled = (command: string) => readFileSync(`${projectRoot}/${bundleOf(command)}`, "utf8")
    const podsPath = "/api/v1/namespaces/{namespace}/pods"
    expect(bundled("packages/cli/dist/bin/kubectl-checkpoint")).toContain(podsPath)
    expect(bundled("packages/strategies/dist/bin/checkpointer-push")).not.toContain(podsPath)
  })
})
