import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { expectNoArchiveLeft, expectRestoredCounterContinues } from "./Expectations.ts"
import { startCounterPod } from "./harness/Cluster.ts"
import type { RuntimeKind } from "./harness/CriRuntime.ts"
import { describeE2E } from "./harness/E2E.ts"
import { Stack } from "./harness/LocalStack.ts"
import { postCheckpoint } from "./HttpCalls.ts"

/** The native builder's image restores on every runtime users run (CRI-O 1.36 is covered by the other suites). */
const runtimes: ReadonlyArray<{ readonly kind: RuntimeKind; readonly version: RegExp }> = [
  { kind: "crio-1.33", version: /^cri-o 1\.33\.\d+$/ },
  { kind: "containerd", version: /^containerd 2\.1\.\d+/ }
]

for (const runtime of runtimes) {
  describeE2E(`checkpoint and restore on ${runtime.kind}`, () => {
    layer(Stack.layer({ registryAuth: "htpasswd", runtime: runtime.kind }), {
      excludeTestServices: true,
      timeout: "180 seconds"
    })((it) => {
      it.scoped("the counter is checkpointed through the API and the runtime restores the pushed image", () =>
        Effect.gen(function*() {
          const stack = yield* Stack
          expect(stack.cluster.runtime.version).toMatch(runtime.version)
          const { container } = yield* startCounterPod(stack.cluster, {
            namespace: "default",
            name: "counter",
            nodeName: "node-a"
          })
          const before = yield* container.waitAbove(10)
          const response = yield* postCheckpoint(stack.checkpointer.url, "default/counter/counter")
          expect(response.status, response.text).toBe(201)
          const image = JSON.parse(response.text).containerImageName as string
          yield* expectNoArchiveLeft(stack.node.checkpointsDir)
          const restored = yield* expectRestoredCounterContinues(stack, image, "counter-restored", before)
          yield* Effect.log(
            `${stack.cluster.runtime.version}: counter ${before} at checkpoint, restored at ${restored.first}, ` +
              `then ${restored.later}`
          )
        }))
    })
  })
}
