import { FileSystem } from "@effect/platform"
import { Config, ConfigError, Data, Effect, Either, Option, Redacted, Schema } from "effect"
import { NodeName } from "../domain/Domain.ts"

export type BuilderName = "native" | "kaniko" | "kaniko-fs"

/** The maintained community fork of Kaniko (upstream was archived in June 2025), pinned. */
export const defaultKanikoImage = "ghcr.io/osscontainertools/kaniko:v1.28.3"

const forkRepository = "osscontainertools/kaniko"
/** The first fork release with both `--annotation` (v1.25.3) and `--image-format` (v1.28.1). */
const minimumForkVersion = [1, 28, 1] as const

/**
 * Why an executor image cannot build a restorable image, if it cannot: its repository path must end in
 * osscontainertools/kaniko (any registry or mirror) and its tag be vMAJOR.MINOR.PATCH, optionally with a variant
 * suffix such as -debug, at least v1.28.1. A digest alone does not tell the version: the tag must be there too.
 */
export const kanikoImageProblem = (image: string): Option.Option<string> => {
  const [name = "", digest] = image.split("@")
  const colon = name.lastIndexOf(":")
  const tagged = colon > name.lastIndexOf("/")
  const repository = tagged ? name.slice(0, colon) : name
  const tag = tagged ? name.slice(colon + 1) : undefined
  if (repository !== forkRepository && !repository.endsWith(`/${forkRepository}`)) {
    return Option.some(`its repository is not ${forkRepository} (upstream Kaniko has neither flag)`)
  }
  if (tag === undefined) {
    return Option.some(
      digest === undefined
        ? "it has no version tag"
        : "a digest alone does not tell its version: keep the tag (name:vX.Y.Z@sha256:...)"
    )
  }
  const version = /^v(\d+)\.(\d+)\.(\d+)(?:-[0-9A-Za-z.-]+)?$/.exec(tag)
  if (version === null) return Option.some(`its tag "${tag}" is not a version vMAJOR.MINOR.PATCH`)
  const [major, minor, patch] = version.slice(1, 4).map(Number) as [number, number, number]
  const [minMajor, minMinor, minPatch] = minimumForkVersion
  const recent = major !== minMajor
    ? major > minMajor
    : minor !== minMinor
    ? minor > minMinor
    : patch >= minPatch
  return recent ? Option.none() : Option.some(`${tag} is older than v${minimumForkVersion.join(".")}`)
}

const serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

const required = (name: string) => Config.nonEmptyString(name).pipe(Config.map((value) => value.trim()))

const nonNegativeInteger = (name: string, fallback: number) =>
  Config.integer(name).pipe(
    Config.validate({ message: "must be a non-negative whole number", validation: (n) => n >= 0 }),
    Config.withDefault(fallback)
  )

const port = (name: string, fallback: number) =>
  Config.integer(name).pipe(
    Config.validate({ message: "must be a port number between 1 and 65535", validation: (n) => n >= 1 && n <= 65535 }),
    Config.withDefault(fallback)
  )

const positiveSeconds = (name: string, fallback: number) =>
  Config.integer(name).pipe(
    Config.validate({ message: "must be a whole number of seconds, at least 1", validation: (n) => n >= 1 }),
    Config.withDefault(fallback)
  )

const absolutePath = (name: string, fallback: string) =>
  Config.string(name).pipe(
    Config.validate({ message: "must be an absolute path", validation: (path) => path.startsWith("/") }),
    Config.withDefault(fallback)
  )

/** The Go service's boolean flags are "true" or unset; anything else that is not a boolean is an error. */
export const flag = (name: string) => Config.boolean(name).pipe(Config.withDefault(false))

const binaryUnits: Readonly<Record<string, number>> = { "": 1, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40 }
const decimalUnits: Readonly<Record<string, number>> = { k: 1e3, K: 1e3, M: 1e6, G: 1e9, T: 1e12 }

/** A Kubernetes memory quantity (`8Gi`, `512Mi`, `4G`, `1073741824`) in bytes. */
export const parseMemoryQuantity = (text: string): Option.Option<number> => {
  const match = /^(\d+)(Ki|Mi|Gi|Ti|k|K|M|G|T)?$/.exec(text.trim())
  if (match === null) return Option.none()
  const unit = match[2] ?? ""
  return Option.some(Number(match[1]) * (binaryUnits[unit] ?? decimalUnits[unit] ?? 1))
}

