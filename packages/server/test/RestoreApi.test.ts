import { Namespace, originalLabelsAnnotation, restoredFromLabel } from "@checkpointer/core"
import { describe, expect, it } from "@effect/vitest"
import type { V1Pod } from "@kubernetes/client-node"
import { Effect, Ref } from "effect"
import { call } from "./ServerCalls.ts"
import type { FakeClusterState } from "./TestLayers.ts"
import { onOwnServer, World } from "./TestLayers.ts"

const teamA = Namespace.make("team-a")

/** A pod of a ReplicaSet made by a Deployment, with a literal env value and a second container. */
const web: V1Pod = {
  metadata: {
    name: "web-7d4b9c-x2x9q",
    namespace: "team-a",
    labels: { app: "web", "pod-template-hash": "7d4b9c" },
    ownerReferences: [{ apiVersion: "apps/v1", kind: "ReplicaSet", name: "web-7d4b9c", uid: "u1", controller: true }]
  },
  spec: {
    nodeName: "node-a",
    containers: [
      { name: "main", image: "registry.test/web:1", env: [{ name: "PASSWORD", value: "hunter2" }] },
      { name: "sidecar", image: "registry.test/sidecar:1" }
    ]
  }
}

/** A pod of a bare ReplicaSet: its selector may be the pod's own labels. */
const bare: V1Pod = {
  metadata: {
    name: "bare-abcde",
    namespace: "team-a",
    labels: { app: "bare" },
    ownerReferences: [{ apiVersion: "apps/v1", kind: "ReplicaSet", name: "bare", uid: "u2", controller: true }]
  },
  spec: { nodeName: "node-a", containers: [{ name: "main", image: "registry.test/bare:1" }] }
}

const cluster: FakeClusterState = {
  pods: { "team-a/web-7d4b9c-x2x9q": web, "team-a/bare-abcde": bare, "team-a/taken": web },
  users: {
    "token-alice": {
      username: "alice",
      allow: [
        { verb: "create", resource: "pods", subresource: "checkpoint", namespace: teamA },
        { verb: "get", resource: "pods", subresource: "checkpoint", namespace: teamA },
        { verb: "create", resource: "pods", namespace: teamA }
      ]
    },
    "token-bob": {
      username: "bob",
      allow: [
        { verb: "create", resource: "pods", subresource: "checkpoint", namespace: teamA },
        { verb: "create", resource: "pods", namespace: teamA }
      ]
    }
  }
}

const checkpoint = (pod: string, headers: Record<string, string> = {}) =>
  Effect.gen(function*() {
    const answer = yield* call("POST", `/checkpoint/team-a/${pod}/main`, { body: { async: true }, headers })
    expect(answer.status, answer.text).toBe(202)
    const { checkpointIdentifier } = JSON.parse(answer.text) as { checkpointIdentifier: string }
    const result = yield* call("GET", `/checkpoint?checkpointIdentifier=${checkpointIdentifier}`, { headers })
    expect(result.status, result.text).toBe(200)
    return { identifier: checkpointIdentifier, image: JSON.parse(result.text).containerImageName as string }
  })

const created = (namespace: string, name: string) =>
  Effect.flatMap(World, (world) => Effect.map(Ref.get(world.createdPods), (pods) => pods.get(`${namespace}/${name}`)))

