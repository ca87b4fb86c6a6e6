import { Data, Effect, Option } from "effect"
import { routingConfig } from "../config/Config.ts"
import { parseIdentifier } from "../domain/Domain.ts"
import type { CheckpointIdentifier, ContainerRef } from "../domain/Domain.ts"
import { Cluster } from "../kubernetes/Cluster.ts"

/** Serve the request here, or pass it on unchanged to the Checkpointer at `url` on `node`. */
export type Route =
  | { readonly _tag: "Local" }
  | { readonly _tag: "Forward"; readonly node: string; readonly url: string }

/** The pod does not exist or is not scheduled, or no Checkpointer runs on the node where it (or a result) is. */
export class RouteTargetMissing extends Data.TaggedError("RouteTargetMissing")<{ readonly message: string }> {}

/** The request belongs to another node but was already forwarded once. */
export class AlreadyForwarded extends Data.TaggedError("AlreadyForwarded")<{ readonly message: string }> {}

/** The API server could not be asked where the pod runs. */
export class RoutingLookupFailed extends Data.TaggedError("RoutingLookupFailed")<{
  readonly message: string
  readonly cause: unknown
}> {}

/** Why a request can be neither served here nor forwarded. */
export type RoutingFailed = RouteTargetMissing | AlreadyForwarded | RoutingLookupFailed

const lookupFailed = (error: { readonly message: string }) =>
  new RoutingLookupFailed({ message: `routing failed: ${error.message}`, cause: error })

const local: Route = { _tag: "Local" }

/**
 * Decides where a request is served: the kubelet only checkpoints containers of its own node, and asynchronous
 * results live on the node that made them. A request that was already forwarded is never forwarded again.
 */
export class NodeRouter extends Effect.Service<NodeRouter>()("checkpointer/NodeRouter", {
  effect: Effect.gen(function*() {
    const config = yield* routingConfig
    const cluster = yield* Cluster

    const toNode = Effect.fn("NodeRouter.toNode")(function*(node: string, what: string, forwarded: boolean) {
      if (node === config.node) return local
      if (forwarded) {
        return yield* new AlreadyForwarded({
          message: `${what} is on node ${node}, not on ${config.node}, and this request was already forwarded once`
        })
      }
      const pods = yield* cluster.checkpointerPodsOn(node).pipe(Effect.mapError(lookupFailed))
      const peer = pods[0]?.status?.podIP
      if (peer === undefined) {
        return yield* new RouteTargetMissing({
          message: `no Checkpointer is running on node ${node}, where ${what} is`
        })
      }
      const host = peer.includes(":") ? `[${peer}]` : peer
      // With TLS on, a request (and the caller's token) only ever goes to a peer over HTTPS.
      const scheme = Option.isSome(config.tls) ? "https" : "http"
      return { _tag: "Forward", node, url: `${scheme}://${host}:${config.port}` } satisfies Route
    })

    /** POST /checkpoint/...: the node the pod runs on. */
    const forCheckpoint = Effect.fn("NodeRouter.forCheckpoint")(function*(container: ContainerRef, forwarded: boolean) {
      if (config.disableRouteForward) return local
      const pod = yield* cluster.getPod(container.namespace, container.pod).pipe(Effect.mapError(lookupFailed))
      if (Option.isNone(pod)) {
        return yield* new RouteTargetMissing({
          message: `pod ${container.namespace}/${container.pod} does not exist`
        })
      }
      const node = pod.value.spec?.nodeName
      if (node === undefined || node === "") {
        return yield* new RouteTargetMissing({
          message: `pod ${container.namespace}/${container.pod} is not scheduled to a node`
        })
      }
      return yield* toNode(node, `pod ${container.namespace}/${container.pod}`, forwarded)
    })

    /** GET /checkpoint?checkpointIdentifier=<node>:<hex>: the node named in the identifier. */
    const forResult = Effect.fn("NodeRouter.forResult")(
      function*(identifier: CheckpointIdentifier, forwarded: boolean) {
        if (config.disableRouteForward) return local
        return yield* toNode(parseIdentifier(identifier).node, `checkpoint ${identifier}`, forwarded)
      }
    )

    return { forCheckpoint, forResult } as const
  })
}) {}
