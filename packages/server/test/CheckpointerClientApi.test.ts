import { CheckpointerClient } from "@checkpointer/client"
import { CheckpointResult, ImageBuildError } from "@checkpointer/core"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Fiber, Queue, Ref, TestClock } from "effect"
import { onOwnServer, World } from "./TestLayers.ts"

const container = (pod: string) => ({ namespace: "default", pod, container: "main" })

describe("CheckpointerClient against the API", () => {
  it.effect("checkpoint answers the result; with async it answers an identifier that waitFor resolves", () =>
    Effect.gen(function*() {
      const client = yield* CheckpointerClient.make({})
      const world = yield* World
      const result = yield* client.checkpoint(container("client-sync"))
      expect(result).toBeInstanceOf(CheckpointResult)
      expect(result.containerImageName).toMatch(/^registry\.test\/checkpoints:[0-9a-f]{16}$/)

      const release = yield* Deferred.make<void>()
      yield* Ref.set(world.buildBehaviour, () => Deferred.await(release))
      const accepted = yield* client.checkpoint(container("client-async"), { async: true, deletePod: true })
      expect(accepted.checkpointIdentifier).toMatch(/^node-a:[0-9a-f]{16}$/)
      const waited = yield* Queue.unbounded<Duration.Duration>()
      const waiting = yield* Effect.fork(client.waitFor(accepted.checkpointIdentifier, {
        onWaiting: (elapsed) => Queue.offer(waited, elapsed)
      }))
      const progress = [yield* Queue.take(waited)]
      yield* TestClock.adjust("1 second")
      progress.push(yield* Queue.take(waited))
      yield* Deferred.succeed(release, undefined)
      const later = yield* Fiber.join(waiting)
      expect(later.containerImageName.endsWith(accepted.checkpointIdentifier.split(":")[1]!)).toBe(true)
      expect(yield* Ref.get(world.deletedPods)).toContain("default/client-async")
      expect(progress.length).toBeGreaterThanOrEqual(2)
      expect(Duration.toMillis(progress.at(-1)!)).toBeGreaterThanOrEqual(1000)
      expect(yield* client.result(accepted.checkpointIdentifier)).toEqual(later)
    }).pipe(onOwnServer()))

  it.live("the contract's errors come back typed, with the server's message", () =>
    Effect.gen(function*() {
      const client = yield* CheckpointerClient.make({})
      const world = yield* World
      yield* Ref.set(world.missingContainers, new Set(["ghost"]))
      const missing = yield* Effect.flip(client.checkpoint({ namespace: "default", pod: "client", container: "ghost" }))
      expect(missing._tag).toBe("ContainerNotFound")
      expect(missing.message).toBe("container default/client/ghost not found on node node-a")

      yield* Ref.set(world.buildBehaviour, () => Effect.fail(new ImageBuildError({ step: "push", message: "denied" })))
      const failed = yield* Effect.flip(client.checkpoint(container("client-failing")))
      expect(failed._tag).toBe("CheckpointFailed")
      expect(failed.message).toBe("checkpoint failed in phase \"build/push\": push: denied")

      const unknown = yield* Effect.flip(client.result("node-a:0123456789abcdef"))
      expect(unknown._tag).toBe("CheckpointNotFound")

      const invalid = yield* Effect.flip(client.checkpoint({ namespace: "default", pod: "Not_A_Pod", container: "c" }))
      expect(invalid._tag).toBe("CheckpointerRequestFailed")
      expect(invalid.message).toContain("DNS-1123 subdomain")
    }).pipe(onOwnServer()))
})
