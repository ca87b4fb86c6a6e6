import { CheckpointerClient } from "@checkpointer/client"
import type { RestoreInput } from "@checkpointer/client"
import { CheckpointIdentifier, Cluster, KubernetesApiError, reasonOf } from "@checkpointer/core"
import type { RestoreResult } from "@checkpointer/core"
import { KubeConfig } from "@kubernetes/client-node"
import { Clock, Console, Data, Duration, Effect, Either, Layer, Option, Redacted, Schedule, Schema } from "effect"
import { readFile } from "node:fs/promises"
import type { RequestOptions } from "node:https"
import { parseArgs } from "node:util"

export const usage = `Checkpoints a container with CRIU and prints the name of the image it was pushed as;
restores a checkpoint as a running pod; migrates a pod to another node.

Usage:
  kubectl checkpoint POD [-c CONTAINER] [-n NAMESPACE] [--delete-pod] [--async | --wait] [--url URL]
  kubectl checkpoint POD --migrate [--to NODE] [-c CONTAINER] [-n NAMESPACE] [--name NAME]
  kubectl checkpoint restore (IDENTIFIER | IMAGE) [--to NODE] [-n NAMESPACE] [--name NAME] [--async | --wait]

Options:
  -c, --container NAME  container to checkpoint (default: the pod's only container, or its
                        kubectl.kubernetes.io/default-container annotation)
  -n, --namespace NAME  namespace of the pod (default: the kubeconfig context's namespace, else "default")
      --delete-pod      delete the pod once its image is pushed
      --async           start the checkpoint (or restore), print its identifier and return
      --wait            start it, then wait for its result, showing progress (with or without --async)
      --migrate         checkpoint the container and delete the pod, then restore it under the same name
                        (or --name) on --to NODE (default: where the scheduler puts it)
      --to NODE         the node a restore or migration runs the pod on (default: the scheduler decides)
      --name NAME       name of the restored pod (restore default: <original>-restored-<hex>)
      --url URL         Checkpointer API, http or https (default: $CHECKPOINTER_URL, else http://localhost:3333)
      --ca-file FILE    CA (PEM) that signed Checkpointer's certificate, for an https URL
                        (default: $CHECKPOINTER_CA_FILE, else the system's CAs)
      --tls-server-name NAME
                        name to check Checkpointer's certificate against (default: the URL's host), e.g.
                        checkpoint-service.checkpointer.svc through kubectl port-forward
      --token TOKEN     bearer token for Checkpointer's AUTH_MODE=kubernetes (default: $CHECKPOINTER_TOKEN,
                        else the credentials of the kubeconfig's current user, when it has a token or exec plugin)
  -h, --help            show this help

A restore prints the restored pod as NAMESPACE/NAME; its namespace is -n, else the checkpointed pod's.
The pod is looked up through the Kubernetes API (KUBECONFIG or ~/.kube/config) only when -c is not given.
Checkpointer's answers are printed as they are (401/403 when it checks callers and denies this one).
To reach Checkpointer from outside the cluster:
  kubectl port-forward -n checkpointer service/checkpoint-service 3333:80
Exit status: 0 done, 1 the checkpoint failed or Checkpointer could not be reached, 2 wrong usage.`

export interface Invocation {
  readonly command: "checkpoint" | "restore"
  /** The pod to checkpoint, or what to restore: a checkpoint identifier or an image name. */
  readonly target: string
  readonly container: Option.Option<string>
  readonly namespace: Option.Option<string>
  readonly deletePod: boolean
  readonly async: boolean
  readonly wait: boolean
  readonly url: string
  readonly token: Option.Option<string>
  readonly caFile: Option.Option<string>
  readonly tlsServerName: Option.Option<string>
  readonly migrate: boolean
  readonly to: Option.Option<string>
  readonly name: Option.Option<string>
}

/** Wrong arguments: exit 2 with the usage. */
export class UsageError extends Data.TaggedError("UsageError")<{ readonly message: string }> {}

/** The checkpoint could not be made; the message is the server's (or says why it could not be asked). */
export class CheckpointCommandFailed
  extends Data.TaggedError("CheckpointCommandFailed")<{ readonly message: string }>
{}

