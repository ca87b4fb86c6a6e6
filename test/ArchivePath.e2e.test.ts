import { FileSystem } from "@effect/platform"
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { expectNoArchiveLeft } from "./Expectations.ts"
import { startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { Stack } from "./harness/LocalStack.ts"
import { postCheckpoint } from "./HttpCalls.ts"

const StackLive = Stack.layer({ registryAuth: "htpasswd" })

describeE2E("the kubelet's answer is not trusted with the filesystem (KUBELET_CHECKPOINT_DIR)", () => {
  layer(StackLive, { excludeTestServices: true, timeout: "180 seconds" })((it) => {
    it.scoped(
      "a path outside, a symbolic link or '..' fails in phase kubelet naming it; " +
        "nothing is pushed or deleted",
      () =>
        Effect.gen(function*() {
          const stack = yield* Stack
          const fs = yield* FileSystem.FileSystem
          const dir = stack.node.checkpointsDir
          yield* startCounterPod(stack.cluster, { namespace: "default", name: "liar", nodeName: "node-a" })
          const outside = yield* fs.makeTempDirectoryScoped({ prefix: "outside-" })
          const secret = `${outside}/secret.tar`
          yield* fs.writeFileString(secret, "the node's secret, not an archive")
          yield* fs.symlink(secret, `${dir}/checkpoint-link.tar`)
          const before = yield* stack.node.requests()
          for (const path of [secret, `${dir}/checkpoint-link.tar`, `${dir}/..${secret}`, "/etc/hostname"]) {
            yield* stack.node.setArchiveAnswer(path)
            const answer = yield* postCheckpoint(stack.checkpointer.url, "default/liar/counter")
            expect(answer.status, path).toBe(500)
            expect(answer.text, path).toMatch(/^checkpoint failed in phase "kubelet": refused the archive path/)
            expect(answer.text, path).toContain(JSON.stringify(path))
          }
          yield* stack.node.setArchiveAnswer(null)
          expect((yield* stack.node.requests()).length - before.length).toBe(4)
          expect(yield* fs.readFileString(secret)).toBe("the node's secret, not an archive")
          expect(yield* fs.readLink(`${dir}/checkpoint-link.tar`)).toBe(secret)
          expect(stack.checkpointer.logs()).not.toContain("the node's secret")
          yield* fs.remove(`${dir}/checkpoint-link.tar`)

          const honest = yield* postCheckpoint(stack.checkpointer.url, "default/liar/counter")
          expect(honest.status, honest.text).toBe(201)
          yield* expectNoArchiveLeft(dir)
        })
    )
  })
})
