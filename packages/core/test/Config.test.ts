import { checkpointerConfig, describeConfigError, ServerConfig } from "@checkpointer/core"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Option, Redacted } from "effect"

/** Every service's settings as startup reads them (all problems at once), and the server's as it sees them. */
const load = (env: Record<string, string>) =>
  Effect.gen(function*() {
    const config = yield* checkpointerConfig
    return { ...config, server: yield* Effect.provide(ServerConfig, ServerConfig.Default) }
  }).pipe(
    Effect.provide(NodeContext.layer),
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))),
    Effect.either
  )

const required = {
  CHECKPOINT_IMAGE_PREFIX: "quay.io/x/y",
  CHECKPOINTER_NODE: "worker-1",
  CHECKPOINTER_NODE_IP: "10.0.0.2"
}

const problems = (env: Record<string, string>) =>
  load(env).pipe(
    Effect.map(Either.match({ onLeft: describeConfigError, onRight: () => [] as ReadonlyArray<string> }))
  )

describe("Checkpointer's configuration", () => {
  it.effect("reports every missing required variable at once", () =>
    Effect.gen(function*() {
      expect(yield* problems({})).toEqual([
        "CHECKPOINT_IMAGE_PREFIX is required but not set",
        "CHECKPOINTER_NODE is required but not set",
        "CHECKPOINTER_NODE_IP is required but not set"
      ])
    }))

  it.effect("has the Go service's defaults", () =>
    Effect.gen(function*() {
      const config = Either.getOrThrow(yield* load(required))
      expect(config).toMatchObject({
        server: { port: 3333, builder: "kaniko", production: false },
        routing: { port: 3333, disableRouteForward: false },
        kubelet: {
          port: 10250,
          certFile: "/etc/kubernetes/tls/tls.crt",
          keyFile: "/etc/kubernetes/tls/tls.key",
          allowInsecure: false
        },
        kaniko: {
          baseImage: "pbaran555/checkpoint-base:1.0.0",
          secretName: "kaniko-secret",
          timeoutSeconds: 30,
          image: "ghcr.io/osscontainertools/kaniko:v1.28.3",
          buildContextDir: "/tmp/build-contexts"
        },
        storage: "/checkpointer/storage"
      })
    }))

  it.effect("names each invalid variable", () =>
    Effect.gen(function*() {
      const found = yield* problems({
        ...required,
        CHECKPOINTER_NODE: "Worker_1",
        CHECKPOINTER_PORT: "http",
        KUBELET_PORT: "70000",
        KANIKO_TIMEOUT: "-5",
        KUBELET_ALLOW_INSECURE: "maybe",
        CHECKPOINT_BUILDER: "docker"
      })
      for (
        const name of [
          "CHECKPOINTER_NODE",
          "CHECKPOINTER_PORT",
          "KUBELET_PORT",
          "KANIKO_TIMEOUT",
          "KUBELET_ALLOW_INSECURE",
          "CHECKPOINT_BUILDER"
        ]
      ) {
        expect(found.some((line) => line.startsWith(`${name}:`)), `${name} in ${found.join(" | ")}`).toBe(true)
      }
    }))

  it.effect("selects the builder from CHECKPOINT_BUILDER and USE_KANIKO_FS, refusing contradictions", () =>
    Effect.gen(function*() {
      const builder = (env: Record<string, string>) =>
        load({ ...required, ...env }).pipe(Effect.map(Either.map((config) => config.server.builder)))
      expect(yield* builder({ USE_KANIKO_FS: "true" })).toEqual(Either.right("kaniko-fs"))
      expect(yield* builder({ CHECKPOINT_BUILDER: "native" })).toEqual(Either.right("native"))
      expect(yield* builder({ CHECKPOINT_BUILDER: "kaniko-fs", USE_KANIKO_FS: "true" })).toEqual(
        Either.right("kaniko-fs")
      )
      expect(yield* problems({ ...required, CHECKPOINT_BUILDER: "native", USE_KANIKO_FS: "true" })).toEqual([
        "CHECKPOINT_BUILDER: CHECKPOINT_BUILDER=native contradicts USE_KANIKO_FS=true (which selects kaniko-fs)"
      ])
    }))

  it.effect("IMAGE_RETENTION keeps images by default; MAX_CHECKPOINTS_PER_CONTAINER is unset or at least 1", () =>
    Effect.gen(function*() {
      const retention = (env: Record<string, string>) =>
        load({ ...required, ...env }).pipe(Effect.map(Either.map((config) => config.imageRetention)))
      expect(yield* retention({})).toEqual(Either.right({ policy: "keep", maxPerContainer: Option.none() }))
      expect(yield* retention({ IMAGE_RETENTION: "with-result", MAX_CHECKPOINTS_PER_CONTAINER: "3" })).toEqual(
        Either.right({ policy: "with-result", maxPerContainer: Option.some(3) })
      )
      const found = yield* problems({ ...required, IMAGE_RETENTION: "delete", MAX_CHECKPOINTS_PER_CONTAINER: "0" })
      expect(found).toEqual([
        expect.stringMatching(/^IMAGE_RETENTION: Expected one of \(keep, with-result\)/),
        "MAX_CHECKPOINTS_PER_CONTAINER: must be a whole number of at least 1"
      ])
    }))

  it.effect("tracing is off without an OTLP endpoint; URL, protocol and headers follow the OTel variables", () =>
    Effect.gen(function*() {
      const tracing = (env: Record<string, string>) =>
        load({ ...required, ...env }).pipe(Effect.map(Either.getOrThrow), Effect.map((config) => config.tracing))
      expect((yield* tracing({})).url).toEqual(Option.none())
      const on = yield* tracing({
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318/",
        OTEL_EXPORTER_OTLP_HEADERS: "x-api-key=a%3Db, tenant = ops"
      })
      expect(on).toMatchObject({ url: Option.some("http://collector:4318/v1/traces"), protocol: "http/protobuf" })
      expect(Redacted.value(on.headers)).toEqual({ "x-api-key": "a=b", tenant: "ops" })
      expect(String(on.headers)).not.toContain("a=b")
      expect(
        (yield* tracing({
          OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318",
          OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "https://tempo.example/otlp/v1/traces"
        })).url
      ).toEqual(Option.some("https://tempo.example/otlp/v1/traces"))
      expect(
        yield* problems({
          ...required,
          OTEL_EXPORTER_OTLP_ENDPOINT: "collector:4318",
          OTEL_EXPORTER_OTLP_PROTOCOL: "grpc",
          OTEL_EXPORTER_OTLP_HEADERS: "token"
        })
      ).toEqual([
        "OTEL_EXPORTER_OTLP_ENDPOINT: must be an http:// or https:// URL",
        expect.stringMatching(/^OTEL_EXPORTER_OTLP_PROTOCOL: Expected one of \(http\/protobuf, http\/json\)/),
        "OTEL_EXPORTER_OTLP_HEADERS: must be key=value pairs separated by commas"
      ])
    }))

  it.effect("KANIKO_IMAGE overrides the pinned Kaniko fork with another release or a mirror of it", () =>
    Effect.gen(function*() {
      const image = (env: Record<string, string>) =>
        load({ ...required, ...env }).pipe(Effect.map(Either.map((config) => config.kaniko.image)))
      for (
        const accepted of [
          "ghcr.io/osscontainertools/kaniko:v1.28.1",
          "mirror.example.com:5000/ghcr.io/osscontainertools/kaniko:v1.28.3-debug",
          "osscontainertools/kaniko:v1.29.0",
          `ghcr.io/osscontainertools/kaniko:v2.0.0@sha256:${"0".repeat(64)}`
        ]
      ) {
        expect(yield* image({ KANIKO_IMAGE: accepted })).toEqual(Either.right(accepted))
      }
      expect(yield* problems({ ...required, KANIKO_IMAGE: "" })).toEqual(["KANIKO_IMAGE: must name an image"])
    }))

  it.effect("refuses images other than the fork >= v1.28.1, naming KANIKO_IMAGE and why", () =>
    Effect.gen(function*() {
      const refusal = (image: string) =>
        problems({ ...required, KANIKO_IMAGE: image }).pipe(Effect.map((lines) => lines.join("\n")))
      const upstream = yield* refusal("gcr.io/kaniko-project/executor:v1.24.0")
      expect(upstream).toMatch(/^KANIKO_IMAGE: gcr\.io\/kaniko-project\/executor:v1\.24\.0 cannot build a restorable/)
      expect(upstream).toContain("checkpoint image: its repository is not osscontainertools/kaniko")
      expect(upstream).toContain("only it has --annotation and --image-format")
      expect(upstream).toContain("KANIKO_IMAGE_UNCHECKED=true")
      expect(yield* refusal("ghcr.io/osscontainertools/kaniko:v1.28.0")).toContain("v1.28.0 is older than v1.28.1")
      expect(yield* refusal("ghcr.io/osscontainertools/kaniko:v1.25.3")).toContain("is older than v1.28.1")
      expect(yield* refusal("ghcr.io/osscontainertools/kaniko:latest")).toContain(
        "its tag \"latest\" is not a version vMAJOR.MINOR.PATCH"
      )
      expect(yield* refusal("ghcr.io/osscontainertools/kaniko")).toContain("it has no version tag")
      expect(yield* refusal(`ghcr.io/osscontainertools/kaniko@sha256:${"0".repeat(64)}`)).toContain(
        "a digest alone does not tell its version"
      )
      expect(yield* refusal("ghcr.io/osscontainertools/kaniko-fork:v1.28.3")).toContain("its repository is not")
    }))

  it.effect("checks KANIKO_IMAGE only for the Kaniko builders; KANIKO_IMAGE_UNCHECKED=true accepts any image", () =>
    Effect.gen(function*() {
      const image = (env: Record<string, string>) =>
        load({ ...required, ...env }).pipe(Effect.map(Either.map((config) => config.kaniko.image)))
      const renamed = "registry.corp/tools/kaniko-executor:2026-01"
      expect(yield* image({ KANIKO_IMAGE: renamed, CHECKPOINT_BUILDER: "native" })).toEqual(Either.right(renamed))
      expect(yield* image({ KANIKO_IMAGE: renamed, KANIKO_IMAGE_UNCHECKED: "true" })).toEqual(Either.right(renamed))
      expect(yield* problems({ ...required, KANIKO_IMAGE: renamed, USE_KANIKO_FS: "true" })).toHaveLength(1)
    }))

  it.effect("KANIKO_MAX_MEMORY and KANIKO_CPU_REQUEST take Kubernetes quantities", () =>
    Effect.gen(function*() {
      const config = (env: Record<string, string>) => load({ ...required, ...env }).pipe(Effect.map(Either.getOrThrow))
      expect((yield* config({})).kaniko).toMatchObject({ maxMemoryBytes: 8 * 1024 ** 3, cpuRequest: "500m" })
      expect((yield* config({ KANIKO_MAX_MEMORY: "512Mi", KANIKO_CPU_REQUEST: "2" })).kaniko).toMatchObject({
        maxMemoryBytes: 512 * 1024 ** 2,
        cpuRequest: "2"
      })
      expect((yield* config({ KANIKO_MAX_MEMORY: "4G" })).kaniko.maxMemoryBytes).toBe(4e9)
      expect(yield* problems({ ...required, KANIKO_MAX_MEMORY: "lots", KANIKO_CPU_REQUEST: "fast" })).toEqual([
        "KANIKO_MAX_MEMORY: must be a memory quantity such as 8Gi or 512Mi, not \"lots\"",
        "KANIKO_CPU_REQUEST: must be a CPU quantity such as 500m or 1"
      ])
    }))

  it.effect("checks the checkpoint directory, client time bounds, the connection cap and the TLS files", () =>
    Effect.gen(function*() {
      const config = Either.getOrThrow(yield* load(required))
      expect(config).toMatchObject({
        checkpointDir: "/var/lib/kubelet/checkpoints",
        server: {
          clientLimits: {
            requestTimeoutSeconds: 30,
            headersTimeoutSeconds: 10,
            keepAliveTimeoutSeconds: 5,
            maxConnections: 256
          },
          tlsServerName: "checkpoint-service.default.svc"
        }
      })
      expect(config.server.tls._tag).toBe("None")
      const found = yield* problems({
        ...required,
        KUBELET_CHECKPOINT_DIR: "checkpoints",
        CHECKPOINTER_REQUEST_TIMEOUT: "0",
        CHECKPOINTER_KEEP_ALIVE_TIMEOUT: "soon",
        CHECKPOINTER_MAX_CONNECTIONS: "0",
        CHECKPOINTER_TLS_CERT_FILE: "/tls/tls.crt"
      })
      for (
        const name of [
          "KUBELET_CHECKPOINT_DIR",
          "CHECKPOINTER_REQUEST_TIMEOUT",
          "CHECKPOINTER_KEEP_ALIVE_TIMEOUT",
          "CHECKPOINTER_MAX_CONNECTIONS",
          "CHECKPOINTER_TLS_KEY_FILE"
        ]
      ) {
        expect(found.some((line) => line.startsWith(`${name}:`)), `${name} in ${found.join(" | ")}`).toBe(true)
      }
      expect(yield* problems({ ...required, CHECKPOINTER_HEADERS_TIMEOUT: "60" })).toEqual([
        "CHECKPOINTER_HEADERS_TIMEOUT: must not exceed CHECKPOINTER_REQUEST_TIMEOUT (30)"
      ])
      const tls = Either.getOrThrow(
        yield* load({
          ...required,
          CHECKPOINTER_TLS_CERT_FILE: "/tls/tls.crt",
          CHECKPOINTER_TLS_KEY_FILE: "/tls/tls.key",
          CHECKPOINTER_NAMESPACE: "checkpointer"
        })
      )
      expect(tls.server.tls).toEqual(Option.some({ certFile: "/tls/tls.crt", keyFile: "/tls/tls.key" }))
      expect(tls.server.tlsServerName).toBe("checkpoint-service.checkpointer.svc")
    }))

  it.effect("ENVIRONMENT=prod selects production logging", () =>
    Effect.gen(function*() {
      expect(Either.getOrThrow(yield* load({ ...required, ENVIRONMENT: "prod" })).server.production).toBe(true)
    }))
})