export const parseInvocation = (
  args: ReadonlyArray<string>,
  env: Readonly<Record<string, string | undefined>>
): Either.Either<Invocation | "help", UsageError> => {
  const parsed = Either.try({
    try: () =>
      parseArgs({
        args: [...args],
        allowPositionals: true,
        strict: true,
        options: {
          container: { type: "string", short: "c" },
          namespace: { type: "string", short: "n" },
          "delete-pod": { type: "boolean", default: false },
          async: { type: "boolean", default: false },
          wait: { type: "boolean", default: false },
          url: { type: "string" },
          token: { type: "string" },
          "ca-file": { type: "string" },
          "tls-server-name": { type: "string" },
          migrate: { type: "boolean", default: false },
          to: { type: "string" },
          name: { type: "string" },
          help: { type: "boolean", short: "h", default: false }
        }
      }),
    catch: (error) => new UsageError({ message: reasonOf(error) })
  })
  return Either.flatMap(parsed, ({ positionals, values }): Either.Either<Invocation | "help", UsageError> => {
    if (values.help) return Either.right("help" as const)
    const restoring = positionals[0] === "restore" && positionals.length === 2
    if (!restoring && positionals.length !== 1) {
      return Either.left(
        new UsageError({ message: positionals.length === 0 ? "name the pod to checkpoint" : "name exactly one pod" })
      )
    }
    const misplaced = restoring
      ? [["--migrate", values.migrate], ["--delete-pod", values["delete-pod"]], ["-c", values.container !== undefined]]
      : values.migrate
      ? [["--async", values.async], ["--wait", values.wait], ["--delete-pod", values["delete-pod"]]]
      : [["--to", values.to !== undefined], ["--name", values.name !== undefined]]
    const refused = misplaced.find(([, given]) => given === true)
    if (refused !== undefined) {
      const context = restoring ? "with restore" : values.migrate ? "with --migrate" : "without restore or --migrate"
      return Either.left(new UsageError({ message: `${String(refused[0])} cannot be used ${context}` }))
    }
    return Either.right({
      command: restoring ? "restore" : "checkpoint",
      target: positionals.at(-1)!,
      container: Option.fromNullable(values.container),
      namespace: Option.fromNullable(values.namespace),
      deletePod: values["delete-pod"],
      async: values.async,
      wait: values.wait,
      url: values.url ?? env.CHECKPOINTER_URL ?? "http://localhost:3333",
      token: Option.fromNullable(values.token ?? env.CHECKPOINTER_TOKEN).pipe(Option.filter((token) => token !== "")),
      caFile: Option.fromNullable(values["ca-file"] ?? env.CHECKPOINTER_CA_FILE).pipe(
        Option.filter((file) => file !== "")
      ),
      tlsServerName: Option.fromNullable(values["tls-server-name"]),
      migrate: values.migrate,
      to: Option.fromNullable(values.to),
      name: Option.fromNullable(values.name)
    })
  })
}

/** The namespace of the kubeconfig's current context, as kubectl uses it when -n is not given. */
const contextNamespace = Effect.try({
  try: () => {
    const config = new KubeConfig()
    config.loadFromDefault()
    return Option.fromNullable(config.getContextObject(config.getCurrentContext())?.namespace)
  },
  catch: (cause) =>
    new KubernetesApiError({ status: undefined, message: `cannot load kubeconfig: ${String(cause)}`, cause })
}).pipe(Effect.map(Option.filter((namespace) => namespace !== "")))

/** The bearer credentials of the kubeconfig's current user (its token, or what its exec plugin answers), if any. */
const kubeconfigToken = Effect.tryPromise(async () => {
  const config = new KubeConfig()
  config.loadFromDefault()
  const options: RequestOptions = {}
  await config.applyToHTTPSOptions(options)
  const header = (options.headers as Record<string, unknown> | undefined)?.["Authorization"]
  return Option.fromNullable(typeof header === "string" && header.startsWith("Bearer ") ? header.slice(7) : undefined)
}).pipe(Effect.orElseSucceed(() => Option.none<string>()))

const readCaFile = (file: Option.Option<string>) =>
  Option.match(file, {
    onNone: () => Effect.succeed(Option.none<string>()),
    onSome: (path) =>
      Effect.tryPromise({
        try: () => readFile(path, "utf8"),
        catch: (cause) =>
          new CheckpointCommandFailed({ message: `cannot read the CA file ${path}: ${(cause as Error).message}` })
      }).pipe(Effect.map(Option.some))
  })

const defaultContainerAnnotation = "kubectl.kubernetes.io/default-container"

/** The container to checkpoint when -c is not given: the only one, or the one the pod names as its default. */
const containerOf = (namespace: string, pod: string) =>
  Effect.gen(function*() {
    const cluster = yield* Cluster
    const found = yield* cluster.getPod(namespace, pod)
    if (Option.isNone(found)) {
      return yield* new CheckpointCommandFailed({ message: `pod ${namespace}/${pod} not found` })
    }
    const names = (found.value.spec?.containers ?? []).map((container) => container.name)
    const preferred = found.value.metadata?.annotations?.[defaultContainerAnnotation]
    if (preferred !== undefined && names.includes(preferred)) return preferred
    if (names.length === 1) return names[0]!
    return yield* new CheckpointCommandFailed({
      message: `pod ${namespace}/${pod} has ${names.length} containers (${names.join(", ")}): choose one with -c`
    })
  })

