import { FileSystem, Path } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { Context, Effect, Layer } from "effect"
import type { Scope } from "effect"
import { createServer } from "node:net"
import type { AddressInfo, Socket } from "node:net"
import type { LocalStack } from "./LocalStack.ts"
import { startLocalStack } from "./LocalStack.ts"
import { pushCheckpointBaseImage } from "./Workloads.ts"

export const kanikoSecretName = "kaniko-secret"
export const checkpointerNamespace = "kube-system"

export interface KanikoStack extends LocalStack {
  /** `REGISTRY/checkpoint-base:1.0.0`, pushed at startup. */
  readonly baseImage: string
  /** KANIKO_BUILD_CTX_DIR of the Checkpointers started with `startKanikoCheckpointer`. */
  readonly buildContextDir: string
  /** `127.0.0.1:PORT` of a registry that accepts connections and never answers (scoped). */
  readonly silentRegistry: Effect.Effect<string, never, Scope.Scope>
  /** The settings that select a Kaniko builder against this stack (base image, build contexts, secret). */
  readonly kanikoSettings: (builder: "kaniko" | "kaniko-fs") => Readonly<Record<string, string>>
  /** A Checkpointer with the given Kaniko builder (and extra settings), against this stack. */
  readonly startKanikoCheckpointer: (
    builder: "kaniko" | "kaniko-fs",
    extra?: Readonly<Record<string, string>>
  ) => ReturnType<LocalStack["startAnotherCheckpointer"]>
}

const silentRegistry = Effect.acquireRelease(
  Effect.async<{ readonly host: string; readonly close: () => void }>((resume) => {
    const sockets = new Set<Socket>()
    const server = createServer((socket) => {
      sockets.add(socket)
      socket.on("close", () => sockets.delete(socket))
    })
    server.listen(0, "127.0.0.1", () =>
      resume(Effect.succeed({
        host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
        close: () => {
          for (const socket of sockets) socket.destroy()
          server.close()
        }
      })))
  }),
  (listening) => Effect.sync(listening.close)
).pipe(Effect.map((listening) => listening.host))

/**
 * The local stack plus what the Kaniko strategies need: the real Kaniko executor image in the node's CRI-O, the
 * checkpoint base image in the registry, and the registry credentials as the dockerconfigjson Secret
 * KANIKO_SECRET_NAME in Checkpointer's namespace. Kaniko pods are run by the node agent like any pod.
 */
export const startKanikoStack = (options: { readonly dir: string }) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    // htpasswd: the executor refuses a token realm on a private or loopback address (go-containerregistry)
    const stack = yield* startLocalStack({
      dir: options.dir,
      registryAuth: "htpasswd",
      runtime: "crio-1.36",
      kaniko: true
    })
    const baseImage = yield* pushCheckpointBaseImage({ registry: stack.registry, dir: path.join(options.dir, "base") })
    yield* stack.cluster.apiServer.addSecret({
      namespace: checkpointerNamespace,
      name: kanikoSecretName,
      type: "kubernetes.io/dockerconfigjson",
      stringData: { ".dockerconfigjson": yield* fs.readFileString(stack.registry.authFile) }
    })
    const buildContextDir = path.join(options.dir, "build-contexts")
    const kanikoSettings = (builder: "kaniko" | "kaniko-fs") => ({
      CHECKPOINT_BUILDER: builder,
      CHECKPOINT_BASE_IMAGE: baseImage,
      KANIKO_BUILD_CTX_DIR: buildContextDir,
      KANIKO_SECRET_NAME: kanikoSecretName
    })
    return {
      ...stack,
      baseImage,
      buildContextDir,
      silentRegistry,
      kanikoSettings,
      startKanikoCheckpointer: (builder, extra) =>
        stack.startAnotherCheckpointer({ extra: { ...kanikoSettings(builder), ...extra } })
    } satisfies KanikoStack
  })

export class KanikoStackTag extends Context.Tag("test/KanikoStack")<KanikoStackTag, KanikoStack>() {
  static readonly layer = Layer.scoped(
    KanikoStackTag,
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpointer-kaniko-stack-" })
      return yield* startKanikoStack({ dir })
    })
  ).pipe(Layer.provideMerge(NodeContext.layer))
}
