import { checkpointerNamespace, ImageBuilder, ImageBuildError, kanikoConfig, reasonOf } from "@checkpointer/core"
import type { BuildRequest, BuildStep, BuiltImage, KanikoSettings, KubernetesApiError } from "@checkpointer/core"
import { FileSystem, Path } from "@effect/platform"
import type { V1Pod, V1Volume, V1VolumeMount } from "@kubernetes/client-node"
import { Duration, Effect, Either, Layer, Option } from "effect"
import type { ConfigError, Scope } from "effect"
import type { Compression } from "../archive/ArchiveFormat.ts"
import { checkpointFacts, readArchiveMetadata } from "../archive/CheckpointMetadata.ts"
import { imageAnnotations, nodeArchitecture } from "../archive/ImageAnnotations.ts"
import { unsupportedByKaniko } from "../native/LayerEncoding.ts"
import { readRegistryCa, registryTrustConfig } from "../registry/RegistryTrust.ts"
import { readArchiveFormat } from "./KanikoContext.ts"
import type { ContextArchive, ContextFiles } from "./KanikoContext.ts"
import { KanikoPods } from "./KanikoPods.ts"

export type KanikoBuilderName = "kaniko" | "kaniko-fs"

/** KANIKO_* and the namespace the pods run in (Checkpointer's). */
export type KanikoPodSettings = KanikoSettings & { readonly namespace: string }

export const kanikoContainer = "kaniko"
export const dockerfileName = "Dockerfile"
export const registryCaName = "registry-ca.pem"
export const workspace = "/workspace"
/** Where the executor unpacks a `tar://stdin` context (its KANIKO_DIR, /kaniko, + /buildcontext), before it pushes. */
export const stdinContextDir = "/kaniko/buildcontext"
export const podNamePrefix = "checkpointer-kaniko-"
/** Kaniko writes the digest here; Kubernetes reports it as the container's termination message. */
export const digestFile = "/dev/termination-log"
/** `app.kubernetes.io/name` of every Kaniko pod (not `checkpointer`: that label finds Checkpointer pods). */
export const kanikoAppName = "checkpointer-kaniko"

const logLines = 20
const maxLogChars = 4000
const mebibyte = 1024 * 1024

/**
 * The executor's memory for an archive of `archiveBytes` (as ADD reads it): ADD reads the whole file into memory
 * twice (once to recognise the tar, once to extract it; measured on v1.28.3: 1834-1870 MiB RSS for 560 MiB), and the
 * build context the executor writes (the archive again, for `kaniko`) is page cache charged to the same cgroup.
 */
export const memoryFormula = { perArchiveByte: 4.5, baseBytes: 256 * mebibyte } as const

export const kanikoMemoryBytes = (archiveBytes: number): number =>
  Math.ceil((memoryFormula.perArchiveByte * archiveBytes + memoryFormula.baseBytes) / mebibyte) * mebibyte

/** Extra build time per started 100 MiB of the archive, on top of KANIKO_TIMEOUT (or twice it for kaniko-fs). */
export const secondsPer100MiB = 10

export const sizeAllowance = (archiveBytes: number): Duration.Duration =>
  Duration.seconds(secondsPer100MiB * Math.ceil(archiveBytes / (100 * mebibyte)))

const inMiB = (bytes: number) => `${Math.ceil(bytes / mebibyte)} MiB`

/** The pod's memory for the archive, or why it cannot have enough under KANIKO_MAX_MEMORY. */
export const kanikoMemory = (archiveBytes: number, maxBytes: number): Either.Either<number, string> => {
  const bytes = kanikoMemoryBytes(archiveBytes)
  return bytes <= maxBytes ? Either.right(bytes) : Either.left(
    `the archive Kaniko would ADD is ${inMiB(archiveBytes)}: the executor needs ` +
      `${memoryFormula.perArchiveByte} x that + ${inMiB(memoryFormula.baseBytes)} = ${inMiB(bytes)} of memory, more ` +
      `than KANIKO_MAX_MEMORY (${inMiB(maxBytes)}); raise KANIKO_MAX_MEMORY or use CHECKPOINT_BUILDER=native, ` +
      "which streams the archive"
  )
}

