import { expect, layer } from "@effect/vitest"
import { Effect, Option } from "effect"
import {
  byCheckpointer,
  expectNoArchiveLeft,
  expectRestoredCounterContinues,
  podEvents,
  tagOf
} from "./Expectations.ts"
import { startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { checkpointRepository, Stack } from "./harness/LocalStack.ts"
import { call, getResult, postCheckpoint } from "./HttpCalls.ts"

const StackLive = Stack.layer({ registryAuth: "token" })

describeE2E("checkpoint to restore through the real server, registry, CRIU node and API server", () => {
  layer(StackLive, { excludeTestServices: true, timeout: "180 seconds" })((it) => {
    it.scoped("a sync checkpoint pushes a restorable image with the checkpoint annotations", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const { container } = yield* startCounterPod(stack.cluster, {
          namespace: "default",
          name: "counter-sync",
          nodeName: "node-a"
        })
        const before = yield* container.waitAbove(10)
        const response = yield* postCheckpoint(stack.checkpointer.url, "default/counter-sync/counter")
        expect(response.status, response.text).toBe(201)
        const body = JSON.parse(response.text)
        expect(body.containerIdentifier).toEqual({ namespace: "default", pod: "counter-sync", container: "counter" })
        expect(body.containerImageName).toMatch(
          new RegExp(`^${stack.registry.host.replace(/\./g, "\\.")}/${checkpointRepository}:[0-9a-f]{16}$`)
        )

        const manifest = yield* stack.registry.manifest(checkpointRepository, tagOf(body.containerImageName))
        expect(manifest.contentType).toBe("application/vnd.oci.image.manifest.v1+json")
        expect(manifest.digest).toBe(body.containerImageDigest)
        expect(manifest.json.annotations).toMatchObject({
          "io.kubernetes.cri-o.annotations.checkpoint.name": "counter",
          "org.criu.checkpoint.container.name": "counter",
          "io.podman.annotations.checkpoint.name": "counter",
          "io.podman.annotations.checkpoint.runtime.name": "runc"
        })
        expect(manifest.json.layers).toHaveLength(1)
        const layer = manifest.json.layers[0]!
        expect(layer.mediaType).toBe("application/vnd.oci.image.layer.v1.tar")
        const config = JSON.parse(
          new TextDecoder().decode(yield* stack.registry.blob(checkpointRepository, manifest.json.config.digest))
        )
        const streamed = yield* stack.registry.blobDigest(checkpointRepository, layer.digest)
        expect(streamed.digest).toBe(layer.digest)
        expect(config.rootfs.diff_ids).toEqual([layer.digest])
        expect(config.os).toBe("linux")

        const events = (yield* podEvents(stack.cluster, "default", "counter-sync")).filter(byCheckpointer)
        expect(events.map((event) => [event.type, event.reason])).toEqual([["Normal", "Checkpointed"]])
        const image = body.containerImageName.replace(/\./g, "\\.")
        expect(events[0]!.message).toMatch(new RegExp(`^Checkpointed container counter into ${image} in \\d+\\.\\d s$`))
        const pod = yield* stack.cluster.apiServer.findPod("default", "counter-sync")
        expect(events[0]!.involvedObject).toMatchObject({
          kind: "Pod",
          name: "counter-sync",
          uid: Option.getOrThrow(pod).metadata.uid,
          fieldPath: "spec.containers{counter}"
        })
        expect(events[0]!.source).toEqual({ component: "checkpointer", host: "node-a" })

        yield* expectNoArchiveLeft(stack.node.checkpointsDir)
        const restored = yield* expectRestoredCounterContinues(stack, body.containerImageName, "restored-sync", before)
        yield* Effect.log(`counter before checkpoint ${before}, restored at ${restored.first}, then ${restored.later}`)
      }))

    it.scoped("an async checkpoint answers an identifier and GET returns the restorable image", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const { container } = yield* startCounterPod(stack.cluster, {
          namespace: "default",
          name: "counter-async",
          nodeName: "node-a"
        })
        const before = yield* container.waitAbove(10)
        const accepted = yield* postCheckpoint(stack.checkpointer.url, "default/counter-async/counter", { async: true })
        expect(accepted.status, accepted.text).toBe(202)
        const { checkpointIdentifier } = JSON.parse(accepted.text)
        expect(checkpointIdentifier).toMatch(/^node-a:[0-9a-f]{16}$/)
        const result = yield* getResult(stack.checkpointer.url, checkpointIdentifier)
        expect(result.status, result.text).toBe(200)
        const body = JSON.parse(result.text)
        expect(tagOf(body.containerImageName)).toBe(checkpointIdentifier.split(":")[1])
        const again = yield* getResult(stack.checkpointer.url, checkpointIdentifier)
        expect(JSON.parse(again.text)).toEqual(body)
        yield* expectNoArchiveLeft(stack.node.checkpointsDir)
        yield* expectRestoredCounterContinues(stack, body.containerImageName, "restored-async", before)
      }))

    it.scoped("deletePod=true deletes the pod, and its image still restores", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const { container } = yield* startCounterPod(stack.cluster, {
          namespace: "default",
          name: "counter-delete",
          nodeName: "node-a"
        })
        const before = yield* container.waitAbove(10)
        const response = yield* postCheckpoint(stack.checkpointer.url, "default/counter-delete/counter", {
          deletePod: true
        })
        expect(response.status, response.text).toBe(201)
        expect(Option.isNone(yield* stack.cluster.apiServer.findPod("default", "counter-delete"))).toBe(true)
        expect(yield* stack.cluster.agent.containerId("default", "counter-delete", "counter")).toBeUndefined()
        const running = yield* stack.cluster.runtime.crictl([
          "ps",
          "--quiet",
          "--label",
          "io.kubernetes.pod.name=counter-delete"
        ])
        expect(running).toBe("")
        const image = JSON.parse(response.text).containerImageName
        yield* expectRestoredCounterContinues(stack, image, "restored-delete", before)
      }))

    it.scoped("an unknown container answers 404 and an unknown identifier 404", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const missing = yield* postCheckpoint(stack.checkpointer.url, "default/no-such-pod/counter")
        expect(missing.status, missing.text).toBe(404)
        expect(missing.contentType).toContain("text/plain")
        expect(missing.text).toContain("default/no-such-pod/counter")
        const unknown = yield* getResult(stack.checkpointer.url, "node-a:0123456789abcdef")
        expect(unknown.status).toBe(404)
        yield* expectNoArchiveLeft(stack.node.checkpointsDir)
      }))

    it.scoped("the kubelet is called with the client certificate and ?timeout=, and its certificate is verified", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "counter-tls", nodeName: "node-a" })
        const untrusting = yield* stack.startAnotherCheckpointer({ without: ["KUBELET_CA_FILE"] })
        const refused = yield* postCheckpoint(untrusting.url, "default/counter-tls/counter")
        expect(refused.status).toBe(500)
        expect(refused.text).toMatch(/^checkpoint failed in phase "kubelet": .*certificate/)
        const insecure = yield* stack.startAnotherCheckpointer({
          without: ["KUBELET_CA_FILE"],
          extra: { KUBELET_ALLOW_INSECURE: "true", KUBELET_TIMEOUT: "45" }
        })
        const accepted = yield* postCheckpoint(insecure.url, "default/counter-tls/counter")
        expect(accepted.status, accepted.text).toBe(201)
        const requests = yield* stack.node.requests()
        const last = requests.filter((request) => request.path === "/checkpoint/default/counter-tls/counter").at(-1)!
        expect(last.query).toBe("timeout=45")
        expect(last.clientCommonName).toMatch(/checkpointer/)
        yield* expectNoArchiveLeft(stack.node.checkpointsDir)
      }))

    it.scoped("the server describes its API at /openapi.json and /docs, and answers /healthz and /readyz", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const spec = yield* call(`${stack.checkpointer.url}/openapi.json`)
        expect(spec.status).toBe(200)
        const paths = JSON.parse(spec.text).paths
        expect(Object.keys(paths)).toEqual(
          expect.arrayContaining(["/checkpoint/{namespace}/{pod}/{container}", "/checkpoint"])
        )
        expect(Object.keys(paths["/checkpoint/{namespace}/{pod}/{container}"].post.responses)).toEqual(
          expect.arrayContaining(["201", "202", "400", "404", "500"])
        )
        const docs = yield* call(`${stack.checkpointer.url}/docs`)
        expect(docs.contentType).toContain("text/html")
        expect(docs.text).toContain("POST /checkpoint/{namespace}/{pod}/{container}")
        expect((yield* call(`${stack.checkpointer.url}/healthz`)).text).toBe("ok")
        expect((yield* call(`${stack.checkpointer.url}/readyz`)).text).toBe("ok")
        expect(stack.checkpointer.logs())
          .toContain("AUTH_MODE=none: any caller that reaches this service may checkpoint")
      }))

    it.scoped("malformed input answers 400 in plain text", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const url = stack.checkpointer.url
        const answers = [
          yield* Effect.promise(() =>
            fetch(`${url}/checkpoint/default/counter/c`, { method: "POST", body: "{not json" }).then((r) => r.status)
          ),
          (yield* postCheckpoint(url, "default/counter/c", { deletePod: "yes" })).status,
          (yield* postCheckpoint(url, "default/counter/c", { async: 1 })).status,
          (yield* postCheckpoint(url, "Default/counter/c")).status,
          (yield* postCheckpoint(url, `default/${"p".repeat(254)}/c`)).status,
          (yield* getResult(url, "node-a:not-hex")).status,
          (yield* getResult(url, "no-colon")).status
        ]
        expect(answers).toEqual([400, 400, 400, 400, 400, 400, 400])
      }))

    it.scoped("refused registry credentials answer 500 naming the push, without the password anywhere", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "counter-creds", nodeName: "node-a" })
        const badCheckpointer = yield* stack.startAnotherCheckpointer({ authFile: stack.registry.wrongAuthFile })
        const response = yield* postCheckpoint(badCheckpointer.url, "default/counter-creds/counter")
        expect(response.status).toBe(500)
        expect(response.text).toContain("phase \"build/push\"")
        expect(response.text).toMatch(/401|credentials|unauthorized/i)
        for (const secret of [stack.registry.wrongPassword, stack.registry.password]) {
          expect(response.text).not.toContain(secret)
          for (const logs of [badCheckpointer.logs(), stack.checkpointer.logs()]) {
            expect(logs).not.toContain(secret)
            expect(logs).not.toContain(Buffer.from(`${stack.registry.username}:${secret}`).toString("base64"))
          }
        }
        yield* expectNoArchiveLeft(stack.node.checkpointsDir)
      }))
  })
})
