import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { CheckpointerConfig, describeConfigError } from "@checkpointer/core"
import { ConfigProvider, Effect, Either, Option } from "effect"

const load = (env: Record<string, string>) =>
  CheckpointerConfig.pipe(
    Effect.provide(CheckpointerConfig.Default),
    Effect.provide(NodeContext.layer),
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))),
    Effect.either
  )

const required = { CHECKPOINT_IMAGE_PREFIX: "quay.io/x/y", CHECKPOINTER_NODE: "worker-1", CHECKPOINTER_NODE_IP: "10.0.0.2" }

const problems = (env: Record<string, string>) =>
  load(env).pipe(
    Effect.map(Either.match({ onLeft: describeConfigError, onRight: () => [] as ReadonlyArray<string> }))
  )

describe("CheckpointerConfig", () => {
  it.effect("reports every missing required variable at once", () =>
    Effect.gen(function*() {
      expect(yield* problems({})).toEqual([
        "CHECKPOINT_IMAGE_PREFIX is required but not set",
        "CHECKPOINTER_NODE is required but not set",
        "CHECKPOINTER_NODE_IP is required but not set"
      ])
    }))

  it.effect("has the seed's defaults", () =>
    Effect.gen(function*() {
      const config = Either.getOrThrow(yield* load(required))
      expect(config).toMatchObject({
        port: 3333,
        kubeletPort: 10250,
        baseImage: "pbaran555/checkpoint-base:1.0.0",
        kanikoSecretName: "kaniko-secret",
        kanikoTimeoutSeconds: 30,
        kanikoImage: "ghcr.io/osscontainertools/kaniko:v1.28.3",
        storageBasePath: "/checkpointer/storage",
        kanikoBuildContextDir: "/tmp/build-contexts",
        kubeletCertFile: "/etc/kubernetes/tls/tls.crt",
        kubeletKeyFile: "/etc/kubernetes/tls/tls.key",
        kubeletAllowInsecure: false,
        disableRouteForward: false,
        builder: "kaniko",
        production: false
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
      for (const name of ["CHECKPOINTER_NODE", "CHECKPOINTER_PORT", "KUBELET_PORT", "KANIKO_TIMEOUT", "KUBELET_ALLOW_INSECURE", "CHECKPOINT_BUILDER"]) {
        expect(found.some((line) => line.startsWith(`${name}:`)), `${name} in ${found.join(" | ")}`).toBe(true)
      }
    }))

  it.effect("selects the builder from CHECKPOINT_BUILDER and USE_KANIKO_FS, refusing contradictions", () =>
    Effect.gen(function*() {
      const builder = (env: Record<string, string>) =>
        load({ ...required, ...env }).pipe(Effect.map(Either.map((config) => config.builder)))
      expect(yield* builder({ USE_KANIKO_FS: "true" })).toEqual(Either.right("kaniko-fs"))
      expect(yield* builder({ CHECKPOINT_BUILDER: "native" })).toEqual(Either.right("native"))
      expect(yield* builder({ CHECKPOINT_BUILDER: "kaniko-fs", USE_KANIKO_FS: "true" })).toEqual(Either.right("kaniko-fs"))
      expect(yield* problems({ ...required, CHECKPOINT_BUILDER: "native", USE_KANIKO_FS: "true" })).toEqual([
        "CHECKPOINT_BUILDER: CHECKPOINT_BUILDER=native contradicts USE_KANIKO_FS=true (which selects kaniko-fs)"
      ])
    }))

  it.effect("KANIKO_IMAGE overrides the pinned Kaniko fork", () =>
    Effect.gen(function*() {
      const image = (env: Record<string, string>) =>
        load({ ...required, ...env }).pipe(Effect.map(Either.map((config) => config.kanikoImage)))
      expect(yield* image({ KANIKO_IMAGE: "gcr.io/kaniko-project/executor:v1.24.0" })).toEqual(
        Either.right("gcr.io/kaniko-project/executor:v1.24.0")
      )
      expect(yield* problems({ ...required, KANIKO_IMAGE: "" })).toHaveLength(1)
    }))

  it.effect("checks the checkpoint directory, client time bounds, the connection cap and the TLS files", () =>
    Effect.gen(function*() {
      const config = Either.getOrThrow(yield* load(required))
      expect(config).toMatchObject({
        kubeletCheckpointDir: "/var/lib/kubelet/checkpoints",
        clientLimits: { requestTimeoutSeconds: 30, headersTimeoutSeconds: 10, keepAliveTimeoutSeconds: 5, maxConnections: 256 },
        tlsServerName: "checkpoint-service.default.svc"
      })
      expect(config.tls._tag).toBe("None")
      const found = yield* problems({
        ...required,
        KUBELET_CHECKPOINT_DIR: "checkpoints",
        CHECKPOINTER_REQUEST_TIMEOUT: "0",
        CHECKPOINTER_KEEP_ALIVE_TIMEOUT: "soon",
        CHECKPOINTER_MAX_CONNECTIONS: "0",
        CHECKPOINTER_TLS_CERT_FILE: "/tls/tls.crt"
      })
      for (const name of ["KUBELET_CHECKPOINT_DIR", "CHECKPOINTER_REQUEST_TIMEOUT", "CHECKPOINTER_KEEP_ALIVE_TIMEOUT",
        "CHECKPOINTER_MAX_CONNECTIONS", "CHECKPOINTER_TLS_KEY_FILE"]) {
        expect(found.some((line) => line.startsWith(`${name}:`)), `${name} in ${found.join(" | ")}`).toBe(true)
      }
      expect(yield* problems({ ...required, CHECKPOINTER_HEADERS_TIMEOUT: "60" })).toEqual([
        "CHECKPOINTER_HEADERS_TIMEOUT: must not exceed CHECKPOINTER_REQUEST_TIMEOUT (30)"
      ])
      const tls = Either.getOrThrow(yield* load({
        ...required,
        CHECKPOINTER_TLS_CERT_FILE: "/tls/tls.crt",
        CHECKPOINTER_TLS_KEY_FILE: "/tls/tls.key",
        CHECKPOINTER_NAMESPACE: "checkpointer"
      }))
      expect(tls.tls).toEqual(Option.some({ certFile: "/tls/tls.crt", keyFile: "/tls/tls.key" }))
      expect(tls.tlsServerName).toBe("checkpoint-service.checkpointer.svc")
    }))

  it.effect("ENVIRONMENT=prod selects production logging", () =>
    Effect.gen(function*() {
      expect(Either.getOrThrow(yield* load({ ...required, ENVIRONMENT: "prod" })).production).toBe(true)
    }))
})
