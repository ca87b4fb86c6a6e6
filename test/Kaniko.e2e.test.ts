import { parsePodRecord, podRecordAnnotation } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { expect, layer } from "@effect/vitest"
import { Duration, Effect, Either, Fiber, Schedule } from "effect"
import { randomBytes } from "node:crypto"
import { expectNoArchiveLeft, expectRestoredCounterContinues, tagOf } from "./Expectations.ts"
import { startBallastPod, startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import type { KanikoStack } from "./harness/KanikoStack.ts"
import { KanikoStackTag } from "./harness/KanikoStack.ts"
import { checkpointRepository } from "./harness/LocalStack.ts"
import { checkpointBaseAnnotations } from "./harness/Workloads.ts"
import { postCheckpoint } from "./HttpCalls.ts"

/** Pod names unique to this run. */
const run = randomBytes(3).toString("hex")
const podName = (name: string) => `kaniko-${run}-${name}`

const pinnedKaniko = "ghcr.io/osscontainertools/kaniko:v1.28.3"

const kanikoPods = (stack: KanikoStack) =>
  Effect.map(
    stack.cluster.apiServer.pods(),
    (pods) => pods.filter((pod) => pod.metadata.labels?.["app.kubernetes.io/name"] === "checkpointer-kaniko")
  )

/** Kaniko pods are deleted gracefully (the runtime stops the executor within 10 s): bounded wait until none is left. */
const expectNoKanikoPodLeft = (stack: KanikoStack) =>
  kanikoPods(stack).pipe(
    Effect.filterOrFail((pods) => pods.length === 0, (pods) =>
      pods.map((pod) =>
        `${pod.metadata.name} (${pod.status.phase}, ${
          pod.metadata.deletionTimestamp === undefined ? "not deleted" : `deleted at ${pod.metadata.deletionTimestamp}`
        })`
      ).join(", ")),
    Effect.retry({ schedule: Schedule.spaced(Duration.millis(100)), times: 300 }),
    Effect.catchAll((left) =>
      Effect.sync(() =>
        expect.fail(`Kaniko pods left: ${left}`)
      )
    )
  )

const expectNoBuildContextLeft = (stack: KanikoStack) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const left = yield* fs.readDirectory(stack.buildContextDir).pipe(Effect.orElseSucceed(() => []))
    expect(left).toEqual([])
  })

/** `checkpoint failed in phase "build/push": <step>: Kaniko pod kube-system/checkpointer-kaniko-xxxxx<rest>` */
const failedIn = (step: string, rest: RegExp) =>
  new RegExp(
    `^checkpoint failed in phase "build/push": ${step}: Kaniko pod kube-system/checkpointer-kaniko-\\w+${rest.source}`
  )

const expectNoCredentials = (stack: KanikoStack, ...texts: ReadonlyArray<string>) => {
  const { password, username } = stack.registry
  for (const text of texts) {
    expect(text).not.toContain(password)
    expect(text).not.toContain(Buffer.from(`${username}:${password}`).toString("base64"))
  }
}

const expectCleanedUp = (stack: KanikoStack) =>
  Effect.gen(function*() {
    yield* expectNoKanikoPodLeft(stack)
    yield* expectNoBuildContextLeft(stack)
    yield* expectNoArchiveLeft(stack.node.checkpointsDir)
  })