/** Shows how long the command has been waiting: one updated line on a terminal, a line every 10 s otherwise. */
const progress = (what: string, interactive: boolean) =>
  Effect.gen(function*() {
    const start = yield* Clock.currentTimeMillis
    const frames = ["|", "/", "-", "\\"]
    let tick = 0
    return yield* Clock.currentTimeMillis.pipe(
      Effect.flatMap((now) => {
        const seconds = Math.floor((now - start) / 1000)
        const frame = frames[tick++ % frames.length]
        return interactive
          ? Effect.sync(() => process.stderr.write(`\r\x1b[K${frame} ${what} ${seconds}s`))
          : seconds > 0 && seconds % 10 === 0
          ? Console.error(`${what} ${seconds}s`)
          : Effect.void
      }),
      Effect.repeat(Schedule.spaced(interactive ? "250 millis" : "1 second")),
      Effect.zipRight(Effect.never)
    )
  })

const clearProgress = (interactive: boolean) =>
  interactive ? Effect.sync(() => process.stderr.write("\r\x1b[K")) : Effect.void

/** While `effect` runs, show progress; the progress line is cleared however it ends. */
const withProgress = (what: string, interactive: boolean) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  effect.pipe(Effect.raceFirst(progress(what, interactive)), Effect.ensuring(clearProgress(interactive)))

const asFailure = (error: { readonly message: string }) => new CheckpointCommandFailed({ message: error.message })

/** Started now; answers the time since, formatted ("2s 150ms"). */
const stopwatch = Effect.map(
  Clock.currentTimeMillis,
  (started) => Effect.map(Clock.currentTimeMillis, (now) => Duration.format(Duration.millis(now - started)))
)

/** The namespace of -n, else the kubeconfig context's, else "default". */
const namespaceOf = (invocation: Invocation) =>
  Option.isSome(invocation.namespace)
    ? Effect.succeed(invocation.namespace.value)
    : contextNamespace.pipe(Effect.map(Option.getOrElse(() => "default")), Effect.mapError(asFailure))

const isIdentifier = Schema.is(CheckpointIdentifier)

/** Restores `input` (sync, or async with --async/--wait) and prints the pod as NAMESPACE/NAME (or the identifier). */
const restoreAndReport = (
  input: RestoreInput,
  invocation: Pick<Invocation, "async" | "wait">,
  options: { readonly interactive: boolean; readonly describe: string }
) =>
  Effect.gen(function*() {
    const client = yield* CheckpointerClient
    const elapsed = yield* stopwatch
    const report = (restored: RestoreResult) =>
      Effect.gen(function*() {
        const omitted = restored.omittedEnv === undefined
          ? ""
          : `; env values not restored: ${restored.omittedEnv.join(", ")}`
        const where = `${restored.namespace}/${restored.pod} on node ${restored.node}`
        yield* Console.error(`restored ${options.describe} as ${where} in ${yield* elapsed}${omitted}`)
        yield* Console.log(`${restored.namespace}/${restored.pod}`)
      })
    if (!invocation.async && !invocation.wait) {
      const restored = yield* client.restore(input).pipe(
        withProgress(`restoring ${options.describe}`, options.interactive)
      )
      return yield* report(restored)
    }
    const { checkpointIdentifier } = yield* client.restore(input, { async: true })
    if (!invocation.wait) {
      yield* Console.error(`restore of ${options.describe} started`)
      return yield* Console.log(checkpointIdentifier)
    }
    yield* Console.error(`restore ${checkpointIdentifier} of ${options.describe} started`)
    const restored = yield* client.waitForRestore(checkpointIdentifier).pipe(
      withProgress(`waiting for ${checkpointIdentifier}`, options.interactive)
    )
    yield* report(restored)
  })

const optional = <K extends string>(key: K, value: Option.Option<string>) =>
  Option.match(value, { onNone: () => ({}), onSome: (given) => ({ [key]: given }) as Record<K, string> })

/** `kubectl checkpoint restore (IDENTIFIER | IMAGE)`. */
const restoreCommand = (invocation: Invocation, options: { readonly interactive: boolean }) =>
  restoreAndReport(
    {
      ...(isIdentifier(invocation.target) ? { checkpointIdentifier: invocation.target } : { image: invocation.target }),
      ...optional("namespace", invocation.namespace),
      ...optional("pod", invocation.name),
      ...optional("node", invocation.to)
    },
    invocation,
    { ...options, describe: invocation.target }
  )