/** Where the Kaniko pod takes its build context from. */
export type BuildContext =
  | { readonly _tag: "Stdin" }
  | { readonly _tag: "HostPath"; readonly path: string; readonly nodeName: string }

const contextDir = (context: BuildContext) => context._tag === "Stdin" ? stdinContextDir : workspace

export const dockerfile = (baseImage: string, archiveName: string) => `FROM ${baseImage}\nADD ${archiveName} /\n`

/** The registry host of an image as the executor names it (go-containerregistry: Docker Hub is index.docker.io). */
export const registryHost = (image: string): string => {
  const slash = image.indexOf("/")
  const first = slash === -1 ? "" : image.slice(0, slash)
  const hasDomain = /[.:]/.test(first) || first === "localhost"
  return !hasDomain || first === "docker.io" ? "index.docker.io" : first
}

/** How the executor reaches registries: REGISTRY_CA_FILE's PEM (sent in the build context), REGISTRY_INSECURE. */
export interface KanikoRegistryTrust {
  readonly caPem: Option.Option<string>
  readonly insecure: boolean
}

export const noRegistryTrust: KanikoRegistryTrust = { caPem: Option.none(), insecure: false }

/** The Dockerfile, and the registry's CA when there is one. */
export const contextFiles = (dockerfileText: string, trust: KanikoRegistryTrust): ContextFiles => [
  { name: dockerfileName, text: dockerfileText },
  ...Option.match(trust.caPem, { onNone: () => [], onSome: (text) => [{ name: registryCaName, text }] })
]

export const kanikoArgs = (options: {
  readonly context: BuildContext
  readonly destination: string
  readonly baseImage: string
  readonly annotations: Readonly<Record<string, string>>
  readonly trust: KanikoRegistryTrust
}): ReadonlyArray<string> => {
  const hosts = [...new Set([registryHost(options.destination), registryHost(options.baseImage)])]
  const caPath = `${contextDir(options.context)}/${registryCaName}`
  return [
    `--dockerfile=${dockerfileName}`,
    `--context=${options.context._tag === "Stdin" ? "tar://stdin" : `dir://${workspace}`}`,
    `--destination=${options.destination}`,
    "--image-format=oci",
    `--digest-file=${digestFile}`,
    ...(Option.isSome(options.trust.caPem) ? hosts.map((host) => `--registry-certificate=${host}=${caPath}`) : []),
    ...(options.trust.insecure ? ["--insecure", "--skip-tls-verify", "--insecure-pull", "--skip-tls-verify-pull"] : []),
    ...Object.entries(options.annotations).map(([key, value]) => `--annotation=${key}=${value}`)
  ]
}

/** The Kaniko pod of one build, as the Go service defined it (plus the labels and annotations that say whose it is). */
export const kanikoPod = (options: {
  readonly settings: Pick<KanikoPodSettings, "namespace" | "node" | "image" | "secretName" | "cpuRequest" | "baseImage">
  readonly builder: KanikoBuilderName
  readonly request: BuildRequest
  readonly context: BuildContext
  readonly annotations: Readonly<Record<string, string>>
  readonly trust: KanikoRegistryTrust
  /** Memory request and limit, from kanikoMemory. */
  readonly memoryBytes: number
  /** This node's architecture: the image is built for it, so the pod runs on a node of it. */
  readonly architecture: string
}): V1Pod => {
  const { context, request, settings } = options
  const hostPath = context._tag === "HostPath" ? context : undefined
  const volumes: Array<V1Volume> = [{
    name: "docker-config",
    secret: { secretName: settings.secretName, items: [{ key: ".dockerconfigjson", path: "config.json" }] }
  }]
  const volumeMounts: Array<V1VolumeMount> = [{ name: "docker-config", mountPath: "/kaniko/.docker", readOnly: true }]
  if (hostPath !== undefined) {
    volumes.push({ name: "build-context", hostPath: { path: hostPath.path, type: "Directory" } })
    volumeMounts.push({ name: "build-context", mountPath: workspace, readOnly: true })
  }
  const memory = `${options.memoryBytes / mebibyte}Mi`
  const { container, namespace, pod } = request.container
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      generateName: podNamePrefix,
      namespace: settings.namespace,
      labels: {
        "app.kubernetes.io/name": kanikoAppName,
        "app.kubernetes.io/component": "image-builder",
        "app.kubernetes.io/managed-by": "checkpointer",
        "checkpointer/builder": options.builder,
        "checkpointer/node": settings.node
      },
      annotations: {
        "checkpointer/container": `${namespace}/${pod}/${container}`,
        "checkpointer/image": request.imageName
      }
    },
    spec: {
      restartPolicy: "Never",
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      ...(hostPath === undefined ? {} : { nodeName: hostPath.nodeName }),
      nodeSelector: { "kubernetes.io/arch": options.architecture },
      containers: [{
        name: kanikoContainer,
        image: settings.image,
        args: [...kanikoArgs({
          context,
          destination: request.imageName,
          baseImage: settings.baseImage,
          annotations: options.annotations,
          trust: options.trust
        })],
        ...(context._tag === "Stdin" ? { stdin: true, stdinOnce: true } : {}),
        // The Go runtime collects the first read of the archive before the second one grows past the limit.
        // Go's heap target well below the limit: the files the executor writes are page cache in the same cgroup.
        env: [{ name: "GOMEMLIMIT", value: `${Math.floor(options.memoryBytes * 0.6 / mebibyte)}MiB` }],
        resources: {
          requests: { memory, cpu: settings.cpuRequest },
          limits: { memory }
        },
        terminationMessagePolicy: "FallbackToLogsOnError",
        volumeMounts
      }],
      volumes
    }
  }
}

