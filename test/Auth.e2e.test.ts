import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import type { MultiNodeStack } from "./harness/LocalStack.ts"
import { startMultiNodeStack } from "./harness/LocalStack.ts"
import { call } from "./HttpCalls.ts"

class Nodes extends Context.Tag("test/AuthNodes")<Nodes, MultiNodeStack>() {}

const tokens = { alice: "token-alice-7f3a9c", bob: "token-bob-51d2e8", kubelet: "kubelet-sa-token-c0ffee" }

/** Two nodes whose Checkpointers check callers with TokenReview and SubjectAccessReview. */
const NodesLive = Layer.scoped(
  Nodes,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpointer-auth-" })
    const stack = yield* startMultiNodeStack({ dir, nodes: ["node-a", "node-b"], extra: { AUTH_MODE: "kubernetes" } })
    const api = stack.cluster.apiServer
    yield* api.addUser({
      token: tokens.alice,
      username: "alice",
      allow: [
        { verb: "create", resource: "pods", subresource: "checkpoint", namespace: "team-a" },
        { verb: "get", resource: "pods", subresource: "checkpoint", namespace: "team-a" },
        { verb: "delete", resource: "pods", namespace: "team-a" }
      ]
    })
    yield* api.addUser({
      token: tokens.bob,
      username: "bob",
      allow: [{ verb: "create", resource: "pods", subresource: "checkpoint", namespace: "team-a" }]
    })
    return stack
  })
).pipe(Layer.provideMerge(NodeContext.layer))

const checkpointAs = (url: string, pod: string, token: string | undefined, body?: unknown) =>
  call(`${url}/checkpoint/team-a/${pod}/counter`, {
    method: "POST",
    headers: {
      ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
      ...(body === undefined ? {} : { "content-type": "application/json" })
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })

const tokenReviews = (stack: MultiNodeStack) =>
  stack.cluster.apiServer.requests().pipe(
    Effect.map((requests) => requests.filter((request) => request.path.endsWith("/tokenreviews")).length)
  )

describeE2E("caller authentication (AUTH_MODE=kubernetes) and kubelet access by token", () => {
  layer(NodesLive, { excludeTestServices: true, timeout: "180 seconds" })((it) => {
    it.scoped(
      "no token or an unknown one answers 401; " +
        "an allowed caller's request is forwarded and checked again",
      () =>
        Effect.gen(function*() {
          const stack = yield* Nodes
          yield* startCounterPod(stack.cluster, { namespace: "team-a", name: "auth-pod", nodeName: "node-b" })
          const a = stack.checkpointer("node-a").url
          const anonymous = yield* checkpointAs(a, "auth-pod", undefined)
          expect(anonymous.status).toBe(401)
          expect(anonymous.text).toBe("a bearer token is required")
          const unknown = yield* checkpointAs(a, "auth-pod", "token-nobody")
          expect(unknown.status).toBe(401)
          const reviewsBefore = yield* tokenReviews(stack)
          const allowed = yield* checkpointAs(a, "auth-pod", tokens.bob)
          expect(allowed.status, allowed.text).toBe(201)
          // node-a checked the caller before forwarding, node-b checked the same token again.
          expect((yield* tokenReviews(stack)) - reviewsBefore).toBe(2)
        })
    )

    it.scoped("a caller allowed to checkpoint but not to delete pods gets 403 for deletePod=true", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        yield* startCounterPod(stack.cluster, { namespace: "team-a", name: "auth-keep", nodeName: "node-a" })
        const denied = yield* checkpointAs(stack.checkpointer("node-a").url, "auth-keep", tokens.bob, {
          deletePod: true
        })
        expect(denied.status).toBe(403)
        expect(denied.text).toBe("bob may not delete pods in namespace team-a")
        const elsewhere = yield* call(`${stack.checkpointer("node-a").url}/checkpoint/team-b/auth-keep/counter`, {
          method: "POST",
          headers: { authorization: `Bearer ${tokens.bob}` }
        })
        expect(elsewhere.status).toBe(403)
        expect(elsewhere.text).toBe("bob may not create pods/checkpoint in namespace team-b")
      }))

    it.scoped("results need get on pods/checkpoint in the checkpointed pod's namespace", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        yield* startCounterPod(stack.cluster, { namespace: "team-a", name: "auth-async", nodeName: "node-b" })
        const accepted = yield* checkpointAs(stack.checkpointer("node-a").url, "auth-async", tokens.alice, {
          async: true
        })
        expect(accepted.status, accepted.text).toBe(202)
        const { checkpointIdentifier } = JSON.parse(accepted.text)
        const result = (token: string) =>
          call(`${stack.checkpointer("node-a").url}/checkpoint?checkpointIdentifier=${checkpointIdentifier}`, {
            headers: { authorization: `Bearer ${token}` }
          })
        const bob = yield* result(tokens.bob)
        expect(bob.status).toBe(403)
        expect(bob.text).toBe("bob may not get pods/checkpoint in namespace team-a")
        const alice = yield* result(tokens.alice)
        expect(alice.status, alice.text).toBe(200)
      }))

    it.scoped("KUBELET_AUTH=token reaches the kubelet with the service-account token instead of a certificate", () =>
      Effect.gen(function*() {
        const stack = yield* Nodes
        const fs = yield* FileSystem.FileSystem
        const dir = yield* fs.makeTempDirectoryScoped({ prefix: "kubelet-token-" })
        yield* fs.writeFileString(`${dir}/token`, `${tokens.kubelet}\n`)
        yield* stack.cluster.node("node-a").allowToken(tokens.kubelet)
        yield* startCounterPod(stack.cluster, { namespace: "team-a", name: "auth-token", nodeName: "node-a" })
        const server = yield* stack.startCheckpointerOn("node-a", {
          port: stack.port + 1,
          extra: {
            KUBELET_AUTH: "token",
            KUBELET_TOKEN_FILE: `${dir}/token`,
            KUBELET_CERT_FILE: `${dir}/missing.crt`,
            KUBELET_KEY_FILE: `${dir}/missing.key`,
            DISABLE_ROUTE_FORWARD: "true"
          }
        })
        const done = yield* checkpointAs(server.url, "auth-token", tokens.alice)
        expect(done.status, done.text).toBe(201)
        const kubeletCall = (yield* stack.cluster.node("node-a").requests()).filter((request) =>
          request.path === "/checkpoint/team-a/auth-token/counter"
        ).at(-1)!
        expect(kubeletCall).toMatchObject({ status: 200, clientCommonName: undefined })
        yield* fs.writeFileString(`${dir}/token`, "revoked-token")
        const refused = yield* checkpointAs(server.url, "auth-token", tokens.alice)
        expect(refused.status).toBe(500)
        expect(refused.text).toBe("checkpoint failed in phase \"kubelet\": kubelet answered 401: Unauthorized")
        for (const logs of [server.logs(), stack.checkpointer("node-a").logs(), stack.checkpointer("node-b").logs()]) {
          for (const token of [...Object.values(tokens), stack.cluster.apiServer.token]) {
            expect(logs).not.toContain(token)
          }
        }
      }))
  })
})
