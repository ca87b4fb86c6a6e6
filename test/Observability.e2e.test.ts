import { FileSystem } from "@effect/platform"
import { expect, layer } from "@effect/vitest"
import { Duration, Effect, Schedule } from "effect"
import { freePort } from "./harness/CheckpointerProcess.ts"
import { startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { Stack } from "./harness/LocalStack.ts"
import { call, postCheckpoint } from "./HttpCalls.ts"

const StackLive = Stack.layer({ registryAuth: "htpasswd" })

/** `name{labels}` -> value, from the Prometheus text of /metrics. */
const scrape = (url: string) =>
  Effect.gen(function*() {
    const answer = yield* call(`${url}/metrics`)
    expect(answer.status).toBe(200)
    expect(answer.contentType).toBe("text/plain; version=0.0.4; charset=utf-8")
    return new Map(
      answer.text.split("\n").filter((line) => line !== "" && !line.startsWith("#")).map((line) => {
        const at = line.lastIndexOf(" ")
        return [line.slice(0, at), Number(line.slice(at + 1))] as const
      })
    )
  })

interface JsonLogLine {
  readonly message: string
  readonly logLevel: string
  readonly timestamp: string
  readonly annotations: Record<string, unknown>
  readonly spans: Record<string, number>
}

describeE2E("operability of the real server: metrics, readiness, production logs", () => {
  layer(StackLive, { excludeTestServices: true, timeout: "180 seconds" })((it) => {
    it.scoped("/metrics counts a real checkpoint, times its phases and the bytes pushed", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "ops-metrics", nodeName: "node-a" })
        const checkpointer = yield* stack.startAnotherCheckpointer({})
        const before = yield* scrape(checkpointer.url)
        expect(before.get("checkpoints_in_flight")).toBe(0)
        expect(before.get("checkpoints_queued")).toBe(0)
        const answer = yield* postCheckpoint(checkpointer.url, "default/ops-metrics/counter", { deletePod: true })
        expect(answer.status, answer.text).toBe(201)
        const missing = yield* postCheckpoint(checkpointer.url, "default/ops-metrics-nothing/counter")
        expect(missing.status).toBe(404)

        const after = yield* scrape(checkpointer.url)
        expect(after.get("checkpoints_total{builder=\"native\",outcome=\"succeeded\"}")).toBe(1)
        expect(after.get("checkpoints_total{builder=\"native\",outcome=\"not_found\"}")).toBe(1)
        for (const phase of ["kubelet", "build/push", "delete pod"]) {
          expect(after.get(`checkpoint_phase_duration_seconds_count{phase="${phase}"}`), phase)
            .toBeGreaterThanOrEqual(1)
          expect(after.get(`checkpoint_phase_duration_seconds_sum{phase="${phase}"}`), phase).toBeGreaterThan(0)
        }
        const manifest = yield* stack.registry.manifest(
          "checkpoints/counter",
          JSON.parse(answer.text).containerImageName.split(":").at(-1)
        )
        const layerSize = manifest.json.layers[0]!.size
        expect(after.get("checkpoint_pushed_bytes_sum{builder=\"native\"}")).toBe(layerSize)
        expect(after.get("checkpoint_pushed_bytes_count{builder=\"native\"}")).toBe(1)
        expect(after.get("checkpoints_in_flight")).toBe(0)
      }))

    it.scoped("/readyz answers ok, and 503 with the reason when the result store cannot be written", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const fs = yield* FileSystem.FileSystem
        expect(yield* call(`${stack.checkpointer.url}/readyz`)).toMatchObject({ status: 200, text: "ok" })
        const storage = `${stack.dir}/ops-readyz-storage`
        const checkpointer = yield* stack.startAnotherCheckpointer({ extra: { STORAGE_BASE_PATH: storage } })
        expect((yield* call(`${checkpointer.url}/readyz`)).status).toBe(200)
        yield* fs.remove(storage, { recursive: true })
        const notReady = yield* call(`${checkpointer.url}/readyz`)
        expect(notReady.status).toBe(503)
        expect(notReady.contentType).toContain("text/plain")
        expect(notReady.text).toMatch(/^result store not writable: cannot write in .*ops-readyz-storage/)
        expect((yield* call(`${checkpointer.url}/healthz`)).status).toBe(200)
        yield* fs.makeDirectory(storage)
        expect((yield* call(`${checkpointer.url}/readyz`)).status).toBe(200)
      }))

    it.scoped("/readyz answers 503 naming the API server when it cannot be reached", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const fs = yield* FileSystem.FileSystem
        const kubeconfig = yield* fs.readFileString(stack.cluster.apiServer.kubeconfigPath)
        const unreachable = `${stack.dir}/ops-unreachable.kubeconfig`
        const closedPort = yield* freePort("127.0.0.1")
        yield* fs.writeFileString(
          unreachable,
          kubeconfig.replace(/server: https:\/\/[^\s]+/, `server: https://127.0.0.1:${closedPort}`)
        )
        const checkpointer = yield* stack.startAnotherCheckpointer({ extra: { KUBECONFIG: unreachable } })
        const notReady = yield* call(`${checkpointer.url}/readyz`)
        expect(notReady.status).toBe(503)
        expect(notReady.text)
          .toMatch(/^API server not reachable: list Checkpointer pods on node node-a: .*\(ECONNREFUSED\)$/)
      }))

    it.scoped("ENVIRONMENT=prod logs JSON lines with identifier, container, phase and durations", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "ops-prodlogs", nodeName: "node-a" })
        const checkpointer = yield* stack.startAnotherCheckpointer({ extra: { ENVIRONMENT: "prod" } })
        const answer = yield* postCheckpoint(checkpointer.url, "default/ops-prodlogs/counter", { async: true })
        expect(answer.status, answer.text).toBe(202)
        const { checkpointIdentifier } = JSON.parse(answer.text)
        expect((yield* call(`${checkpointer.url}/checkpoint?checkpointIdentifier=${checkpointIdentifier}`)).status)
          .toBe(200)

        const lines = yield* Effect.suspend(() => {
          const text = checkpointer.logs()
          return text.includes("checkpoint succeeded") ? Effect.succeed(text) : Effect.fail("not logged yet")
        }).pipe(
          Effect.retry({ schedule: Schedule.spaced("100 millis"), times: 50 }),
          Effect.map((text) => text.split("\n").filter((line) => line.trim() !== ""))
        )
        const entries: Array<JsonLogLine> = lines.map((line) => {
          try {
            return JSON.parse(line)
          } catch {
            throw new Error(`not a JSON log line: ${line}`)
          }
        })
        for (const entry of entries) {
          expect(entry).toMatchObject({
            message: expect.anything(),
            logLevel: expect.any(String),
            timestamp: expect.any(String)
          })
          expect(entry.logLevel).not.toBe("DEBUG")
        }
        const ofThisCheckpoint = entries.filter((entry) => entry.annotations.identifier === checkpointIdentifier)
        for (const entry of ofThisCheckpoint) {
          expect(entry.annotations.container).toBe("default/ops-prodlogs/counter")
          expect(entry.spans.checkpoint).toEqual(expect.any(Number))
        }
        const phases = ofThisCheckpoint.filter((entry) => entry.message === "phase finished")
        expect(phases.map((entry) => entry.annotations.phase)).toEqual(["kubelet", "build/push"])
        for (const entry of phases) expect(entry.annotations.durationSeconds).toBeGreaterThan(0)
        const done = ofThisCheckpoint.find((entry) => entry.message === "checkpoint succeeded")!
        expect(done.annotations).toMatchObject({
          image: expect.any(String),
          digest: expect.any(String),
          bytes: expect.any(Number)
        })
        expect(done.spans.checkpoint).toBeGreaterThanOrEqual(
          Duration.toMillis(Duration.seconds(Number(phases[0]!.annotations.durationSeconds)))
        )
      }))
  })
})
