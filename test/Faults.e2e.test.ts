import { FileSystem } from "@effect/platform"
import { expect, layer } from "@effect/vitest"
import { Effect, Exit, Fiber, Schedule, Scope } from "effect"
import { execFileSync } from "node:child_process"
import { expectNoArchiveLeft, podEvents } from "./Expectations.ts"
import type { CheckpointerProcess } from "./harness/CheckpointerProcess.ts"
import { freePort } from "./harness/CheckpointerProcess.ts"
import { startBallastPod, startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import type { LocalStack } from "./harness/LocalStack.ts"
import { checkpointRepository, Stack } from "./harness/LocalStack.ts"
import { startRegistry } from "./harness/Registry.ts"
import { call, getResult, postCheckpoint } from "./HttpCalls.ts"

const StackLive = Stack.layer({ registryAuth: "htpasswd" })

/** The server answers, has no temporary file in its store, and its logs hold no credential of the stack. */
const expectHealthy = (stack: LocalStack, server: CheckpointerProcess) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    expect((yield* call(`${server.url}/healthz`)).text).toBe("ok")
    const stored = yield* fs.readDirectory(server.env.STORAGE_BASE_PATH!).pipe(Effect.orElseSucceed(() => []))
    expect(stored.filter((name) => name.endsWith(".tmp"))).toEqual([])
    yield* expectNoArchiveLeft(stack.node.checkpointsDir)
    for (const secret of [stack.registry.password, stack.cluster.apiServer.token]) {
      expect(server.logs()).not.toContain(secret)
    }
  })

/** An async checkpoint's identifier and, after it ended, the GET answer for it. */
const asyncOutcome = (server: CheckpointerProcess, pod: string) =>
  Effect.gen(function*() {
    const accepted = yield* postCheckpoint(server.url, `default/${pod}/counter`, { async: true })
    expect(accepted.status, accepted.text).toBe(202)
    const { checkpointIdentifier } = JSON.parse(accepted.text)
    return { identifier: checkpointIdentifier as string, result: yield* getResult(server.url, checkpointIdentifier) }
  })

const waitForKubeletCall = (stack: LocalStack, pod: string) =>
  stack.node.requests().pipe(
    Effect.map((requests) => requests.some((request) => request.path.startsWith(`/checkpoint/default/${pod}/`))),
    Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: (seen) => seen }),
    Effect.timeout("30 seconds")
  )

