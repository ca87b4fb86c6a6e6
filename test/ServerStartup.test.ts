import { FileSystem } from "@effect/platform"
import { NodeFileSystem } from "@effect/platform-node"
import { Effect } from "effect"
import { spawnSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { createServer } from "node:http"
import type { Server } from "node:http"
import type { AddressInfo } from "node:net"
import { describe, expect, it } from "vitest"
import { freePort, projectRoot, serverCommand, startCheckpointer } from "./harness/CheckpointerProcess.ts"
import { spansOf, startOtlpReceiver } from "./harness/OtlpReceiver.ts"

/** A scoped directory with a kubeconfig whose API server does not answer: the server must start without calling it. */
const startupDir = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpointer-startup-" })
  const file = `${dir}/kubeconfig`
  yield* fs.writeFileString(
    file,
    [
      "apiVersion: v1",
      "kind: Config",
      "clusters: [{ name: c, cluster: { server: \"https://127.0.0.1:9\" } }]",
      "users: [{ name: u, user: { token: t } }]",
      "contexts: [{ name: x, context: { cluster: c, user: u } }]",
      "current-context: x",
      ""
    ].join("\n")
  )
  return { kubeconfig: file, storage: `${dir}/storage` }
}).pipe(Effect.provide(NodeFileSystem.layer))

/** Runs the built server as `pnpm start` does, with only `env`, and returns its exit code and output. */
const startServer = (env: Record<string, string>) => {
  const result = spawnSync(serverCommand.argv[0]!, serverCommand.argv.slice(1), {
    cwd: projectRoot,
    env: { PATH: process.env.PATH ?? "", ...serverCommand.env, ...env },
    encoding: "utf8",
    timeout: 30_000
  })
  return { status: result.status, output: `${result.stdout}${result.stderr}` }
}

/** The required variables, with values that pass. */
const required = { CHECKPOINT_IMAGE_PREFIX: "r/x", CHECKPOINTER_NODE: "n", CHECKPOINTER_NODE_IP: "127.0.0.1" }

