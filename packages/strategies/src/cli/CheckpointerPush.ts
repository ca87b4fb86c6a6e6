import { FileSystem } from "@effect/platform"
import { NodeFileSystem } from "@effect/platform-node"
import { Clock, Console, Effect, Either, Ref } from "effect"
import { parseArgs } from "node:util"
import { ArchivePusher } from "../native/ArchivePusher.ts"

export const usage =
  `Pushes a checkpoint archive (written by the kubelet, crictl checkpoint or podman container checkpoint
--export) to a registry as a restorable OCI image, as Checkpointer's native builder does.

Usage:
  checkpointer-push ARCHIVE IMAGE [--auth-file FILE] [--ca-file FILE] [--insecure] [--compression KIND]
                    [--compression-level N] [--encrypt-for KEY.pem]...

Options (each defaults to the server's variable):
  --auth-file FILE         docker config JSON with the registry's credentials ($REGISTRY_AUTH_FILE)
  --ca-file FILE           extra CA (PEM) trusted for the registry ($REGISTRY_CA_FILE)
  --insecure               allow plain HTTP or unverified TLS ($REGISTRY_INSECURE)
  --compression KIND       none, zstd or gzip: compress an uncompressed archive while pushing it
                           ($CHECKPOINT_LAYER_COMPRESSION, else none)
  --compression-level N    zstd 1-19, gzip 1-9 ($CHECKPOINT_LAYER_COMPRESSION_LEVEL, else 1)
  --encrypt-for FILE       encrypt the layer for this recipient's public key (PEM); repeatable
                           ($CHECKPOINT_ENCRYPTION_KEYS, comma-separated)
  -h, --help               show this help

Prints IMAGE@DIGEST on stdout; progress goes to stderr when it is a terminal.
Exit status: 0 pushed, 1 the push failed (a missing file or one that is not a checkpoint archive is refused
before anything is sent), 2 wrong usage or configuration.`

/** The command line as the settings of the server's native builder, by their variable names. */
const settingsOf = (
  values: {
    readonly "auth-file"?: string | undefined
    readonly "ca-file"?: string | undefined
    readonly insecure?: boolean | undefined
    readonly compression?: string | undefined
    readonly "compression-level"?: string | undefined
    readonly "encrypt-for"?: ReadonlyArray<string> | undefined
  },
  env: Readonly<Record<string, string | undefined>>
): Record<string, string> => {
  const given: Record<string, string | undefined> = {
    REGISTRY_AUTH_FILE: values["auth-file"] ?? env.REGISTRY_AUTH_FILE,
    REGISTRY_CA_FILE: values["ca-file"] ?? env.REGISTRY_CA_FILE,
    REGISTRY_INSECURE: values.insecure === true ? "true" : env.REGISTRY_INSECURE,
    CHECKPOINT_LAYER_COMPRESSION: values.compression ?? env.CHECKPOINT_LAYER_COMPRESSION,
    CHECKPOINT_LAYER_COMPRESSION_LEVEL: values["compression-level"] ?? env.CHECKPOINT_LAYER_COMPRESSION_LEVEL,
    CHECKPOINT_ENCRYPTION_KEYS: values["encrypt-for"]?.join(",") ?? env.CHECKPOINT_ENCRYPTION_KEYS
  }
  return Object.fromEntries(
    Object.entries(given).filter((entry): entry is [string, string] => entry[1] !== undefined && entry[1] !== "")
  )
}

const parseInvocation = (args: ReadonlyArray<string>, env: Readonly<Record<string, string | undefined>>) =>
  Either.try({
    try: () => {
      const { positionals, values } = parseArgs({
        args: [...args],
        allowPositionals: true,
        strict: true,
        options: {
          "auth-file": { type: "string" },
          "ca-file": { type: "string" },
          insecure: { type: "boolean" },
          compression: { type: "string" },
          "compression-level": { type: "string" },
          "encrypt-for": { type: "string", multiple: true },
          help: { type: "boolean", short: "h", default: false }
        }
      })
      if (values.help) return "help" as const
      const [archive, image, ...extra] = positionals
      if (archive === undefined || image === undefined || extra.length > 0) {
        throw new Error(`expected ARCHIVE and IMAGE, got ${positionals.length} argument(s)`)
      }
      return { archive, image, settings: settingsOf(values, env) }
    },
    catch: (cause) => cause instanceof Error ? cause.message : String(cause)
  })

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1)

/** A progress line on stderr, rewritten at most every 200 ms, for a terminal. */
const progressLine = (total: number) =>
  Effect.map(Ref.make(0), (shownAt) => (bytesRead: number) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      if (now - (yield* Ref.get(shownAt)) < 200 && bytesRead < total) return
      yield* Ref.set(shownAt, now)
      const percent = total === 0 ? 100 : Math.floor((bytesRead / total) * 100)
      process.stderr.write(`\r\x1b[2Kpushing ${mib(bytesRead)} / ${mib(total)} MiB (${percent}%)`)
    }))

/** Runs `checkpointer-push` and answers its exit status: 0 pushed, 1 failed, 2 wrong usage or configuration. */
export const runCheckpointerPush = (
  args: ReadonlyArray<string>,
  env: Readonly<Record<string, string | undefined>>,
  options: { readonly interactive: boolean }
): Effect.Effect<number> =>
  Either.match(parseInvocation(args, env), {
    onLeft: (message) => Effect.as(Console.error(`checkpointer-push: ${message}\n\n${usage}`), 2),
    onRight: (invocation) =>
      invocation === "help" ? Effect.as(Console.log(usage), 0) : Effect.gen(function*() {
        const fs = yield* FileSystem.FileSystem
        const pusher = yield* ArchivePusher
        const started = yield* Clock.currentTimeMillis
        const size = yield* fs.stat(invocation.archive).pipe(
          Effect.map((info) => Number(info.size)),
          Effect.orElseSucceed(() => 0)
        )
        const onProgress = options.interactive ? yield* progressLine(size) : undefined
        const built = yield* pusher.push(invocation.archive, invocation.image, onProgress && { onProgress }).pipe(
          Effect.ensuring(options.interactive ? Effect.sync(() => process.stderr.write("\r\x1b[2K")) : Effect.void)
        )
        const seconds = ((yield* Clock.currentTimeMillis) - started) / 1000
        yield* Console.log(`${built.name}@${built.digest}`)
        yield* Console.error(`pushed ${mib(built.size)} MiB in ${seconds.toFixed(1)} s`)
        return 0
      }).pipe(
        Effect.provide(ArchivePusher.layer(invocation.settings)),
        Effect.catchTags({
          InvalidConfiguration: (error) => Effect.as(Console.error(`checkpointer-push: ${error.message}`), 2),
          ImageBuildError: (error) => Effect.as(Console.error(`checkpointer-push: ${error.message}`), 1)
        }),
        Effect.provide(NodeFileSystem.layer)
      )
  })