/**
 * `kubectl checkpoint POD`: resolves the namespace and container, asks Checkpointer for the checkpoint, and prints the
 * image name on stdout (or the identifier with --async); progress and summaries go to stderr. With --migrate the pod
 * is deleted once checkpointed and restored under its name on --to NODE.
 */
const checkpointCommand = (invocation: Invocation, options: { readonly interactive: boolean }) =>
  Effect.gen(function*() {
    const namespace = yield* namespaceOf(invocation)
    const container: string = Option.isSome(invocation.container)
      ? invocation.container.value
      : yield* containerOf(namespace, invocation.target).pipe(
        Effect.provide(Cluster.Default),
        Effect.catchTag("KubernetesApiError", (error) => Effect.fail(asFailure(error)))
      )
    const target = { namespace, pod: invocation.target, container }
    const named = `${namespace}/${invocation.target}/${container}`
    const client = yield* CheckpointerClient
    const elapsed = yield* stopwatch
    const deletePod = invocation.deletePod || invocation.migrate

    if (!invocation.async && !invocation.wait) {
      const result = yield* client.checkpoint(target, { deletePod }).pipe(
        withProgress(`checkpointing ${named}`, options.interactive)
      )
      yield* Console.error(`checkpointed ${named} in ${yield* elapsed}${deletePod ? ", pod deleted" : ""}`)
      if (!invocation.migrate) return yield* Console.log(result.containerImageName)
      yield* Console.error(`image ${result.containerImageName}`)
      return yield* restoreAndReport(
        {
          image: result.containerImageName,
          namespace,
          pod: Option.getOrElse(invocation.name, () => invocation.target),
          ...optional("node", invocation.to)
        },
        { async: false, wait: false },
        { ...options, describe: named }
      )
    }
    const { checkpointIdentifier } = yield* client.checkpoint(target, { deletePod, async: true })
    if (!invocation.wait) {
      yield* Console.error(`checkpoint of ${named} started`)
      yield* Console.log(checkpointIdentifier)
      return
    }
    yield* Console.error(`checkpoint ${checkpointIdentifier} of ${named} started`)
    const result = yield* client.waitFor(checkpointIdentifier).pipe(
      withProgress(`waiting for ${checkpointIdentifier}`, options.interactive)
    )
    yield* Console.error(`checkpointed ${named} in ${yield* elapsed}${deletePod ? ", pod deleted" : ""}`)
    yield* Console.log(result.containerImageName)
  })

/** `kubectl checkpoint ...`: the command the invocation names, against the Checkpointer API it names. */
export const kubectlCheckpoint = (invocation: Invocation, options: { readonly interactive: boolean }) =>
  (invocation.command === "restore" ? restoreCommand(invocation, options) : checkpointCommand(invocation, options))
    .pipe(
      Effect.catchIf(
        (error): error is Exclude<typeof error, CheckpointCommandFailed> => error._tag !== "CheckpointCommandFailed",
        (error) =>
          Effect.fail(
            new CheckpointCommandFailed({
              message: error._tag === "CheckpointerRequestFailed" && error.status === undefined
                ? `${error.message} (is Checkpointer reachable at ${invocation.url}? see --help)`
                : error.message
            })
          )
      ),
      Effect.provide(Layer.unwrapEffect(
        Effect.map(
          Effect.all({
            token: Option.isSome(invocation.token) ? Effect.succeed(invocation.token) : kubeconfigToken,
            ca: readCaFile(invocation.caFile)
          }),
          ({ ca, token }) =>
            CheckpointerClient.layer({
              baseUrl: invocation.url,
              ...(Option.isSome(token) ? { token: Redacted.make(token.value) } : {}),
              ...(Option.isSome(ca) ? { ca: ca.value } : {}),
              ...(Option.isSome(invocation.tlsServerName) ? { serverName: invocation.tlsServerName.value } : {})
            })
        )
      ))
    )

/** Runs the command line and answers the exit status: 0 done, 1 failed, 2 wrong usage. */
export const runKubectlCheckpoint = (
  args: ReadonlyArray<string>,
  env: Readonly<Record<string, string | undefined>>,
  options: { readonly interactive: boolean }
): Effect.Effect<number> =>
  Either.match(parseInvocation(args, env), {
    onLeft: (error) => Console.error(`error: ${error.message}\n\n${usage}`).pipe(Effect.as(2)),
    onRight: (invocation) =>
      invocation === "help"
        ? Console.log(usage).pipe(Effect.as(0))
        : kubectlCheckpoint(invocation, options).pipe(
          Effect.as(0),
          Effect.catchAll((error) => Console.error(`error: ${error.message}`).pipe(Effect.as(1)))
        )
  })