describeE2E("Kaniko strategies through the real server, registry, CRIU node and API server", () => {
  layer(KanikoStackTag.layer, { excludeTestServices: true, timeout: "240 seconds" })((it) => {
    for (const builder of ["kaniko", "kaniko-fs"] as const) {
      it.scoped(`${builder}: the image restores and its counter continues`, () =>
        Effect.gen(function*() {
          const stack = yield* KanikoStackTag
          // kaniko-fs names KANIKO_IMAGE explicitly: the pinned fork, the only kind of image the Kaniko builders
          // accept.
          const image = pinnedKaniko
          const checkpointer = yield* stack.startKanikoCheckpointer(
            builder,
            builder === "kaniko" ? {} : { KANIKO_IMAGE: pinnedKaniko }
          )
          const name = podName(builder)
          const { container } = yield* startCounterPod(stack.cluster, {
            namespace: "default",
            name,
            nodeName: "node-a"
          })
          const before = yield* container.waitAbove(10)
          const response = yield* postCheckpoint(checkpointer.url, `default/${name}/counter`)
          expect(response.status, `${response.text}\n${checkpointer.logs()}`).toBe(201)
          const body = JSON.parse(response.text)
          const manifest = yield* stack.registry.manifest(checkpointRepository, tagOf(body.containerImageName))
          expect(manifest.contentType).toBe("application/vnd.oci.image.manifest.v1+json")
          expect(manifest.digest).toBe(body.containerImageDigest)
          expect(manifest.json.annotations).toMatchObject({
            "io.kubernetes.cri-o.annotations.checkpoint.name": "counter",
            "org.criu.checkpoint.container.name": "counter",
            "io.podman.annotations.checkpoint.name": "counter",
            "io.podman.annotations.checkpoint.runtime.name": "runc"
          })
          // The pod record travels through the executor's --annotation intact (JSON with commas and '=').
          const record = parsePodRecord(String(manifest.json.annotations?.[podRecordAnnotation]))
          expect(Either.getOrThrow(record)).toMatchObject({
            container: "counter",
            metadata: { name, namespace: "default" }
          })
          expect(manifest.json.annotations?.["org.opencontainers.image.title"]).not.toBe(
            checkpointBaseAnnotations["org.opencontainers.image.title"]
          )
          const ran = (yield* stack.cluster.agent.runs()).find((entry) =>
            entry.args.includes(`--destination=${body.containerImageName}`)
          )
          expect(ran?.exitCode).toBe(0)
          expect(ran?.image).toBe(image)
          expect(ran?.args).toContain(builder === "kaniko" ? "--context=tar://stdin" : "--context=dir:///workspace")
          expect(ran?.args).toContain("--image-format=oci")
          expect(ran?.nodeName).toBe("node-a")
          yield* expectCleanedUp(stack)
          const restored = yield* expectRestoredCounterContinues(
            stack,
            body.containerImageName,
            `${name}-restored`,
            before
          )
          yield* Effect.log(`${builder}: counter ${before} when checkpointed, restored at ${restored.first}`)
        }))
    }

    it.scoped("a Kaniko container that exits non-zero answers 500 naming the build, with its last log lines", () =>
      Effect.gen(function*() {
        const stack = yield* KanikoStackTag
        const checkpointer = yield* stack.startKanikoCheckpointer("kaniko", {
          CHECKPOINT_BASE_IMAGE: `${stack.registry.host}/checkpoint-base:missing`
        })
        const name = podName("exit")
        yield* startCounterPod(stack.cluster, { namespace: "default", name, nodeName: "node-a" })
        const response = yield* postCheckpoint(checkpointer.url, `default/${name}/counter`)
        expect(response.status).toBe(500)
        expect(response.text).toMatch(failedIn(
          "build",
          / failed: it is Failed \(exit code 1: Error\); last log lines of the Kaniko container:\n/
        ))
        expect(response.text).toContain("checkpoint-base:missing")
        expect(response.text).toContain("error building image")
        expectNoCredentials(stack, response.text, checkpointer.logs())
        yield* expectCleanedUp(stack)
      }))

    it.scoped("kaniko: a pod that is never scheduled answers 500 naming scheduling after KANIKO_TIMEOUT", () =>
      Effect.gen(function*() {
        const stack = yield* KanikoStackTag
        // As a kubelet does, the node agent cannot mount a missing Secret: the pod stays in ContainerCreating.
        const checkpointer = yield* stack.startKanikoCheckpointer("kaniko", {
          KANIKO_TIMEOUT: "2",
          KANIKO_SECRET_NAME: "no-such-secret"
        })
        const name = podName("pending")
        yield* startCounterPod(stack.cluster, { namespace: "default", name, nodeName: "node-a" })
        const response = yield* postCheckpoint(checkpointer.url, `default/${name}/counter`)
        expect(response.status).toBe(500)
        expect(response.text).toMatch(
          failedIn("scheduling", / was not running within 2s: it is Pending \(ContainerCreating\)$/)
        )
        yield* expectCleanedUp(stack)
      }))

    it.scoped("kaniko-fs: a build that never finishes answers 500 after twice KANIKO_TIMEOUT", () =>
      Effect.gen(function*() {
        const stack = yield* KanikoStackTag
        // The destination registry accepts connections and never answers: the executor waits on it.
        const checkpointer = yield* stack.startKanikoCheckpointer("kaniko-fs", {
          KANIKO_TIMEOUT: "1",
          CHECKPOINT_IMAGE_PREFIX: `${yield* stack.silentRegistry}/checkpoints/counter`
        })
        const name = podName("hang")
        yield* startCounterPod(stack.cluster, { namespace: "default", name, nodeName: "node-a" })
        const response = yield* postCheckpoint(checkpointer.url, `default/${name}/counter`)
        expect(response.status).toBe(500)
        expect(response.text).toMatch(failedIn("build", / did not finish within 12s: it is Running; last log lines/))
        yield* expectCleanedUp(stack)
      }))

    it.scoped("refused registry credentials fail the executor's push: 500 naming the build, no password anywhere", () =>
      Effect.gen(function*() {
        const stack = yield* KanikoStackTag
        const fs = yield* FileSystem.FileSystem
        yield* Effect.ignore(stack.cluster.apiServer.addSecret({
          namespace: "kube-system",
          name: "kaniko-secret-wrong",
          type: "kubernetes.io/dockerconfigjson",
          stringData: { ".dockerconfigjson": yield* fs.readFileString(stack.registry.wrongAuthFile) }
        }))
        const checkpointer = yield* stack.startKanikoCheckpointer("kaniko-fs", {
          KANIKO_SECRET_NAME: "kaniko-secret-wrong"
        })
        const name = podName("creds")
        yield* startCounterPod(stack.cluster, { namespace: "default", name, nodeName: "node-a" })
        const response = yield* postCheckpoint(checkpointer.url, `default/${name}/counter`)
        expect(response.status).toBe(500)
        expect(response.text).toMatch(failedIn("build", / failed: it is Failed \(exit code 1: Error\)/))
        expect(response.text).toMatch(/UNAUTHORIZED|unauthorized|authentication required/)
        expectNoCredentials(stack, response.text, checkpointer.logs())
        expect(response.text).not.toContain(stack.registry.wrongPassword)
        yield* expectCleanedUp(stack)
      }))

    it.scoped("an executor killed during its build answers 500 naming the build with its exit code", () =>
      Effect.gen(function*() {
        const stack = yield* KanikoStackTag
        const checkpointer = yield* stack.startKanikoCheckpointer("kaniko-fs", {
          CHECKPOINT_IMAGE_PREFIX: `${yield* stack.silentRegistry}/checkpoints/counter`,
          KANIKO_TIMEOUT: "60"
        })
        const name = podName("killed")
        yield* startCounterPod(stack.cluster, { namespace: "default", name, nodeName: "node-a" })
        const answer = yield* Effect.fork(postCheckpoint(checkpointer.url, `default/${name}/counter`))
        const running = yield* kanikoPods(stack).pipe(
          Effect.filterOrFail((pods) => pods.some((pod) => pod.status.phase === "Running")),
          Effect.retry({ schedule: Schedule.spaced(Duration.millis(100)), times: 300 })
        )
        const pod = running.find((candidate) => candidate.status.phase === "Running")!
        const id = yield* stack.cluster.agent.containerId("kube-system", pod.metadata.name, "kaniko")
        yield* stack.cluster.runtime.crictl(["stop", "--timeout", "0", id!])
        const response = yield* Fiber.join(answer)
        expect(response.status).toBe(500)
        // crictl stop with no grace: the Go executor dies of the signal (exit code 2 as measured here)
        expect(response.text).toMatch(
          failedIn("build", / failed: it is Failed \(exit code [1-9]\d*: Error\); last log lines/)
        )
        yield* expectCleanedUp(stack)
      }))

    it.scoped("an executor killed for memory answers 500 naming the build: OOMKilled", () =>
      Effect.gen(function*() {
        const stack = yield* KanikoStackTag
        const { agent } = stack.cluster
        yield* Effect.acquireRelease(
          agent.squeezeMemoryLimits(24 * 1024 * 1024),
          () => agent.squeezeMemoryLimits(undefined)
        )
        const checkpointer = yield* stack.startKanikoCheckpointer("kaniko-fs")
        const name = podName("oom")
        const bytes = 64 * 1024 * 1024
        yield* startBallastPod(stack.cluster, { namespace: "default", name, nodeName: "node-a", bytes })
        const response = yield* postCheckpoint(checkpointer.url, `default/${name}/main`)
        expect(response.status).toBe(500)
        expect(response.text).toMatch(failedIn("build", / failed: it is Failed \(exit code 137: OOMKilled\)/))
        yield* expectCleanedUp(stack)
      }))

    it.scoped("a refused pod creation answers 500 naming pod creation", () =>
      Effect.gen(function*() {
        const stack = yield* KanikoStackTag
        const apiServer = stack.cluster.apiServer
        const forbidden = "pods is forbidden: User \"system:serviceaccount:kube-system:checkpointer\" cannot create " +
          "resource \"pods\" in API group \"\" in the namespace \"kube-system\""
        yield* Effect.acquireRelease(
          apiServer.setCreateFault({ code: 403, reason: "Forbidden", message: forbidden }),
          () => apiServer.setCreateFault(null)
        )
        const checkpointer = yield* stack.startKanikoCheckpointer("kaniko-fs")
        const name = podName("refused")
        yield* startCounterPod(stack.cluster, { namespace: "default", name, nodeName: "node-a" })
        const response = yield* postCheckpoint(checkpointer.url, `default/${name}/counter`)
        expect(response.status).toBe(500)
        expect(response.text).toBe(
          "checkpoint failed in phase \"build/push\": pod creation: cannot create the Kaniko pod: " +
            `create pod kube-system/checkpointer-kaniko-*: 403 ${forbidden}`
        )
        yield* expectCleanedUp(stack)
      }))

    it.scoped("a Checkpointer stopped during a build deletes the Kaniko pod and the archive", () =>
      Effect.gen(function*() {
        const stack = yield* KanikoStackTag
        const prefix = `${yield* stack.silentRegistry}/checkpoints/counter`
        const name = podName("stopped")
        yield* startCounterPod(stack.cluster, { namespace: "default", name, nodeName: "node-a" })
        yield* Effect.scoped(Effect.gen(function*() {
          const checkpointer = yield* stack.startKanikoCheckpointer("kaniko", {
            KANIKO_TIMEOUT: "120",
            SHUTDOWN_GRACE_SECONDS: "0",
            CHECKPOINT_IMAGE_PREFIX: prefix
          })
          const accepted = yield* postCheckpoint(checkpointer.url, `default/${name}/counter`, { async: true })
          expect(accepted.status).toBe(202)
          yield* kanikoPods(stack).pipe(
            Effect.filterOrFail((pods) => pods.some((pod) => pod.status.phase === "Running")),
            Effect.retry({ schedule: Schedule.spaced(Duration.millis(100)), times: 300 })
          )
        }))
        yield* expectCleanedUp(stack)
      }))
  })
})
