import { describe, expect, it } from "@effect/vitest"
import type { V1Pod } from "@kubernetes/client-node"
import { Effect, Ref } from "effect"
import { forwardedHeader } from "../src/http/RequestGate.ts"
import { call, startPeer } from "./ServerCalls.ts"
import type { FakeClusterState } from "./TestLayers.ts"
import { onOwnServer, World } from "./TestLayers.ts"

const podOn = (nodeName?: string): V1Pod => ({
  spec: { containers: [], ...(nodeName === undefined ? {} : { nodeName }) }
})

/** The cluster as every node sees it: Checkpointers run on node-a and node-b (node-d has none). */
const cluster: FakeClusterState = {
  pods: {
    "default/here": podOn("node-a"),
    "default/there": podOn("node-b"),
    "default/orphan": podOn("node-d"),
    "default/unscheduled": podOn()
  },
  checkpointers: { "node-a": "127.0.0.1", "node-b": "127.0.0.1" }
}

/** Node A with forwarding on; its peers are reached on `port`. */
const nodeA = (port: number, view: FakeClusterState = cluster) =>
  onOwnServer({ environment: { DISABLE_ROUTE_FORWARD: "false", CHECKPOINTER_PORT: String(port) }, cluster: view })

const nodeB = (view: FakeClusterState = cluster) =>
  startPeer({ environment: { CHECKPOINTER_NODE: "node-b", DISABLE_ROUTE_FORWARD: "false" }, cluster: view })

const kubeletPods = (world: World) =>
  Effect.map(Ref.get(world.kubeletCalls), (calls) => calls.map((call) => String(call)))

describe("routing between nodes", () => {
  it.live("a pod of this node is served here, also when the request was forwarded to it", () =>
    Effect.gen(function*() {
      const world = yield* World
      expect((yield* call("POST", "/checkpoint/default/here/main")).status).toBe(201)
      const forwarded = yield* call("POST", "/checkpoint/default/here/main", {
        headers: { [forwardedHeader]: "node-b" }
      })
      expect(forwarded.status).toBe(201)
      expect(yield* kubeletPods(world)).toEqual(["default/here/main", "default/here/main"])
    }).pipe(nodeA(1)))

  it.live("a pod that does not exist, is not scheduled or has no Checkpointer on its node answers 404", () =>
    Effect.gen(function*() {
      const answers = yield* Effect.forEach(
        ["nobody", "unscheduled", "orphan"],
        (pod) => call("POST", `/checkpoint/default/${pod}/main`)
      )
      expect(answers.map(({ status, text }) => [status, text])).toEqual([
        [404, "pod default/nobody does not exist"],
        [404, "pod default/unscheduled is not scheduled to a node"],
        [404, "no Checkpointer is running on node node-d, where pod default/orphan is"]
      ])
      const result = yield* call("GET", "/checkpoint?checkpointIdentifier=node-d:0123456789abcdef")
      expect([result.status, result.text]).toEqual([
        404,
        "no Checkpointer is running on node node-d, where checkpoint node-d:0123456789abcdef is"
      ])
      expect(yield* kubeletPods(yield* World)).toEqual([])
    }).pipe(nodeA(1)))

  it.live("an API server that cannot be asked where the pod is answers 500", () =>
    Effect.gen(function*() {
      const answer = yield* call("POST", "/checkpoint/default/there/main")
      expect([answer.status, answer.text]).toEqual([500, "routing failed: get pod: connect ECONNREFUSED"])
    }).pipe(nodeA(1, { ...cluster, unreachable: true })))

  it.live("a request for another node that was already forwarded answers 421 and is not forwarded again", () =>
    Effect.gen(function*() {
      const headers = { [forwardedHeader]: "node-c" }
      const checkpoint = yield* call("POST", "/checkpoint/default/there/main", { headers })
      expect([checkpoint.status, checkpoint.text]).toEqual([
        421,
        "pod default/there is on node node-b, not on node-a, and this request was already forwarded once"
      ])
      const result = yield* call("GET", "/checkpoint?checkpointIdentifier=node-b:0123456789abcdef", { headers })
      expect(result.status).toBe(421)
      expect(result.text).toContain("checkpoint node-b:0123456789abcdef is on node node-b")
    }).pipe(nodeA(1)))

  it.live("a peer that does not answer gives 502 naming its node and address", () =>
    Effect.gen(function*() {
      const answer = yield* call("POST", "/checkpoint/default/there/main")
      expect(answer.status).toBe(502)
      expect(answer.text).toMatch(/^the Checkpointer on node node-b \(http:\/\/127\.0\.0\.1:1\) did not answer: /)
    }).pipe(nodeA(1)))

  it.live("a request for a pod of another node is served by that node's Checkpointer, its answer passed back", () =>
    Effect.gen(function*() {
      const peer = yield* nodeB()
      yield* Effect.gen(function*() {
        const world = yield* World
        const sync = yield* call("POST", "/checkpoint/default/there/main", { body: { deletePod: true } })
        expect(sync.status, sync.text).toBe(201)
        expect(JSON.parse(sync.text).containerIdentifier).toEqual(
          { namespace: "default", pod: "there", container: "main" }
        )
        const accepted = yield* call("POST", "/checkpoint/default/there/main", { body: { async: true } })
        expect(accepted.status).toBe(202)
        const { checkpointIdentifier } = JSON.parse(accepted.text)
        expect(checkpointIdentifier).toMatch(/^node-b:[0-9a-f]{16}$/)
        const result = yield* call("GET", `/checkpoint?checkpointIdentifier=${checkpointIdentifier}`)
        expect(result.status, result.text).toBe(200)
        const unknown = yield* call("GET", "/checkpoint?checkpointIdentifier=node-b:0123456789abcdef")
        expect([unknown.status, unknown.text]).toEqual([404, "no checkpoint node-b:0123456789abcdef on node node-b"])
        expect(yield* kubeletPods(world)).toEqual([])
        expect(yield* kubeletPods(peer.world)).toEqual(["default/there/main", "default/there/main"])
        expect(yield* Ref.get(peer.world.deletedPods)).toEqual(["default/there"])
      }).pipe(nodeA(peer.port))
    }).pipe(Effect.scoped))

  it.live("a peer whose view of the pod sends it back answers 421: a request crosses at most one hop", () =>
    Effect.gen(function*() {
      const peer = yield* nodeB({ ...cluster, pods: { ...cluster.pods, "default/there": podOn("node-a") } })
      yield* Effect.gen(function*() {
        const answer = yield* call("POST", "/checkpoint/default/there/main")
        expect([answer.status, answer.text]).toEqual([
          421,
          "pod default/there is on node node-a, not on node-b, and this request was already forwarded once"
        ])
        expect(yield* kubeletPods(yield* World)).toEqual([])
        expect(yield* kubeletPods(peer.world)).toEqual([])
      }).pipe(nodeA(peer.port))
    }).pipe(Effect.scoped))
})