const containerStatus = (pod: V1Pod) => pod.status?.containerStatuses?.find((status) => status.name === kanikoContainer)

/** `Pending (ContainerCreating: ...)`, `Failed (exit code 1: Error)`: the pod's state in a few words. */
export const describePodState = (pod: V1Pod): string => {
  const state = containerStatus(pod)?.state
  const words = (...parts: ReadonlyArray<string | undefined>) =>
    parts.filter((part) => part !== undefined && part !== "").join(": ")
  const detail = state?.waiting !== undefined
    ? words(state.waiting.reason, state.waiting.message)
    : state?.terminated !== undefined
    ? words(`exit code ${state.terminated.exitCode}`, state.terminated.reason)
    : pod.status?.reason ?? ""
  return `${pod.status?.phase ?? "Unknown"}${detail === "" ? "" : ` (${detail})`}`
}

const digestPattern = /^sha256:[0-9a-f]{64}$/

/** The digest Kaniko wrote to the termination log (`--digest-file`), which Kubernetes reports on the pod. */
export const reportedDigest = (pod: V1Pod): Option.Option<string> =>
  Option.fromNullable(containerStatus(pod)?.state?.terminated?.message).pipe(
    Option.map((message) => message.trim()),
    Option.filter((message) => digestPattern.test(message))
  )

/** User-info in URLs is the only place a credential could show in Kaniko's output; it is masked anyway. */
const masked = (text: string) => text.replace(/(\w+:\/\/)[^/\s@]+@/g, "$1***@")

export const phaseOf = (pod: V1Pod) => pod.status?.phase ?? "Unknown"

const isTerminal = (pod: V1Pod) => phaseOf(pod) === "Succeeded" || phaseOf(pod) === "Failed"

/**
 * A strategy's part of a Kaniko build: how the build context reaches the pod. `prepare` runs before the pod exists
 * (kaniko-fs writes its directory there, removed when the build ends) and tells the archive as ADD will read it;
 * `stream` runs once the pod is Running (kaniko sends its context there).
 */
export interface KanikoStrategy {
  readonly name: KanikoBuilderName
  /** Build time once the pod exists, before the archive's allowance (kaniko-fs: twice KANIKO_TIMEOUT). */
  readonly buildTimeout: (settings: KanikoPodSettings) => Duration.Duration
  readonly prepare: (build: {
    readonly settings: KanikoPodSettings
    readonly request: BuildRequest
    readonly format: Compression
    readonly files: ContextFiles
  }) => Effect.Effect<
    { readonly context: BuildContext; readonly archive: ContextArchive },
    ImageBuildError,
    Scope.Scope | FileSystem.FileSystem | Path.Path
  >
  readonly stream: Option.Option<
    (build: {
      readonly pods: KanikoPods
      readonly namespace: string
      readonly name: string
      readonly archive: ContextArchive
      readonly files: ContextFiles
    }) => Effect.Effect<void, ImageBuildError>
  >
}

