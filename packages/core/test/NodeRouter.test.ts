import { Cluster, ContainerRef, KubernetesApiError, NodeRouter } from "@checkpointer/core"
import type { CheckpointIdentifier } from "@checkpointer/core"
import { describe, expect, it } from "@effect/vitest"
import type { V1Pod } from "@kubernetes/client-node"
import { ConfigProvider, Effect, Layer, Option } from "effect"

const pods: Record<string, V1Pod> = {
  "default/here": { spec: { nodeName: "node-a", containers: [] } },
  "default/there": { spec: { nodeName: "node-c", containers: [] } },
  "default/orphan": { spec: { nodeName: "node-d", containers: [] } }
}
const checkpointers: Record<string, Array<V1Pod>> = {
  "node-c": [{ status: { phase: "Running", podIP: "10.1.2.3" } }]
}

const router = (variables: Readonly<Record<string, string>>) =>
  NodeRouter.Default.pipe(
    Layer.provide(Layer.succeed(
      Cluster,
      Cluster.make({
        reviewToken: () => Effect.dieMessage("no token review here"),
        reviewAccess: () => Effect.dieMessage("no access review here"),
        recordPodEvent: () => Effect.dieMessage("no event here"),
        getPod: (namespace, name) =>
          name === "broken"
            ? Effect.fail(new KubernetesApiError({ status: undefined, message: "get pod: connect ECONNREFUSED" }))
            : Effect.succeed(Option.fromNullable(pods[`${namespace}/${name}`])),
        deletePod: () => Effect.void,
        createPod: () => Effect.dieMessage("no pod creation here"),
        podEvents: () => Effect.dieMessage("no events here"),
        checkpointerPodsOn: (node) => Effect.succeed(checkpointers[node] ?? [])
      })
    )),
    Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
      new Map(Object.entries({
        CHECKPOINTER_NODE: "node-a",
        CHECKPOINTER_PORT: "3333",
        ...variables
      }))
    )))
  )

const ref = (pod: string) => ContainerRef.make({ namespace: "default", pod, container: "c" } as never)
const decide = (pod: string, forwarded = false) =>
  Effect.flatMap(NodeRouter, (r) => r.forCheckpoint(ref(pod), forwarded))

describe("NodeRouter", () => {
  it.effect("serves pods of this node here and forwards others to that node's Checkpointer", () =>
    Effect.gen(function*() {
      expect(yield* decide("here")).toEqual({ _tag: "Local" })
      expect(yield* decide("there")).toEqual({ _tag: "Forward", node: "node-c", url: "http://10.1.2.3:3333" })
      const result = yield* Effect.flatMap(
        NodeRouter,
        (r) => r.forResult("node-c:0123456789abcdef" as CheckpointIdentifier, false)
      )
      expect(result).toEqual({ _tag: "Forward", node: "node-c", url: "http://10.1.2.3:3333" })
    }).pipe(Effect.provide(router({}))))

  it.effect("with TLS on (CHECKPOINTER_TLS_CERT_FILE/KEY_FILE), forwards over HTTPS only", () =>
    Effect.gen(function*() {
      expect(yield* decide("there")).toEqual({ _tag: "Forward", node: "node-c", url: "https://10.1.2.3:3333" })
    }).pipe(Effect.provide(router({
      CHECKPOINTER_TLS_CERT_FILE: "/tls/tls.crt",
      CHECKPOINTER_TLS_KEY_FILE: "/tls/tls.key"
    }))))

  it.effect("fails with the reason where it can neither serve nor forward (the server answers 404, 421, 500)", () =>
    Effect.gen(function*() {
      expect((yield* Effect.flip(decide("nobody")))._tag).toBe("RouteTargetMissing")
      expect((yield* Effect.flip(decide("orphan"))).message).toBe(
        "no Checkpointer is running on node node-d, where pod default/orphan is"
      )
      expect((yield* Effect.flip(decide("there", true)))._tag).toBe("AlreadyForwarded")
      expect(yield* decide("here", true)).toEqual({ _tag: "Local" })
      const broken = yield* Effect.flip(decide("broken"))
      expect(broken._tag).toBe("RoutingLookupFailed")
      expect(broken.message).toContain("ECONNREFUSED")
    }).pipe(Effect.provide(router({}))))

  it.effect("with DISABLE_ROUTE_FORWARD serves everything here", () =>
    Effect.gen(function*() {
      expect(yield* decide("there")).toEqual({ _tag: "Local" })
      expect(yield* decide("nobody")).toEqual({ _tag: "Local" })
    }).pipe(Effect.provide(router({ DISABLE_ROUTE_FORWARD: "true" }))))
})
