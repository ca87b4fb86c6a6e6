import {
  Checkpointer,
  checkpointerConfig,
  checkpointerLayer,
  describeConfigError,
  ImageBuilder,
  ImageBuildError,
  ResultStore
} from "@checkpointer/core"
import type { CheckpointIdentifier } from "@checkpointer/core"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Exit, Layer, Ref } from "effect"

const settings = {
  CHECKPOINT_IMAGE_PREFIX: "registry.example/checkpoints/app",
  CHECKPOINTER_NODE: "worker-1",
  CHECKPOINTER_NODE_IP: "127.0.0.1",
  KUBECONFIG: "/dev/null"
}

/** A builder that records whether it was built, and fails every build. */
const recordingBuilder = (built: Ref.Ref<boolean>) =>
  Layer.effect(
    ImageBuilder,
    Effect.as(Ref.set(built, true), {
      name: "test",
      build: () => Effect.fail(new ImageBuildError({ step: "push", message: "no registry in this test" }))
    })
  )

const serverStartupProblems = (config: Record<string, string>) =>
  checkpointerConfig.pipe(
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(config)))),
    Effect.flip,
    Effect.map(describeConfigError)
  )

describe("checkpointerLayer", () => {
  it.effect("fails with the server's startup messages, before building the builder, when settings are wrong", () =>
    Effect.gen(function*() {
      const built = yield* Ref.make(false)
      const config = { CHECKPOINTER_NODE: "Not_A_Node", KUBELET_PORT: "x", CHECKPOINT_BUILDER: "docker" }
      const exit = yield* Layer.build(checkpointerLayer({ imageBuilder: recordingBuilder(built), config })).pipe(
        Effect.scoped,
        Effect.provide(NodeContext.layer),
        Effect.exit
      )
      const problems = yield* serverStartupProblems(config)
      expect(problems).toContain("CHECKPOINT_IMAGE_PREFIX is required but not set")
      expect(problems.some((line) => line.startsWith("KUBELET_PORT: "))).toBe(true)
      expect(problems.some((line) => line.startsWith("CHECKPOINT_BUILDER: "))).toBe(true)
      expect(exit).toStrictEqual(
        Exit.fail(expect.objectContaining({
          _tag: "InvalidConfiguration",
          problems,
          message: `invalid configuration:\n  ${problems.join("\n  ")}`
        }))
      )
      expect(yield* Ref.get(built)).toBe(false)
    }))

  it.effect("runs in-process from a settings object, with the builder and result store given", () =>
    Effect.gen(function*() {
      const built = yield* Ref.make(false)
      const identifier = "worker-1:0123456789abcdef" as CheckpointIdentifier
      const answer = yield* Effect.gen(function*() {
        const checkpointer = yield* Checkpointer
        return yield* Effect.flip(checkpointer.result(identifier))
      }).pipe(
        Effect.provide(checkpointerLayer({
          imageBuilder: recordingBuilder(built),
          resultStore: ResultStore.Memory,
          config: settings
        })),
        Effect.provide(NodeContext.layer)
      )
      expect(answer._tag).toBe("CheckpointUnknown")
      expect(yield* Ref.get(built)).toBe(true)
    }))
})