describe("server startup", () => {
  it("lists every missing required variable in one error and exits non-zero", () => {
    const { output, status } = startServer({})
    expect(status).toBe(1)
    expect(output).toContain("invalid configuration")
    for (const name of ["CHECKPOINT_IMAGE_PREFIX", "CHECKPOINTER_NODE", "CHECKPOINTER_NODE_IP"]) {
      expect(output).toContain(`${name} is required but not set`)
    }
  })

  it("names an invalid value's variable", () => {
    const { output, status } = startServer({ ...required, KANIKO_TIMEOUT: "soon" })
    expect(status).toBe(1)
    expect(output).toMatch(/KANIKO_TIMEOUT: Expected an integer value but received "soon"/)
  })

  it.each(["kaniko", "kaniko-fs"])("refuses upstream Kaniko for CHECKPOINT_BUILDER=%s", (builder) => {
    const { output, status } = startServer({
      CHECKPOINT_IMAGE_PREFIX: "r/x",
      CHECKPOINTER_NODE: "n",
      CHECKPOINTER_NODE_IP: "127.0.0.1",
      CHECKPOINT_BUILDER: builder,
      KANIKO_IMAGE: "gcr.io/kaniko-project/executor:v1.24.0"
    })
    expect(status).toBe(1)
    expect(output).toContain("invalid configuration")
    expect(output).toContain(
      "KANIKO_IMAGE: gcr.io/kaniko-project/executor:v1.24.0 cannot build a restorable checkpoint image: " +
        "its repository is not osscontainertools/kaniko"
    )
    expect(output).toContain("only it has --annotation and --image-format")
  })

  it("lists an old fork release and an invalid KANIKO_MAX_MEMORY in one error", () => {
    const { output, status } = startServer({
      CHECKPOINT_IMAGE_PREFIX: "r/x",
      CHECKPOINTER_NODE: "n",
      CHECKPOINTER_NODE_IP: "127.0.0.1",
      KANIKO_IMAGE: "ghcr.io/osscontainertools/kaniko:v1.25.3",
      KANIKO_MAX_MEMORY: "lots"
    })
    expect(status).toBe(1)
    expect(output).toContain("KANIKO_IMAGE: ghcr.io/osscontainertools/kaniko:v1.25.3 cannot build")
    expect(output).toContain("v1.25.3 is older than v1.28.1")
    expect(output).toContain("KANIKO_MAX_MEMORY: must be a memory quantity such as 8Gi or 512Mi, not \"lots\"")
  })

  it("names the TLS variable whose file cannot be read", () => {
    const { output, status } = startServer({
      CHECKPOINT_IMAGE_PREFIX: "r/x",
      CHECKPOINTER_NODE: "n",
      CHECKPOINTER_NODE_IP: "127.0.0.1",
      CHECKPOINTER_TLS_CERT_FILE: "/nonexistent/tls.crt",
      CHECKPOINTER_TLS_KEY_FILE: "/nonexistent/tls.key"
    })
    expect(status).toBe(1)
    expect(output).toContain("invalid configuration")
    expect(output).toMatch(/CHECKPOINTER_TLS_CERT_FILE: cannot read \/nonexistent\/tls\.crt/)
  })

  it("refuses CHECKPOINT_ENCRYPTION_KEYS with the default (kaniko) builder: Kaniko cannot encrypt", () => {
    const { output, status } = startServer({ ...required, CHECKPOINT_ENCRYPTION_KEYS: "/etc/checkpointer/ops.pem" })
    expect(status).toBe(1)
    expect(output).toContain("CHECKPOINT_ENCRYPTION_KEYS: the kaniko builder cannot encrypt images (Kaniko cannot)")
  })

  it("names CHECKPOINT_ENCRYPTION_KEYS and the file when a key cannot be read (native builder)", () => {
    const { output, status } = startServer({
      ...required,
      CHECKPOINT_BUILDER: "native",
      CHECKPOINT_ENCRYPTION_KEYS: "/nonexistent/ops.pem"
    })
    expect(status).toBe(1)
    expect(output).toContain("CHECKPOINT_ENCRYPTION_KEYS: cannot read /nonexistent/ops.pem (NotFound")
    const unknown = startServer({ ...required, CHECKPOINT_BUILDER: "native", CHECKPOINT_LAYER_COMPRESSION: "lz4" })
    expect(unknown.status).toBe(1)
    expect(unknown.output).toContain(
      "CHECKPOINT_LAYER_COMPRESSION: Expected one of (none, zstd, gzip) but received \"lz4\""
    )
  })

  it("checks CHECKPOINT_LAYER_COMPRESSION_LEVEL against the compression (native builder)", () => {
    const native = { ...required, CHECKPOINT_BUILDER: "native" }
    const tooHigh = startServer({
      ...native,
      CHECKPOINT_LAYER_COMPRESSION: "gzip",
      CHECKPOINT_LAYER_COMPRESSION_LEVEL: "12"
    })
    expect(tooHigh.status).toBe(1)
    expect(tooHigh.output).toContain("CHECKPOINT_LAYER_COMPRESSION_LEVEL: gzip levels go from 1 to 9, received 12")
    const without = startServer({ ...native, CHECKPOINT_LAYER_COMPRESSION_LEVEL: "3" })
    expect(without.status).toBe(1)
    expect(without.output).toContain(
      "CHECKPOINT_LAYER_COMPRESSION_LEVEL: is set but CHECKPOINT_LAYER_COMPRESSION is none; set " +
        "CHECKPOINT_LAYER_COMPRESSION to zstd or gzip, or unset it"
    )
  })

  it.each(["kaniko", "kaniko-fs"])(
    "starts with CHECKPOINT_BUILDER=%s (no API call before a checkpoint)",
    (builder) =>
      Effect.gen(function*() {
        const port = yield* freePort("127.0.0.1")
        const { kubeconfig, storage } = yield* startupDir
        const checkpointer = yield* startCheckpointer({
          env: {
            ...required,
            CHECKPOINTER_PORT: String(port),
            CHECKPOINT_BUILDER: builder,
            KUBECONFIG: kubeconfig,
            STORAGE_BASE_PATH: storage
          },
          address: "127.0.0.1",
          port
        })
        expect(checkpointer.exitCode()).toBeNull()
        expect(checkpointer.logs()).not.toContain("not available")
      }).pipe(Effect.scoped, Effect.runPromise)
  )

  it("is not taken for started when another process holds its port and answers /healthz (the harness checks)", () =>
    Effect.gen(function*() {
      const impostor = yield* Effect.acquireRelease(
        Effect.async<Server>((resume) => {
          const server = createServer((_, response) => response.end("ok"))
          server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
        }),
        (server) => Effect.promise(() => new Promise((resolve) => server.close(resolve)))
      )
      const port = (impostor.address() as AddressInfo).port
      const { kubeconfig, storage } = yield* startupDir
      const failure = yield* startCheckpointer({
        env: { ...required, CHECKPOINTER_PORT: String(port), KUBECONFIG: kubeconfig, STORAGE_BASE_PATH: storage },
        address: "127.0.0.1",
        port
      }).pipe(Effect.flip)
      expect(failure.message).toContain("Checkpointer did not become healthy (exit code 1)")
      expect(failure.message).toContain("EADDRINUSE")
    }).pipe(Effect.scoped, Effect.runPromise))

  it("does not load Node's own copy of undici (the bundle requires node:http instead of importing it)", () => {
    // An import of node:http builds its ESM facade, which reads the lazy WebSocket export and so loads that undici.
    const probe = "data:text/javascript,process.on('exit',()=>console.log('internal-undici:'+" +
      "process.moduleLoadList.some(m=>m.includes('deps/undici'))))"
    const { output } = startServer({ NODE_OPTIONS: `--import=${probe}` })
    expect(output).toContain("CHECKPOINT_IMAGE_PREFIX")
    expect(output).toContain("internal-undici:false")
  })

  it("exports traces from the bundle when OTEL_EXPORTER_OTLP_ENDPOINT is set: the exporter chunk loads on demand", () =>
    Effect.gen(function*() {
      const main = readFileSync(`${projectRoot}/dist/server/main.mjs`, "utf8")
      expect(main).toMatch(/import\("\.\/chunks\/OtlpExport-[\w-]+\.mjs"\)/)
      expect(main).not.toContain("resourceSpans")

      const receiver = yield* startOtlpReceiver
      const port = yield* freePort("127.0.0.1")
      const { kubeconfig, storage } = yield* startupDir
      const checkpointer = yield* startCheckpointer({
        env: {
          ...required,
          CHECKPOINTER_PORT: String(port),
          KUBECONFIG: kubeconfig,
          STORAGE_BASE_PATH: storage,
          OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
          OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
          OTEL_BSP_SCHEDULE_DELAY: "100"
        },
        address: "127.0.0.1",
        port
      })
      yield* Effect.promise(() => fetch(`http://127.0.0.1:${port}/metrics`).then((response) => response.text()))
      yield* Effect.sleep("300 millis").pipe(
        Effect.repeat({ until: () => spansOf(receiver.received).length > 0, times: 50 })
      )
      expect(checkpointer.logs()).toContain("traces are exported over OTLP")
      expect(spansOf(receiver.received).map((span) => span.name)).toContainEqual(expect.stringContaining("GET"))
    }).pipe(Effect.scoped, Effect.runPromise))
})