const memoryQuantity = (name: string, fallback: string) =>
  Config.string(name).pipe(
    Config.withDefault(fallback),
    Config.mapOrFail((text) =>
      Option.match(Option.filter(parseMemoryQuantity(text), (bytes) => bytes > 0), {
        onNone: () =>
          Either.left(ConfigError.InvalidData([name], `must be a memory quantity such as 8Gi or 512Mi, not "${text}"`)),
        onSome: Either.right
      })
    )
  )

const cpuQuantity = (name: string, fallback: string) =>
  Config.string(name).pipe(
    Config.validate({
      message: "must be a CPU quantity such as 500m or 1",
      validation: (text) => /^(\d+m|\d+(\.\d+)?)$/.test(text.trim()) && !/^0+(m|\.0+)?$/.test(text.trim())
    }),
    Config.map((text) => text.trim()),
    Config.withDefault(fallback)
  )

/** CHECKPOINT_BUILDER, else `kaniko-fs` when USE_KANIKO_FS=true, else `kaniko`; a contradiction is an error. */
export const builderConfig = Config.all({
  explicit: Config.literal("native", "kaniko", "kaniko-fs")("CHECKPOINT_BUILDER").pipe(Config.option),
  useKanikoFs: flag("USE_KANIKO_FS")
}).pipe(
  Config.mapOrFail(({ explicit, useKanikoFs }): Either.Either<BuilderName, ConfigError.ConfigError> =>
    Option.match(explicit, {
      onNone: () => Either.right(useKanikoFs ? "kaniko-fs" : "kaniko"),
      onSome: (builder) =>
        useKanikoFs && builder !== "kaniko-fs"
          ? Either.left(
            ConfigError.InvalidData(
              ["CHECKPOINT_BUILDER"],
              `CHECKPOINT_BUILDER=${builder} contradicts USE_KANIKO_FS=true (which selects kaniko-fs)`
            )
          )
          : Either.right(builder)
    })
  )
)

/** KANIKO_IMAGE, checked against the fork's name and version when a Kaniko builder will run it. */
const kanikoImage = Config.all({
  image: Config.string("KANIKO_IMAGE").pipe(
    Config.validate({ message: "must name an image", validation: (image) => image.trim() !== "" }),
    Config.map((image) => image.trim()),
    Config.withDefault(defaultKanikoImage)
  ),
  unchecked: flag("KANIKO_IMAGE_UNCHECKED"),
  builder: builderConfig
}).pipe(
  Config.mapOrFail(({ builder, image, unchecked }) =>
    Option.match(unchecked || builder === "native" ? Option.none() : kanikoImageProblem(image), {
      onNone: () => Either.right(image),
      onSome: (reason) =>
        Either.left(ConfigError.InvalidData(
          ["KANIKO_IMAGE"],
          `${image} cannot build a restorable checkpoint image: ${reason}. The Kaniko builders need the ` +
            `${forkRepository} fork at v${minimumForkVersion.join(".")} or later (only it has --annotation and ` +
            `--image-format), e.g. ${defaultKanikoImage}; a mirror must keep a path ending in ${forkRepository} and ` +
            "the vX.Y.Z tag. KANIKO_IMAGE_UNCHECKED=true accepts a renamed copy of such a release."
        ))
    })
  )
)

/** Time bounds on every client of the API (seconds) and the cap on connections open at once. */
const clientLimits = Config.all({
  requestTimeoutSeconds: positiveSeconds("CHECKPOINTER_REQUEST_TIMEOUT", 30),
  headersTimeoutSeconds: positiveSeconds("CHECKPOINTER_HEADERS_TIMEOUT", 10),
  keepAliveTimeoutSeconds: positiveSeconds("CHECKPOINTER_KEEP_ALIVE_TIMEOUT", 5),
  maxConnections: Config.integer("CHECKPOINTER_MAX_CONNECTIONS").pipe(
    Config.validate({ message: "must be a whole number of at least 1", validation: (n) => n >= 1 }),
    Config.withDefault(256)
  )
}).pipe(
  Config.mapOrFail((limits) =>
    limits.headersTimeoutSeconds > limits.requestTimeoutSeconds
      ? Either.left(ConfigError.InvalidData(
        ["CHECKPOINTER_HEADERS_TIMEOUT"],
        `must not exceed CHECKPOINTER_REQUEST_TIMEOUT (${limits.requestTimeoutSeconds})`
      ))
      : Either.right(limits)
  )
)

export interface ApiTls {
  readonly certFile: string
  readonly keyFile: string
}