/** An ImageBuilder that runs one Kaniko pod per build; the strategy decides how the build context gets there. */
export const makeKanikoBuilder = (strategy: KanikoStrategy) =>
  Effect.gen(function*() {
    yield* unsupportedByKaniko(strategy.name)
    const settings: KanikoPodSettings = { ...yield* kanikoConfig, namespace: yield* checkpointerNamespace }
    const pods = yield* KanikoPods
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const { caFile, insecure } = yield* registryTrustConfig
    const trust: KanikoRegistryTrust = { caPem: yield* readRegistryCa(caFile), insecure }
    const architecture = nodeArchitecture()
    const timeout = Duration.seconds(settings.timeoutSeconds)
    const namespace = settings.namespace

    const failure = (step: BuildStep, message: string, cause?: unknown) =>
      new ImageBuildError({ step, message, ...(cause === undefined ? {} : { cause }) })

    const lastLogLines = (name: string) =>
      pods.podLogTail(namespace, name, kanikoContainer, logLines).pipe(
        Effect.map((log) => masked(log.trim()).slice(-maxLogChars)),
        Effect.orElseSucceed(() => "")
      )

    /** Adds the Kaniko container's last log lines to a failure, when there are any. */
    const withLogs = (name: string) => (error: ImageBuildError) =>
      Effect.flatMap(lastLogLines(name), (log) =>
        Effect.fail(
          log === "" ? error : new ImageBuildError({
            ...error,
            message: `${error.message}; last log lines of the Kaniko container:\n${log}`
          })
        ))

    /** Waits for the pod to satisfy `until`; a timeout while it is still Pending is a scheduling failure. */
    const waitFor = (name: string, until: (pod: V1Pod) => boolean, within: Duration.Duration, what: string) =>
      pods.waitForPod(namespace, name, until).pipe(
        Effect.mapError((error) => failure("build", `Kaniko pod ${namespace}/${name}: ${error.message}`, error)),
        Effect.timeout(within),
        Effect.catchTag("TimeoutException", () =>
          Effect.flatMap(Effect.option(pods.getPod(namespace, name)), (found) => {
            const current = Option.flatten(found)
            const pending = Option.exists(current, (pod) => phaseOf(pod) === "Pending")
            const state = Option.match(current, { onNone: () => "gone", onSome: describePodState })
            return Effect.fail(failure(
              pending ? "scheduling" : "build",
              `Kaniko pod ${namespace}/${name} ${what} within ${Duration.format(within)}: it is ${state}`
            ))
          }))
      )

    const runPod = (build: {
      readonly request: BuildRequest
      readonly context: BuildContext
      readonly archive: ContextArchive
      readonly files: ContextFiles
      readonly annotations: Readonly<Record<string, string>>
    }) =>
      Effect.gen(function*() {
        const { archive, context, files, request } = build
        const memoryBytes = yield* Either.match(kanikoMemory(archive.size, settings.maxMemoryBytes), {
          onLeft: (reason) => Effect.fail(failure("pod resources", reason)),
          onRight: Effect.succeed
        })
        const pod = kanikoPod({
          settings,
          builder: strategy.name,
          request,
          context,
          annotations: build.annotations,
          trust,
          memoryBytes,
          architecture
        })
        const created = yield* Effect.acquireRelease(
          pods.createPod(namespace, pod).pipe(
            Effect.mapError((error) => failure("pod creation", `cannot create the Kaniko pod: ${error.message}`, error))
          ),
          (created) =>
            pods.requestPodDeletion(namespace, created.metadata?.name ?? "").pipe(
              Effect.tapError((error) =>
                Effect.logWarning("could not delete the Kaniko pod").pipe(
                  Effect.annotateLogs({ error: error.message })
                )
              ),
              Effect.ignore
            )
        )
        const name = created.metadata?.name ?? ""
        yield* Effect.annotateCurrentSpan({ pod: name })
        yield* Effect.logDebug("Kaniko pod created").pipe(Effect.annotateLogs({ pod: `${namespace}/${name}` }))
        return yield* Effect.gen(function*() {
          if (Option.isSome(strategy.stream)) {
            const started = yield* waitFor(
              name,
              (pod) => phaseOf(pod) === "Running" || isTerminal(pod),
              timeout,
              "was not running"
            )
            if (isTerminal(started)) {
              const state = describePodState(started)
              return yield* failure("build", `Kaniko pod ${namespace}/${name} ended before its context came: ${state}`)
            }
            yield* strategy.stream.value({ pods, namespace, name, archive, files })
          }
          const within = Duration.sum(strategy.buildTimeout(settings), sizeAllowance(archive.size))
          return yield* waitFor(name, isTerminal, within, "did not finish")
        }).pipe(
          Effect.filterOrFail(
            (pod) => phaseOf(pod) === "Succeeded",
            (pod) => failure("build", `Kaniko pod ${namespace}/${name} failed: it is ${describePodState(pod)}`)
          ),
          Effect.flatMap((pod) =>
            Effect.mapError(
              reportedDigest(pod),
              () => failure("build", `Kaniko pod ${namespace}/${name} succeeded without reporting the image digest`)
            )
          ),
          Effect.catchAll(withLogs(name))
        )
      })

    const build = Effect.fn("KanikoImageBuilder.build")(function*(request: BuildRequest) {
      const readFailed = (reason: string, cause: unknown) =>
        failure("read archive", `cannot read the checkpoint archive ${request.archive}: ${reason}`, cause)
      const size = yield* fs.stat(request.archive).pipe(
        Effect.mapError((error) => readFailed(reasonOf(error), error)),
        Effect.map((info) => Number(info.size))
      )
      const format = yield* readArchiveFormat(request.archive).pipe(
        Effect.provideService(FileSystem.FileSystem, fs),
        Effect.mapError((error) => readFailed(reasonOf(error), error)),
        Effect.filterOrFail(
          (format): format is Compression => format !== "xz",
          () =>
            readFailed(
              "it is xz-compressed, which the Kaniko builders cannot build: the executor's ADD extracts plain, gzip " +
                "and bzip2 tars only, and Checkpointer has no streaming xz decompressor (use an uncompressed, gzip " +
                "or zstd archive, or CHECKPOINT_BUILDER=native)",
              undefined
            )
        )
      )
      const metadata = yield* readArchiveMetadata(request.archive).pipe(
        Effect.provideService(FileSystem.FileSystem, fs),
        Effect.mapError((error) => readFailed(error.message, error))
      )
      const annotations = {
        ...request.annotations,
        ...imageAnnotations(checkpointFacts(metadata), request.container, architecture)
      }
      const files = contextFiles(dockerfile(settings.baseImage, path.basename(request.archive)), trust)
      const digest = yield* Effect.scoped(Effect.gen(function*() {
        const { archive, context } = yield* strategy.prepare({ settings, request, format, files })
        return yield* runPod({ request, context, archive, files, annotations })
      })).pipe(Effect.provideService(FileSystem.FileSystem, fs), Effect.provideService(Path.Path, path))
      yield* Effect.logInfo("Kaniko pushed the checkpoint image").pipe(
        Effect.annotateLogs({ image: request.imageName, digest, builder: strategy.name })
      )
      return { name: request.imageName, digest, size } satisfies BuiltImage
    }, Effect.annotateLogs({ service: "KanikoImageBuilder" }))

    return ImageBuilder.of({ name: strategy.name, build })
  })

/**
 * A Kaniko strategy's ImageBuilder layers: without the Kaniko pods' service (tests give a fake one), and with the real
 * one on the API server.
 */
export const kanikoBuilderLayers = (strategy: KanikoStrategy) => {
  const layerWithoutDependencies: Layer.Layer<
    ImageBuilder,
    ConfigError.ConfigError,
    KanikoPods | FileSystem.FileSystem | Path.Path
  > = Layer.effect(ImageBuilder, makeKanikoBuilder(strategy))
  const layer: Layer.Layer<
    ImageBuilder,
    ConfigError.ConfigError | KubernetesApiError,
    FileSystem.FileSystem | Path.Path
  > = layerWithoutDependencies.pipe(Layer.provide(KanikoPods.Default))
  return { layerWithoutDependencies, layer } as const
}
