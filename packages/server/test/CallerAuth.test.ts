import { Namespace } from "@checkpointer/core"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Ref } from "effect"
import { call, startPeer } from "./ServerCalls.ts"
import type { FakeClusterState } from "./TestLayers.ts"
import { onOwnServer, World } from "./TestLayers.ts"

const teamA = Namespace.make("team-a")

const tokens = { alice: "token-alice", bob: "token-bob" }

/** TokenReview knows alice and bob; SubjectAccessReview allows them this much. */
const cluster: FakeClusterState = {
  pods: { "team-a/remote": { spec: { nodeName: "node-b", containers: [] } } },
  checkpointers: { "node-b": "127.0.0.1" },
  users: {
    [tokens.alice]: {
      username: "alice",
      allow: [
        { verb: "create", resource: "pods", subresource: "checkpoint", namespace: teamA },
        { verb: "get", resource: "pods", subresource: "checkpoint", namespace: teamA },
        { verb: "delete", resource: "pods", namespace: teamA }
      ]
    },
    [tokens.bob]: {
      username: "bob",
      allow: [{ verb: "create", resource: "pods", subresource: "checkpoint", namespace: teamA }]
    }
  }
}

const checking = { AUTH_MODE: "kubernetes" } as const

const as = (token: string) => ({ authorization: `Bearer ${token}` })

describe("caller authentication (AUTH_MODE=kubernetes)", () => {
  it.live("no token or an unknown one answers 401 with a bearer challenge; health needs none", () =>
    Effect.gen(function*() {
      const anonymous = yield* call("POST", "/checkpoint/team-a/p/main")
      expect([anonymous.status, anonymous.text]).toEqual([401, "a bearer token is required"])
      expect(anonymous.headers["www-authenticate"]).toBe("Bearer")
      const unknown = yield* call("POST", "/checkpoint/team-a/p/main", { headers: as("token-nobody") })
      expect([unknown.status, unknown.text]).toEqual([401, "the bearer token is not valid"])
      const result = yield* call("GET", "/checkpoint?checkpointIdentifier=node-a:0123456789abcdef")
      expect(result.status).toBe(401)
      expect((yield* call("GET", "/healthz")).status).toBe(200)
      expect(yield* Ref.get((yield* World).kubeletCalls)).toEqual([])
    }).pipe(onOwnServer({ environment: checking, cluster })))

  it.live("a caller gets 403 for what a SubjectAccessReview denies: deletePod, another namespace", () =>
    Effect.gen(function*() {
      const deleting = yield* call("POST", "/checkpoint/team-a/p/main", {
        headers: as(tokens.bob),
        body: { deletePod: true }
      })
      expect([deleting.status, deleting.text]).toEqual([403, "bob may not delete pods in namespace team-a"])
      const elsewhere = yield* call("POST", "/checkpoint/team-b/p/main", { headers: as(tokens.bob) })
      expect([elsewhere.status, elsewhere.text]).toEqual([
        403,
        "bob may not create pods/checkpoint in namespace team-b"
      ])
      expect(yield* Ref.get((yield* World).kubeletCalls)).toEqual([])
      const allowed = yield* call("POST", "/checkpoint/team-a/p/main", { headers: as(tokens.bob) })
      expect(allowed.status, allowed.text).toBe(201)
      const alice = yield* call("POST", "/checkpoint/team-a/q/main", {
        headers: as(tokens.alice),
        body: { deletePod: true }
      })
      expect(alice.status, alice.text).toBe(201)
    }).pipe(onOwnServer({ environment: checking, cluster })))

  it.live("a result needs get on pods/checkpoint in the checkpointed pod's namespace, or everywhere if unknown", () =>
    Effect.gen(function*() {
      const accepted = yield* call("POST", "/checkpoint/team-a/p/main", {
        headers: as(tokens.alice),
        body: { async: true }
      })
      const { checkpointIdentifier } = JSON.parse(accepted.text)
      const path = `/checkpoint?checkpointIdentifier=${checkpointIdentifier}`
      const bob = yield* call("GET", path, { headers: as(tokens.bob) })
      expect([bob.status, bob.text]).toEqual([403, "bob may not get pods/checkpoint in namespace team-a"])
      const alice = yield* call("GET", path, { headers: as(tokens.alice) })
      expect(alice.status, alice.text).toBe(200)
      const unknown = yield* call("GET", "/checkpoint?checkpointIdentifier=node-a:0123456789abcdef", {
        headers: as(tokens.alice)
      })
      expect([unknown.status, unknown.text]).toEqual([403, "alice may not get pods/checkpoint in all namespaces"])
    }).pipe(onOwnServer({ environment: checking, cluster })))

  it.live("an API server that cannot be asked refuses the request with 500", () =>
    Effect.gen(function*() {
      const answer = yield* call("POST", "/checkpoint/team-a/p/main", { headers: as(tokens.alice) })
      expect([answer.status, answer.text]).toEqual([500, "cannot check the caller: token review: connect ECONNREFUSED"])
      expect(yield* Ref.get((yield* World).kubeletCalls)).toEqual([])
    }).pipe(onOwnServer({ environment: checking, cluster: { ...cluster, unreachable: true } })))

  it.live("a forwarded request carries the caller's token and is checked again by the peer", () =>
    Effect.gen(function*() {
      const peer = yield* startPeer({
        environment: { ...checking, CHECKPOINTER_NODE: "node-b", DISABLE_ROUTE_FORWARD: "false" },
        cluster
      })
      yield* Effect.gen(function*() {
        const denied = yield* call("POST", "/checkpoint/team-a/remote/main", {
          headers: as(tokens.bob),
          body: { deletePod: true }
        })
        expect(denied.status).toBe(403)
        expect(yield* Ref.get(peer.world.tokenReviews)).toEqual([])
        const allowed = yield* call("POST", "/checkpoint/team-a/remote/main", { headers: as(tokens.bob) })
        expect(allowed.status, allowed.text).toBe(201)
        expect(yield* Ref.get((yield* World).tokenReviews)).toEqual([tokens.bob, tokens.bob])
        expect(yield* Ref.get(peer.world.tokenReviews)).toEqual([tokens.bob])
        expect(yield* Ref.get(peer.world.kubeletCalls)).toHaveLength(1)
      }).pipe(
        onOwnServer({
          environment: { ...checking, DISABLE_ROUTE_FORWARD: "false", CHECKPOINTER_PORT: String(peer.port) },
          cluster
        })
      )
    }).pipe(Effect.scoped))
})