/** CHECKPOINTER_TLS_CERT_FILE and CHECKPOINTER_TLS_KEY_FILE: both (HTTPS) or neither (plain HTTP). */
const apiTls = Config.all({
  cert: Config.string("CHECKPOINTER_TLS_CERT_FILE").pipe(Config.option),
  key: Config.string("CHECKPOINTER_TLS_KEY_FILE").pipe(Config.option)
}).pipe(
  Config.mapOrFail(({ cert, key }): Either.Either<Option.Option<ApiTls>, ConfigError.ConfigError> =>
    Option.isSome(cert) && Option.isSome(key)
      ? Either.right(Option.some({ certFile: cert.value, keyFile: key.value }))
      : Option.isNone(cert) && Option.isNone(key)
      ? Either.right(Option.none())
      : Either.left(ConfigError.InvalidData(
        [Option.isNone(cert) ? "CHECKPOINTER_TLS_CERT_FILE" : "CHECKPOINTER_TLS_KEY_FILE"],
        "CHECKPOINTER_TLS_CERT_FILE and CHECKPOINTER_TLS_KEY_FILE must be set together"
      ))
  )
)

/** CHECKPOINTER_NODE: the node this Checkpointer serves, read by every service that names it. */
export const nodeName = Schema.Config("CHECKPOINTER_NODE", NodeName)

/** How the kubelet of this node is reached (KubeletService). */
export const kubeletConfig = Config.all({
  node: nodeName,
  nodeIp: required("CHECKPOINTER_NODE_IP"),
  port: port("KUBELET_PORT", 10250),
  certFile: Config.string("KUBELET_CERT_FILE").pipe(Config.withDefault("/etc/kubernetes/tls/tls.crt")),
  keyFile: Config.string("KUBELET_KEY_FILE").pipe(Config.withDefault("/etc/kubernetes/tls/tls.key")),
  allowInsecure: flag("KUBELET_ALLOW_INSECURE"),
  caFile: Config.string("KUBELET_CA_FILE").pipe(Config.option),
  timeoutSeconds: nonNegativeInteger("KUBELET_TIMEOUT", 120),
  auth: Config.literal("certificate", "token")("KUBELET_AUTH").pipe(Config.withDefault("certificate" as const)),
  tokenFile: Config.string("KUBELET_TOKEN_FILE").pipe(
    Config.withDefault("/var/run/secrets/kubernetes.io/serviceaccount/token")
  )
})

/** KUBELET_CHECKPOINT_DIR (CheckpointDirectory). */
export const checkpointDirConfig = absolutePath("KUBELET_CHECKPOINT_DIR", "/var/lib/kubelet/checkpoints")

/** STORAGE_BASE_PATH (the file ResultStore). */
export const storageConfig = Config.string("STORAGE_BASE_PATH").pipe(Config.withDefault("/checkpointer/storage"))

/** How checkpoints are run and their results kept (Checkpointer). */
export const checkpointsConfig = Config.all({
  imagePrefix: required("CHECKPOINT_IMAGE_PREFIX"),
  node: nodeName,
  maxConcurrent: Config.integer("MAX_CONCURRENT_CHECKPOINTS").pipe(
    Config.validate({ message: "must be a whole number of at least 1", validation: (n) => n >= 1 }),
    Config.withDefault(2)
  ),
  resultTtlSeconds: nonNegativeInteger("RESULT_TTL", 7 * 24 * 3600)
})

export type ImageRetentionPolicy = "keep" | "with-result"

/**
 * What happens to pushed images (ImageRetention): IMAGE_RETENTION=with-result deletes an image when its result expires
 * under RESULT_TTL; MAX_CHECKPOINTS_PER_CONTAINER keeps only that many of a container's newest images.
 */
export const imageRetentionConfig = Config.all({
  policy: Config.literal("keep", "with-result")("IMAGE_RETENTION").pipe(
    Config.withDefault<ImageRetentionPolicy>("keep")
  ),
  maxPerContainer: Config.integer("MAX_CHECKPOINTS_PER_CONTAINER").pipe(
    Config.validate({ message: "must be a whole number of at least 1", validation: (n) => n >= 1 }),
    Config.option
  )
})

export type ImageRetentionSettings = Config.Config.Success<typeof imageRetentionConfig>

/** Whether the settings ever delete an image (otherwise no registry client is needed). */
export const deletesImages = (settings: ImageRetentionSettings): boolean =>
  settings.policy === "with-result" || Option.isSome(settings.maxPerContainer)

