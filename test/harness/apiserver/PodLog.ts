import { Effect } from "effect"
import { respondText } from "../HttpsServer.ts"
import type { ContainerStreams } from "../PodRuntime.ts"
import { tailLines } from "../PodRuntime.ts"
import { keyOf } from "./Resources.ts"
import type { Route } from "./Router.ts"
import { badRequest, notFound } from "./Status.ts"
import type { Store } from "./Store.ts"

/** The `log` subresource of pods: a container's log as text, `tailLines` honoured. */
export const makePodLog = (store: Store, streams: ContainerStreams) => {
  const route: Route = {
    path: "api/v1/namespaces/*/pods/*/log",
    methods: {
      GET: ({ onStreamStarted, params: [namespace, name], response, url }) =>
        Effect.gen(function*() {
          const pod = (yield* store.state).pods.get(keyOf(namespace!, name!))
          if (pod === undefined) return yield* notFound("pods", name!)
          const container = url.searchParams.get("container") ?? pod.spec.containers[0]?.name ?? ""
          if (!pod.spec.containers.some((candidate) => candidate.name === container)) {
            return yield* badRequest(`container ${container} is not valid for pod ${name}`)
          }
          if (pod.status.phase === "Pending") {
            return yield* badRequest(`container "${container}" in pod "${name}" is waiting to start: ContainerCreating`)
          }
          const tail = url.searchParams.get("tailLines")
          const text = tailLines(
            streams.logOf(pod, container),
            tail !== null && /^\d+$/.test(tail) ? Number.parseInt(tail, 10) : undefined
          )
          yield* Effect.sync(() => respondText(response, 200, text))
          yield* onStreamStarted
          return "streamed" as const
        })
    }
  }

  /** A container's log so far; empty for a pod that does not exist. */
  const containerLog = (namespace: string, name: string, container: string) =>
    Effect.map(store.state, (current) => {
      const pod = current.pods.get(keyOf(namespace, name))
      return pod === undefined ? "" : streams.logOf(pod, container)
    })

  return { routes: [route], containerLog } as const
}