describe("POST /restore", () => {
  it.live("restores the recorded pod from an identifier: checkpoint image, no owner, no controller labels", () =>
    Effect.gen(function*() {
      const { identifier, image } = yield* checkpoint("web-7d4b9c-x2x9q")
      const answer = yield* call("POST", "/restore", { body: { checkpointIdentifier: identifier, node: "node-b" } })
      expect(answer.status, answer.text).toBe(201)
      const result = JSON.parse(answer.text)
      expect(result).toMatchObject({ namespace: "team-a", node: "node-b", image, container: "main" })
      expect(result.pod).toMatch(/^web-7d4b9c-x2x9q-restored-[0-9a-f]{6}$/)
      // The password is not in the image; the live pod gave it back.
      expect(result.omittedEnv).toBeUndefined()
      const pod = (yield* created("team-a", result.pod))!
      expect(pod.metadata?.ownerReferences).toBeUndefined()
      expect(pod.metadata?.labels).toEqual({ app: "web", [restoredFromLabel]: image.split(":").at(-1) })
      expect(pod.spec?.nodeName).toBe("node-b")
      expect(pod.spec?.containers).toEqual([
        {
          name: "main",
          image,
          imagePullPolicy: "IfNotPresent",
          env: [{ name: "PASSWORD", value: "hunter2" }]
        },
        { name: "sidecar", image: "registry.test/sidecar:1" }
      ])
    }).pipe(onOwnServer({ cluster })))

  it.live("from an image name alone, into another namespace and name; a bare ReplicaSet's labels are moved", () =>
    Effect.gen(function*() {
      const { image } = yield* checkpoint("bare-abcde")
      const answer = yield* call("POST", "/restore", { body: { image, namespace: "forensics", pod: "copy" } })
      expect(answer.status, answer.text).toBe(201)
      // Not pinned: the (fake) scheduler put it on node-c.
      expect(JSON.parse(answer.text)).toMatchObject({ namespace: "forensics", pod: "copy", node: "node-c" })
      const pod = (yield* created("forensics", "copy"))!
      expect(pod.metadata?.labels).toEqual({ [restoredFromLabel]: image.split(":").at(-1) })
      expect(pod.metadata?.annotations?.[originalLabelsAnnotation]).toBe(JSON.stringify({ app: "bare" }))
    }).pipe(onOwnServer({ cluster })))

  it.live("async: 202 and an identifier of this node; its result is the restored pod", () =>
    Effect.gen(function*() {
      const { image } = yield* checkpoint("web-7d4b9c-x2x9q")
      const accepted = yield* call("POST", "/restore", { body: { image, pod: "later", async: true } })
      expect(accepted.status, accepted.text).toBe(202)
      const { checkpointIdentifier } = JSON.parse(accepted.text)
      expect(checkpointIdentifier).toMatch(/^node-a:[0-9a-f]{16}$/)
      const result = yield* call("GET", `/checkpoint?checkpointIdentifier=${checkpointIdentifier}`)
      expect(result.status, result.text).toBe(200)
      expect(JSON.parse(result.text)).toMatchObject({ namespace: "team-a", pod: "later", image })
    }).pipe(onOwnServer({ cluster })))

  it.live("400 for neither or both sources and for an image that records no pod; 404 unknown; 409 taken", () =>
    Effect.gen(function*() {
      const { identifier, image } = yield* checkpoint("web-7d4b9c-x2x9q")
      const neither = yield* call("POST", "/restore", { body: { pod: "x" } })
      expect([neither.status, neither.text]).toEqual([
        400,
        "invalid request: exactly one of checkpointIdentifier and image is required"
      ])
      const both = yield* call("POST", "/restore", { body: { image, checkpointIdentifier: identifier } })
      expect(both.status).toBe(400)
      const badName = yield* call("POST", "/restore", { body: { image, pod: "Not_A_Name" } })
      expect(badName.status).toBe(400)
      const missing = yield* call("POST", "/restore", { body: { image: "registry.test/checkpoints:nothing" } })
      expect([missing.status, missing.text]).toEqual([404, "image registry.test/checkpoints:nothing does not exist"])
      const unknown = yield* call("POST", "/restore", { body: { checkpointIdentifier: "node-a:0123456789abcdef" } })
      expect([unknown.status, unknown.text]).toEqual([404, "no checkpoint node-a:0123456789abcdef on node node-a"])
      const taken = yield* call("POST", "/restore", { body: { image, pod: "taken" } })
      expect([taken.status, taken.text]).toEqual([409, "pod team-a/taken already exists"])
      const world = yield* World
      yield* Ref.update(world.builds, (builds) => builds.map((build) => ({ ...build, annotations: {} })))
      const unrecorded = yield* call("POST", "/restore", { body: { image } })
      expect([unrecorded.status, unrecorded.text]).toEqual([400, `${image} does not record its pod`])
    }).pipe(onOwnServer({ cluster })))

  it.live("counts restores by outcome and times their phases in /metrics", () =>
    Effect.gen(function*() {
      const { image } = yield* checkpoint("web-7d4b9c-x2x9q")
      expect((yield* call("POST", "/restore", { body: { image, pod: "counted" } })).status).toBe(201)
      expect((yield* call("POST", "/restore", { body: { image, pod: "counted" } })).status).toBe(409)
      expect((yield* call("POST", "/restore", { body: { image: "registry.test/none:1" } })).status).toBe(404)
      const metrics = (yield* call("GET", "/metrics")).text
      for (const outcome of ["succeeded", "conflict", "not_found"]) {
        expect(metrics).toMatch(new RegExp(`^restores_total\\{outcome="${outcome}"\\} [1-9]`, "m"))
      }
      for (const phase of ["image", "pod creation", "scheduling", "image pull and restore"]) {
        expect(metrics).toMatch(new RegExp(`^restore_phase_duration_seconds_count\\{phase="${phase}"\\} [1-9]`, "m"))
      }
    }).pipe(onOwnServer({ cluster })))

  it.live("AUTH_MODE=kubernetes: create pods in the target namespace, and get pods/checkpoint for an identifier", () =>
    Effect.gen(function*() {
      const alice = { authorization: "Bearer token-alice" }
      const bob = { authorization: "Bearer token-bob" }
      const { identifier, image } = yield* checkpoint("web-7d4b9c-x2x9q", alice)
      const elsewhere = yield* call("POST", "/restore", { body: { image, namespace: "team-b" }, headers: alice })
      expect([elsewhere.status, elsewhere.text]).toEqual([403, "alice may not create pods in namespace team-b"])
      const byIdentifier = yield* call("POST", "/restore", { body: { checkpointIdentifier: identifier }, headers: bob })
      expect([byIdentifier.status, byIdentifier.text]).toEqual([
        403,
        "bob may not get pods/checkpoint in namespace team-a"
      ])
      expect(yield* Effect.map(World, (world) => Ref.get(world.createdPods)).pipe(Effect.flatten)).toEqual(new Map())
      const byImage = yield* call("POST", "/restore", { body: { image }, headers: bob })
      expect(byImage.status, byImage.text).toBe(201)
    }).pipe(onOwnServer({ cluster, environment: { AUTH_MODE: "kubernetes" } })))
})