/** `key=value` pairs separated by commas (OTEL_EXPORTER_OTLP_HEADERS), values percent-decoded as the OTel spec says. */
const parseOtlpHeaders = (text: string): Either.Either<Record<string, string>, string> => {
  const headers: Record<string, string> = {}
  for (const pair of text.split(",").map((part) => part.trim()).filter((part) => part !== "")) {
    const separator = pair.indexOf("=")
    if (separator <= 0) return Either.left("must be key=value pairs separated by commas")
    const value = pair.slice(separator + 1).trim()
    headers[pair.slice(0, separator).trim().toLowerCase()] = /%(?![0-9a-fA-F]{2})/.test(value)
      ? value
      : decodeURIComponent(value)
  }
  return Either.right(headers)
}

const httpUrl = (name: string) =>
  Config.string(name).pipe(
    Config.validate({
      message: "must be an http:// or https:// URL",
      validation: (url) => URL.canParse(url) && /^https?:$/.test(new URL(url).protocol)
    })
  )

/**
 * Traces over OTLP/HTTP (the OpenTelemetry SDK's variables): on when OTEL_EXPORTER_OTLP_ENDPOINT (spans go to its
 * /v1/traces) or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (the full URL) is set.
 */
export const tracingConfig = Config.all({
  endpoint: Config.option(httpUrl("OTEL_EXPORTER_OTLP_ENDPOINT")),
  tracesEndpoint: Config.option(httpUrl("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
  protocol: Config.literal("http/protobuf", "http/json")("OTEL_EXPORTER_OTLP_PROTOCOL").pipe(
    Config.withDefault("http/protobuf" as const)
  ),
  headers: Config.redacted("OTEL_EXPORTER_OTLP_HEADERS").pipe(
    Config.mapOrFail((text) =>
      Either.match(parseOtlpHeaders(Redacted.value(text)), {
        onLeft: (message) => Either.left(ConfigError.InvalidData(["OTEL_EXPORTER_OTLP_HEADERS"], message)),
        onRight: (headers) => Either.right(Redacted.make(headers))
      })
    ),
    Config.withDefault(Redacted.make<Record<string, string>>({}))
  ),
  serviceName: Config.string("OTEL_SERVICE_NAME").pipe(Config.withDefault("checkpointer")),
  exportDelayMillis: nonNegativeInteger("OTEL_BSP_SCHEDULE_DELAY", 5000),
  node: nodeName
}).pipe(
  Config.map(({ endpoint, tracesEndpoint, ...settings }) => ({
    ...settings,
    url: Option.orElse(tracesEndpoint, () => Option.map(endpoint, (base) => `${base.replace(/\/+$/, "")}/v1/traces`))
  }))
)

export type TracingSettings = Config.Config.Success<typeof tracingConfig>

/** Where requests for other nodes go (NodeRouter): peers listen on the same port, over HTTPS when this one does. */
export const routingConfig = Config.all({
  node: nodeName,
  port: port("CHECKPOINTER_PORT", 3333),
  disableRouteForward: flag("DISABLE_ROUTE_FORWARD"),
  tls: apiTls
})

/** AUTH_MODE (CallerAuth). */
export const authModeConfig = Config.literal("none", "kubernetes")("AUTH_MODE").pipe(
  Config.withDefault("none" as const)
)

/** The Kaniko pods of the kaniko and kaniko-fs builders. */
export const kanikoConfig = Config.all({
  node: nodeName,
  image: kanikoImage,
  baseImage: Config.string("CHECKPOINT_BASE_IMAGE").pipe(Config.withDefault("pbaran555/checkpoint-base:1.0.0")),
  secretName: Config.string("KANIKO_SECRET_NAME").pipe(Config.withDefault("kaniko-secret")),
  timeoutSeconds: nonNegativeInteger("KANIKO_TIMEOUT", 30),
  maxMemoryBytes: memoryQuantity("KANIKO_MAX_MEMORY", "8Gi"),
  cpuRequest: cpuQuantity("KANIKO_CPU_REQUEST", "500m"),
  buildContextDir: Config.string("KANIKO_BUILD_CTX_DIR").pipe(Config.withDefault("/tmp/build-contexts"))
})

export type KanikoSettings = Config.Config.Success<typeof kanikoConfig>

/** CHECKPOINTER_NAMESPACE, else the service account's namespace, else `default`. */
export const namespaceConfig = Config.string("CHECKPOINTER_NAMESPACE").pipe(Config.option)

/** What the server needs: its listener, its peers' TLS, logging, shutdown and the builder to use. */
export const serverConfig = Config.all({
  node: nodeName,
  port: port("CHECKPOINTER_PORT", 3333),
  listenAddress: Config.string("CHECKPOINTER_LISTEN_ADDRESS").pipe(Config.option),
  clientLimits,
  tls: apiTls,
  tlsCaFile: Config.string("CHECKPOINTER_TLS_CA_FILE").pipe(Config.option),
  tlsServerName: Config.string("CHECKPOINTER_TLS_SERVER_NAME").pipe(Config.option),
  namespace: namespaceConfig,
  production: Config.string("ENVIRONMENT").pipe(Config.map((value) => value === "prod"), Config.withDefault(false)),
  shutdownGraceSeconds: nonNegativeInteger("SHUTDOWN_GRACE_SECONDS", 25),
  builder: builderConfig
})

/**
 * Every variable Checkpointer reads, grouped by the service that reads it; read once at startup so that every
 * problem is listed at once (each service then reads its own part).
 */
export const checkpointerConfig = Config.all({
  checkpoints: checkpointsConfig,
  kubelet: kubeletConfig,
  checkpointDir: checkpointDirConfig,
  storage: storageConfig,
  imageRetention: imageRetentionConfig,
  tracing: tracingConfig,
  routing: routingConfig,
  authMode: authModeConfig,
  kaniko: kanikoConfig,
  server: serverConfig
})

export type ServerSettings =
  & Omit<Config.Config.Success<typeof serverConfig>, "namespace" | "tlsServerName">
  & {
    readonly namespace: string
    /** The name peers' certificates are checked against when requests are forwarded over HTTPS. */
    readonly tlsServerName: string
  }

const serviceAccountNamespace: Effect.Effect<string, never, FileSystem.FileSystem> = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const namespace = yield* fs.readFileString(serviceAccountNamespaceFile).pipe(
    Effect.map((text) => text.trim()),
    Effect.orElseSucceed(() => "")
  )
  return namespace === "" ? "default" : namespace
})