describeE2E("faults: each answers the right status, records the outcome, leaves nothing behind", () => {
  layer(StackLive, { excludeTestServices: true, timeout: "300 seconds" })((it) => {
    it.scoped(
      "the kubelet answering 500, closing the connection, or hanging past its timeout",
      () =>
        Effect.gen(function*() {
          const stack = yield* Stack
          yield* startCounterPod(stack.cluster, { namespace: "default", name: "fault-kubelet", nodeName: "node-a" })
          const server = yield* stack.startAnotherCheckpointer({ extra: { KUBELET_TIMEOUT: "1" } })
          for (const fault of ["500", "close", "hang"] as const) {
            yield* stack.node.setFault(fault)
            const sync = yield* postCheckpoint(server.url, "default/fault-kubelet/counter")
            expect(sync.status, fault).toBe(500)
            expect(sync.text, fault).toMatch(/^checkpoint failed in phase "kubelet": /)
            const { result } = yield* asyncOutcome(server, "fault-kubelet")
            expect(result.status, fault).toBe(500)
            expect(result.text, fault).toMatch(/phase "kubelet"/)
          }
          yield* stack.node.setFault(null)
          const failures = (yield* podEvents(stack.cluster, "default", "fault-kubelet", 6))
            .filter((event) => event.reason === "CheckpointFailed")
          expect(failures).toHaveLength(6)
          for (const event of failures) {
            expect(event.type).toBe("Warning")
            expect(event.message).toMatch(/^checkpoint failed in phase "kubelet": /)
          }
          const recovered = yield* postCheckpoint(server.url, "default/fault-kubelet/counter")
          expect(recovered.status, recovered.text).toBe(201)
          yield* expectHealthy(stack, server)
        }),
      120_000
    )

    it.scoped(
      "the runtime failing to pause the container: asked again twice, then the failure is answered",
      () =>
        Effect.gen(function*() {
          const stack = yield* Stack
          yield* startCounterPod(stack.cluster, { namespace: "default", name: "fault-pause", nodeName: "node-a" })
          const server = yield* stack.startAnotherCheckpointer({})
          const kubeletCalls = stack.node.requests().pipe(
            Effect.map((requests) =>
              requests.filter((request) => request.path === "/checkpoint/default/fault-pause/counter").length
            )
          )
          yield* stack.node.setFault("pause-once")
          const once = yield* postCheckpoint(server.url, "default/fault-pause/counter")
          expect(once.status, once.text).toBe(201)
          expect(yield* kubeletCalls).toBe(2)
          expect(server.logs()).toContain("the runtime could not pause the container")

          yield* stack.node.setFault("pause")
          const always = yield* postCheckpoint(server.url, "default/fault-pause/counter")
          yield* stack.node.setFault(null)
          expect(always.status, always.text).toBe(500)
          expect(always.text).toMatch(/^checkpoint failed in phase "kubelet": kubelet answered 500: .*failed to pause/)
          expect(yield* kubeletCalls).toBe(2 + 3)
          yield* expectHealthy(stack, server)
        }),
      120_000
    )

    it.scoped("the registry down before the push, and killed during it", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const fs = yield* FileSystem.FileSystem
        const dir = yield* fs.makeTempDirectoryScoped({ prefix: "fault-registry-" })
        const registryScope = yield* Scope.make()
        const registry = yield* startRegistry({ dir: `${dir}/registry`, auth: "htpasswd" }).pipe(
          Scope.extend(registryScope)
        )
        yield* fs.copyFile(registry.authFile, `${dir}/auth.json`)
        yield* fs.copyFile(registry.caFile, `${dir}/ca.crt`)
        const server = yield* stack.startAnotherCheckpointer({
          authFile: `${dir}/auth.json`,
          extra: {
            CHECKPOINT_IMAGE_PREFIX: `${registry.host}/${checkpointRepository}`,
            REGISTRY_CA_FILE: `${dir}/ca.crt`
          }
        })
        // A container whose archive takes a while to push (its rootfs holds 300 MiB of random bytes).
        yield* startBallastPod(stack.cluster, {
          namespace: "default",
          name: "fault-ballast",
          nodeName: "node-a",
          bytes: 300 * 1024 * 1024
        })
        const killedDuring = yield* Effect.fork(postCheckpoint(server.url, "default/fault-ballast/main"))
        const uploads = `${dir}/registry/storage/docker/registry/v2/repositories/${checkpointRepository}/_uploads`
        yield* fs.readDirectory(uploads).pipe(
          Effect.orElseSucceed(() => []),
          Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: (entries) => entries.length > 0 }),
          Effect.timeout("60 seconds")
        )
        yield* Scope.close(registryScope, Exit.void)
        const during = yield* Fiber.join(killedDuring)
        expect(during.status, during.text).toBe(500)
        expect(during.text).toMatch(/^checkpoint failed in phase "build\/push": push: /)

        yield* startCounterPod(stack.cluster, { namespace: "default", name: "fault-registry", nodeName: "node-a" })
        const before = yield* postCheckpoint(server.url, "default/fault-registry/counter")
        expect(before.status).toBe(500)
        expect(before.text).toMatch(/^checkpoint failed in phase "build\/push": push: .*(ECONNREFUSED|reach)/)
        const { result } = yield* asyncOutcome(server, "fault-registry")
        expect(result.status).toBe(500)
        expect(result.text).toContain("build/push")
        expect(server.logs()).not.toContain(registry.password)
        yield* expectHealthy(stack, server)
      }), 180_000)

    it.scoped("the API server down when the pod is to be deleted", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const fs = yield* FileSystem.FileSystem
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "fault-api", nodeName: "node-a" })
        const dir = yield* fs.makeTempDirectoryScoped({ prefix: "fault-api-" })
        const kubeconfig = (yield* fs.readFileString(stack.cluster.apiServer.kubeconfigPath)).replace(
          /server: https:\/\/[^\s]+/,
          `server: https://127.0.0.1:${yield* freePort("127.0.0.1")}`
        )
        yield* fs.writeFileString(`${dir}/kubeconfig`, kubeconfig)
        const server = yield* stack.startAnotherCheckpointer({ extra: { KUBECONFIG: `${dir}/kubeconfig` } })
        const response = yield* postCheckpoint(server.url, "default/fault-api/counter", { deletePod: true })
        expect(response.status).toBe(500)
        expect(response.text).toMatch(/^checkpoint failed in phase "delete pod": .*ECONNREFUSED/)
        expect(response.text).not.toContain(stack.cluster.apiServer.token)
        yield* expectHealthy(stack, server)
      }), 120_000)

    it.scoped("the result store's disk full", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const fs = yield* FileSystem.FileSystem
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "fault-disk", nodeName: "node-a" })
        const store = yield* Effect.acquireRelease(
          Effect.gen(function*() {
            const dir = yield* fs.makeTempDirectory({ prefix: "fault-disk-" })
            execFileSync("mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", dir])
            return dir
          }),
          (dir) => Effect.sync(() => execFileSync("umount", [dir])).pipe(Effect.zipRight(fs.remove(dir)), Effect.ignore)
        )
        const server = yield* stack.startAnotherCheckpointer({ extra: { STORAGE_BASE_PATH: store } })
        execFileSync("sh", ["-c", `head -c 200000 /dev/zero > ${store}/filler 2>/dev/null || true`])
        const full = yield* postCheckpoint(server.url, "default/fault-disk/counter")
        expect(full.status).toBe(500)
        expect(full.text).toMatch(/^checkpoint failed in phase "result store": /)
        yield* fs.remove(`${store}/filler`)
        const freed = yield* postCheckpoint(server.url, "default/fault-disk/counter")
        expect(freed.status, freed.text).toBe(201)
        yield* expectHealthy(stack, server)
      }), 120_000)

    it.scoped(
      "the server killed during an async checkpoint and restarted: " +
        "the result says interrupted by restart",
      () =>
        Effect.gen(function*() {
          const stack = yield* Stack
          const fs = yield* FileSystem.FileSystem
          const storage = yield* fs.makeTempDirectoryScoped({ prefix: "fault-restart-" })
          yield* startCounterPod(stack.cluster, { namespace: "default", name: "fault-restart", nodeName: "node-a" })
          const first = yield* stack.startAnotherCheckpointer({ extra: { STORAGE_BASE_PATH: storage } })
          yield* stack.node.setFault("hang")
          const accepted = yield* postCheckpoint(first.url, "default/fault-restart/counter", { async: true })
          expect(accepted.status).toBe(202)
          const { checkpointIdentifier } = JSON.parse(accepted.text)
          yield* waitForKubeletCall(stack, "fault-restart")
          yield* first.kill
          yield* stack.node.setFault(null)
          const second = yield* stack.startAnotherCheckpointer({ extra: { STORAGE_BASE_PATH: storage } })
          const result = yield* getResult(second.url, checkpointIdentifier)
          expect(result.status).toBe(500)
          expect(result.text).toContain("interrupted by restart")
          const record = JSON.parse(yield* fs.readFileString(`${storage}/${checkpointIdentifier}.json`))
          expect(record._tag).toBe("Failed")
          yield* expectHealthy(stack, second)
        }),
      120_000
    )

    it.scoped(
      "SIGTERM: new checkpoints are refused, running ones get the grace period, " +
        "the rest are recorded as interrupted",
      () =>
        Effect.gen(function*() {
          const stack = yield* Stack
          const fs = yield* FileSystem.FileSystem
          const storage = yield* fs.makeTempDirectoryScoped({ prefix: "fault-shutdown-" })
          yield* startCounterPod(stack.cluster, { namespace: "default", name: "fault-shutdown", nodeName: "node-a" })
          const server = yield* stack.startAnotherCheckpointer({
            extra: { STORAGE_BASE_PATH: storage, SHUTDOWN_GRACE_SECONDS: "2" }
          })
          yield* stack.node.setFault("hang")
          const pending = yield* Effect.fork(postCheckpoint(server.url, "default/fault-shutdown/counter"))
          yield* waitForKubeletCall(stack, "fault-shutdown")
          const exit = yield* Effect.fork(server.terminate)
          yield* Effect.sleep("300 millis")
          const refused = yield* postCheckpoint(server.url, "default/fault-shutdown/counter").pipe(
            Effect.map((answer) => answer.status),
            Effect.catchAllDefect(() => Effect.succeed(0))
          )
          expect([503, 0]).toContain(refused)
          const answer = yield* Fiber.join(pending)
          expect(answer.status).toBe(500)
          expect(answer.text).toContain("interrupted by shutdown")
          expect(yield* Fiber.join(exit)).toBe(0)
          yield* stack.node.setFault(null)
          const records = (yield* fs.readDirectory(storage)).filter((name) => name.endsWith(".json"))
          expect(records).toHaveLength(1)
          const record = JSON.parse(yield* fs.readFileString(`${storage}/${records[0]}`))
          expect(record).toMatchObject({ _tag: "Failed" })
          expect(record.message).toContain("interrupted by shutdown")
          yield* expectNoArchiveLeft(stack.node.checkpointsDir)
        }),
      120_000
    )
  })
})
