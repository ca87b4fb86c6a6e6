import { Effect } from "effect"
import { execFileSync, spawn, spawnSync } from "node:child_process"
import { chmodSync, chownSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { freePort, projectRoot } from "./harness/CheckpointerProcess.ts"

/**
 * The Dockerfile cannot be built here (no container engine can pull node:24-slim). What can be checked is checked:
 * its build steps are the project's own scripts (the bundle they produce is what test/globalSetup.ts builds), the
 * runtime stage is assembled from it as its COPY lines say, and that bundle alone, run as its ENTRYPOINT, ENV and USER
 * say, serves /healthz.
 */

interface Instruction {
  readonly keyword: string
  readonly args: string
}

const dockerfile = readFileSync(`${projectRoot}/Dockerfile`, "utf8")

const instructions: ReadonlyArray<Instruction> = dockerfile
  .replace(/\\\n/g, " ")
  .split("\n")
  .map((line) => line.trim())
  .filter((line) => line !== "" && !line.startsWith("#"))
  .map((line) => {
    const space = line.indexOf(" ")
    return { keyword: line.slice(0, space).toUpperCase(), args: line.slice(space + 1).trim() }
  })

const globalArgs = new Map(
  instructions.slice(0, instructions.findIndex((i) => i.keyword === "FROM"))
    .filter((i) => i.keyword === "ARG")
    .map((i) => i.args.split("=") as [string, string])
)
const substitute = (text: string) => text.replace(/\$\{(\w+)\}/g, (_, name: string) => globalArgs.get(name) ?? "")

const stages = instructions.reduce<Array<{ from: string; name?: string; steps: Array<Instruction> }>>((all, i) => {
  if (i.keyword === "FROM") {
    const [image, as, name] = substitute(i.args).split(/\s+/)
    all.push({ from: image!, ...(as?.toUpperCase() === "AS" ? { name: name! } : {}), steps: [] })
  } else if (all.length > 0) {
    all.at(-1)!.steps.push(i)
  }
  return all
}, [])

const buildStage = stages.find((stage) => stage.name === "build")!
const runtime = stages.at(-1)!
const stepsOf = (stage: typeof runtime, keyword: string) => stage.steps.filter((step) => step.keyword === keyword)
/** The runtime stage's ENTRYPOINT (exec form): `node`, its flags, the bundle. */
const entrypoint: ReadonlyArray<string> = JSON.parse(stepsOf(runtime, "ENTRYPOINT")[0]!.args)
const entrypointFlags = entrypoint.filter((word) => word.startsWith("--"))

/** .dockerignore semantics: the last matching pattern decides; a pattern also matches everything under a match. */
const ignorePatterns = readFileSync(`${projectRoot}/.dockerignore`, "utf8")
  .split("\n")
  .map((line) => line.trim())
  .filter((line) => line !== "" && !line.startsWith("#"))
  .map((line) => {
    const negated = line.startsWith("!")
    const pattern = (negated ? line.slice(1) : line).replace(/\/$/, "")
    const source = pattern.split("**").map((part) =>
      part.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*").replace(/\?/g, "[^/]")
    ).join(".*")
    return { negated, regex: new RegExp(`^${source}(/.*)?$`) }
  })
const inContext = (path: string) =>
  ignorePatterns.reduce((included, { negated, regex }) => (regex.test(path) ? negated : included), true)

const trackedFiles = execFileSync("git", ["ls-files"], { cwd: projectRoot, encoding: "utf8" }).trim().split("\n")

const scripts: Record<string, string> = JSON.parse(readFileSync(`${projectRoot}/package.json`, "utf8")).scripts

describe("Dockerfile", () => {
  it("is multi-stage on Node 24 slim, labelled, and runs as a non-root user", () => {
    expect(stages.map((stage) => stage.from)).toEqual(["node:24-slim", "node:24-slim"])
    const labels = stepsOf(runtime, "LABEL").map((step) => step.args).join(" ")
    for (const key of ["title", "description", "version", "revision", "base.name"]) {
      expect(labels).toContain(`org.opencontainers.image.${key}=`)
    }
    expect(stepsOf(runtime, "USER").map((step) => step.args)).toEqual(["node"])
    expect(stepsOf(runtime, "EXPOSE").map((step) => step.args)).toEqual(["3333"])
  })

  it("builds with the project's own scripts, pnpm pinned as scripts/setup.sh pins it", () => {
    const setupPnpm = /pnpm@[0-9.]+/.exec(readFileSync(`${projectRoot}/scripts/setup.sh`, "utf8"))![0]
    expect(stepsOf(buildStage, "RUN").map((step) => step.args)).toEqual([
      `npm install --global --no-audit --no-fund ${setupPnpm}`,
      "pnpm install --frozen-lockfile",
      "pnpm run build"
    ])
    expect(scripts.build).toBe("node scripts/build.mjs")
  })

  it("sends the build exactly what it copies: sources and manifests, no node_modules, dist or tests", () => {
    const copied = stepsOf(buildStage, "COPY").flatMap((step) => step.args.split(/\s+/).slice(0, -1))
    for (const source of copied) {
      const files = trackedFiles.filter((file) => file === source || file.startsWith(`${source}/`))
      expect(files.length, source).toBeGreaterThan(0)
      for (const file of files.filter((file) => !/\/(test|examples)\//.test(file))) {
        expect(inContext(file), file).toBe(true)
      }
    }
    for (const file of trackedFiles.filter((file) => /^packages\/\w+\/src\//.test(file))) {
      expect(inContext(file), file).toBe(true)
    }
    for (
      const path of [
        "node_modules/effect/package.json",
        "dist/server/main.mjs",
        ".git/HEAD",
        "test/harness/E2E.ts",
        "packages/core/node_modules/x",
        "packages/cli/dist/bin/kubectl-checkpoint",
        "bench/main.ts",
        "README.md"
      ]
    ) {
      expect(inContext(path), path).toBe(false)
    }
  })

  it("keeps `pnpm start`'s memory settings", () => {
    const start = scripts.start!
    for (const flag of entrypointFlags) expect(start).toContain(flag)
    const env = stepsOf(runtime, "ENV").map((step) => step.args).join(" ")
    expect(start).toContain("MALLOC_ARENA_MAX=1")
    expect(env).toContain("MALLOC_ARENA_MAX=1")
    // The compile cache the build writes into dist/server/, which the runtime stage copies to /app/.
    for (const setting of ["NODE_COMPILE_CACHE_PORTABLE=1", "NODE_COMPILE_CACHE=dist/server/compile-cache"]) {
      expect(start).toContain(setting)
    }
    for (const setting of ["NODE_COMPILE_CACHE_PORTABLE=1", "NODE_COMPILE_CACHE=/app/compile-cache"]) {
      expect(env).toContain(setting)
    }
  })

  describe("the runtime stage, assembled from the bundle the build steps produce", () => {
    const root = mkdtempSync(`${tmpdir()}/checkpointer-image-`)
    afterAll(() => rmSync(root, { recursive: true, force: true }))

    // COPY --from=build /src/... /app/: the build stage's WORKDIR /src is the project root here.
    const workdir = stepsOf(runtime, "WORKDIR").map((step) => step.args).at(-1)!
    const appDir = `${root}${workdir}`
    /** The runtime stage's ENV, its paths under /app/ mapped into `root`. */
    const env: Record<string, string> = Object.fromEntries(
      stepsOf(runtime, "ENV")
        .flatMap((step) => step.args.split(/\s+/))
        .map((pair) => pair.split("=") as [string, string])
        .map(([name, value]) => [name, value.startsWith("/app/") ? `${root}${value}` : value])
    )

    beforeAll(() => {
      mkdirSync(appDir, { recursive: true })
      chmodSync(root, 0o755)
      for (const step of stepsOf(runtime, "COPY")) {
        const [from, ...rest] = step.args.split(/\s+/)
        expect(from).toBe("--from=build")
        const destination = rest.at(-1)!
        for (const source of rest.slice(0, -1)) {
          // As COPY does: a directory's contents go into the destination, a file under its own name.
          cpSync(
            `${projectRoot}/${source.replace(/^\/src\//, "")}`,
            source.endsWith("/") ? `${root}${destination}` : `${root}${destination}${source.split("/").at(-1)}`,
            { recursive: true }
          )
        }
      }
    })

    it("starts from the compiled code the build wrote beside the bundle, for the user who built it", () => {
      // Without settings the server only loads and exits; Node says whether it took the bundle's code from the cache.
      // V8 accepts a cache only from a run with the same flags: the ENTRYPOINT's.
      // Node keys the cache by user: in the image that is root, the user k8s-manifests run the server as.
      const run = spawnSync(process.execPath, [...entrypointFlags, `${appDir}/main.mjs`], {
        cwd: appDir,
        env: { ...env, NODE_DEBUG_NATIVE: "COMPILE_CACHE" },
        encoding: "utf8"
      })
      expect(run.stderr + run.stdout).toMatch(/V8 code cache for ESM file:\S+\/app\/main\.mjs was accepted/)
      expect(run.stderr + run.stdout).toMatch(
        /V8 code cache for ESM file:\S+\/app\/chunks\/chunk-\w+\.mjs was accepted/
      )
    })

    it("serves /healthz, /metrics and /readyz as the node user, from the bundle alone", async () => {
      const [command, ...args] = entrypoint
      expect(command).toBe("node")
      const storage = `${root}/storage`
      mkdirSync(storage)
      // As the node user of the official Node images (uid 1000) when the test may switch users.
      const asNode = process.getuid?.() === 0
      if (asNode) chownSync(storage, 1000, 1000)
      const port = await Effect.runPromise(freePort("127.0.0.1"))
      const child = spawn(process.execPath, args.map((arg) => (arg.startsWith("/app/") ? `${root}${arg}` : arg)), {
        cwd: appDir,
        ...(asNode ? { uid: 1000, gid: 1000 } : {}),
        env: {
          ...env,
          HOME: appDir,
          CHECKPOINT_IMAGE_PREFIX: "registry.example.com/checkpoints/app",
          CHECKPOINTER_NODE: "worker-1",
          CHECKPOINTER_NODE_IP: "127.0.0.1",
          CHECKPOINTER_PORT: String(port),
          CHECKPOINTER_LISTEN_ADDRESS: "127.0.0.1",
          CHECKPOINT_BUILDER: "native",
          STORAGE_BASE_PATH: storage
        },
        stdio: ["ignore", "pipe", "pipe"]
      })
      let output = ""
      child.stdout.on("data", (chunk) => (output += chunk))
      child.stderr.on("data", (chunk) => (output += chunk))
      try {
        const url = `http://127.0.0.1:${port}`
        let healthz: Response | undefined
        for (let attempt = 0; attempt < 100 && healthz === undefined && child.exitCode === null; attempt++) {
          healthz = await fetch(`${url}/healthz`).catch(() => undefined)
          if (healthz === undefined) await new Promise((resolve) => setTimeout(resolve, 100))
        }
        expect(healthz?.status, output).toBe(200)
        expect(await healthz!.text()).toBe("ok")
        const metrics = await fetch(`${url}/metrics`)
        expect(await metrics.text()).toContain("# TYPE checkpoints_in_flight gauge")
        // No API server here: not ready, and it says why.
        const readyz = await fetch(`${url}/readyz`)
        expect(readyz.status).toBe(503)
        expect(await readyz.text()).toMatch(/^API server not reachable: /)
        const status = readFileSync(`/proc/${child.pid}/status`, "utf8")
        if (asNode) expect(status).toMatch(/^Uid:\s+1000\s/m)
      } finally {
        child.kill("SIGTERM")
        await new Promise((resolve) => child.exitCode === null ? child.once("exit", resolve) : resolve(undefined))
      }
    })
  })
})