/** The namespace of Checkpointer (and its Kaniko pods): CHECKPOINTER_NAMESPACE or the service account's. */
export const checkpointerNamespace = Effect.flatMap(
  namespaceConfig,
  Option.match({
    onSome: Effect.succeed,
    onNone: () => serviceAccountNamespace
  })
)

/** The server's settings, read once at startup. */
export class ServerConfig extends Effect.Service<ServerConfig>()("checkpointer/ServerConfig", {
  effect: Effect.gen(function*() {
    const settings = yield* serverConfig
    const namespace = yield* checkpointerNamespace
    const tlsServerName = Option.getOrElse(settings.tlsServerName, () => `checkpoint-service.${namespace}.svc`)
    return { ...settings, namespace, tlsServerName } satisfies ServerSettings
  })
}) {}

/** One line per problem: `CHECKPOINTER_NODE is missing`, `KUBELET_PORT: must be a port number ...`. */
export const describeConfigError = (error: ConfigError.ConfigError): ReadonlyArray<string> =>
  ConfigError.reduceWithContext(error, undefined, {
    andCase: (_, left: ReadonlyArray<string>, right: ReadonlyArray<string>) => [...left, ...right],
    orCase: (_, left: ReadonlyArray<string>, right: ReadonlyArray<string>) => [...left, ...right],
    invalidDataCase: (_, path, message) => [`${path.join(".")}: ${message}`],
    missingDataCase: (_, path) => [`${path.join(".")} is required but not set`],
    sourceUnavailableCase: (_, path, message) => [`${path.join(".")}: ${message}`],
    unsupportedCase: (_, path, message) => [`${path.join(".")}: ${message}`]
  }).filter((line, index, lines) => lines.indexOf(line) === index)

/** Wrong or missing settings; `problems` has one line each, `message` lists them all as the server's startup does. */
export class InvalidConfiguration extends Data.TaggedError("InvalidConfiguration")<{
  readonly message: string
  readonly problems: ReadonlyArray<string>
}> {}

/** The ConfigError of any setting, described line by line. */
export const invalidConfiguration = (error: ConfigError.ConfigError): InvalidConfiguration => {
  const problems = describeConfigError(error)
  return new InvalidConfiguration({ problems, message: `invalid configuration:\n  ${problems.join("\n  ")}` })
}
