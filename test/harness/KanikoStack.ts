import { FileSystem, Path } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { Context, Effect, Layer } from "effect"
import type { KanikoAgent } from "./KanikoAgent.ts"
import { pushCheckpointBaseImage, startKanikoAgent } from "./KanikoAgent.ts"
import type { LocalStack } from "./LocalStack.ts"
import { startLocalStack } from "./LocalStack.ts"

export const kanikoSecretName = "kaniko-secret"
export const checkpointerNamespace = "kube-system"

export interface KanikoStack extends LocalStack {
  readonly agent: KanikoAgent
  /** `REGISTRY/checkpoint-base:1.0.0`, pushed at startup. */
  readonly baseImage: string
  /** KANIKO_BUILD_CTX_DIR of the Checkpointers started with `startKanikoCheckpointer`. */
  readonly buildContextDir: string
  /** A Checkpointer with the given Kaniko builder (and extra settings), against this stack. */
  readonly startKanikoCheckpointer: (
    builder: "kaniko" | "kaniko-fs",
    extra?: Readonly<Record<string, string>>
  ) => ReturnType<LocalStack["startAnotherCheckpointer"]>
}

/**
 * The local stack plus what the Kaniko strategies need: the checkpoint base image in the registry, the registry
 * credentials as the dockerconfigjson Secret KANIKO_SECRET_NAME in Checkpointer's namespace, and the node agent that
 * runs Kaniko pods with buildah.
 */
export const startKanikoStack = (options: { readonly dir: string }) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const stack = yield* startLocalStack({ dir: options.dir, registryAuth: "token" })
    const baseImage = yield* pushCheckpointBaseImage({ registry: stack.registry, dir: path.join(options.dir, "base") })
    yield* stack.cluster.apiServer.addSecret({
      namespace: checkpointerNamespace,
      name: kanikoSecretName,
      type: "kubernetes.io/dockerconfigjson",
      stringData: { ".dockerconfigjson": yield* fs.readFileString(stack.registry.authFile) }
    })
    const agent = yield* startKanikoAgent({
      apiServer: stack.cluster.apiServer,
      registry: stack.registry,
      dir: path.join(options.dir, "kaniko-agent")
    })
    const buildContextDir = path.join(options.dir, "build-contexts")
    return {
      ...stack,
      agent,
      baseImage,
      buildContextDir,
      startKanikoCheckpointer: (builder, extra) =>
        stack.startAnotherCheckpointer({
          extra: {
            CHECKPOINT_BUILDER: builder,
            CHECKPOINT_BASE_IMAGE: baseImage,
            KANIKO_BUILD_CTX_DIR: buildContextDir,
            KANIKO_SECRET_NAME: kanikoSecretName,
            ...extra
          }
        })
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
