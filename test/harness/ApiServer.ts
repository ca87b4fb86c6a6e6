import type { CommandExecutor } from "@effect/platform"
import { FileSystem, Path } from "@effect/platform"
import type { PlatformError } from "@effect/platform/Error"
import { Data, Effect } from "effect"
import type { Option, Scope } from "effect"
import { randomBytes } from "node:crypto"
import type { IncomingMessage, ServerResponse } from "node:http"
import { makeEvents } from "./apiserver/Events.ts"
import { makeFaults } from "./apiserver/Faults.ts"
import { kubeconfigYaml } from "./apiserver/Kubeconfig.ts"
import type { NodeInput } from "./apiserver/Nodes.ts"
import { makeNodes } from "./apiserver/Nodes.ts"
import { makePodAttach } from "./apiserver/PodAttach.ts"
import { makePodLog } from "./apiserver/PodLog.ts"
import type { AddPodOptions } from "./apiserver/Pods.ts"
import { makePods } from "./apiserver/Pods.ts"
import type { ApiRequest } from "./apiserver/RequestLog.ts"
import { describeRequest, makeRequestLog } from "./apiserver/RequestLog.ts"
import type { KubernetesEvent, Node, Pod, PodEvent, PodStatus, Secret } from "./apiserver/Resources.ts"
import type { ApiUser } from "./apiserver/Reviews.ts"
import { makeReviews } from "./apiserver/Reviews.ts"
import type { Reply, Route } from "./apiserver/Router.ts"
import { makeRouter, pathSegments, reply } from "./apiserver/Router.ts"
import { makeSecrets } from "./apiserver/Secrets.ts"
import type { SecretInput } from "./apiserver/Secrets.ts"
import type { ApiFailure } from "./apiserver/Status.ts"
import { statusBody } from "./apiserver/Status.ts"
import { makeStore } from "./apiserver/Store.ts"
import type { Pki } from "./Certificates.ts"
import type { HttpsServerError } from "./HttpsServer.ts"
import { respondJson, serveHttps } from "./HttpsServer.ts"
import type { CreateFault, PodRunner } from "./PodRuntime.ts"
import { makeContainerStreams } from "./PodRuntime.ts"

export class ApiServerError extends Data.TaggedError("ApiServerError")<{ readonly message: string }> {}

export interface ApiServer {
  readonly url: string
  readonly address: string
  readonly port: number
  readonly caFile: string
  /** A kubeconfig (server URL, CA, bearer-token user) for @kubernetes/client-node's KubeConfig.loadFromFile. */
  readonly kubeconfigPath: string
  readonly token: string
  /**
   * Registers a Running pod bound to `nodeName` that no node agent runs: it stands for a process outside the harness's
   * runtime (a Checkpointer process registered as its DaemonSet pod).
   */
  readonly addPod: (options: AddPodOptions) => Effect.Effect<Pod, ApiServerError>
  /** Deletes a pod as `DELETE .../pods/NAME` does (the agent stops its containers, then it goes). */
  readonly deletePod: (
    namespace: string,
    name: string,
    gracePeriodSeconds?: number
  ) => Effect.Effect<void, ApiServerError>
  /** Creates a pod as `POST /api/v1/namespaces/NS/pods` does (scheduled, then run by the node agent). */
  readonly createPod: (namespace: string, pod: unknown) => Effect.Effect<Pod, ApiServerError>
  readonly addNode: (options: NodeInput) => Effect.Effect<Node>
  readonly addUser: (user: ApiUser) => Effect.Effect<void>
  readonly addSecret: (options: SecretInput) => Effect.Effect<Secret, ApiServerError>
  /** Replaces a pod's status (the node agent's job), publishing MODIFIED. */
  readonly updatePodStatus: (
    namespace: string,
    name: string,
    update: (status: PodStatus) => PodStatus
  ) => Effect.Effect<Pod, ApiServerError>
  readonly findPod: (namespace: string, name: string) => Effect.Effect<Option.Option<Pod>>
  readonly pods: () => Effect.Effect<ReadonlyArray<Pod>>
  readonly secrets: () => Effect.Effect<ReadonlyArray<Secret>>
  readonly events: () => Effect.Effect<ReadonlyArray<PodEvent>>
  /** The core/v1 Events created through the API (what `kubectl get events` would list). */
  readonly kubernetesEvents: () => Effect.Effect<ReadonlyArray<KubernetesEvent>>
  readonly requests: () => Effect.Effect<ReadonlyArray<ApiRequest>>
  /** From now on, pods created through the API that `runner` accepts are run by it (undefined: none). */
  readonly setPodRunner: (runner: PodRunner | undefined) => Effect.Effect<void>
  /** Every pod creation is answered with this failure until it is reset with null. */
  readonly setCreateFault: (fault: CreateFault | null) => Effect.Effect<void>
  /** A container's log so far (pods created through the API). */
  readonly containerLog: (namespace: string, pod: string, container: string) => Effect.Effect<string>
}

export interface ApiServerOptions {
  readonly pki: Pki
  /** Where the kubeconfig goes. */
  readonly dir: string
  readonly address?: string
  /** Runs (in the server's scope) for every pod created through the API: the place for a node agent to start it. */
  readonly onPodCreated?: (pod: Pod) => Effect.Effect<void>
}

const versionRoute: Route = {
  path: "version",
  methods: {
    GET: () =>
      Effect.succeed(reply(200)({ major: "1", minor: "33", gitVersion: "v1.33.0-harness", platform: "linux/amd64" }))
  }
}

const toHarnessError = (failure: ApiFailure) => new ApiServerError({ message: failure.body.message })

/**
 * An HTTPS simulation of the parts of the Kubernetes API that Checkpointer uses, for the real @kubernetes/client-node.
 * Pods deleted through the API disappear only after the node agent has stopped and removed their podman containers.
 */
export const startApiServer = (
  options: ApiServerOptions
): Effect.Effect<
  ApiServer,
  Error | PlatformError | HttpsServerError,
  CommandExecutor.CommandExecutor | FileSystem.FileSystem | Path.Path | Scope.Scope
> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const address = options.address ?? "127.0.0.1"
    const dir = path.resolve(options.dir)
    yield* fs.makeDirectory(dir, { recursive: true })
    const issued = yield* options.pki.issue(`apiserver-${address}`, {
      ips: [address],
      dns: ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
    })
    const [cert, key] = yield* Effect.all([fs.readFileString(issued.cert), fs.readFileString(issued.key)])
    const token = randomBytes(24).toString("hex")

    const store = yield* makeStore
    const streams = makeContainerStreams()
    const requestLog = yield* makeRequestLog
    const reviews = yield* makeReviews
    const faults = yield* makeFaults
    const nodes = makeNodes(store)
    const secrets = makeSecrets(store)
    const kubernetesEvents = makeEvents(store)
    const pods = yield* makePods({
      store,
      streams,
      secrets,
      faults,
      onPodCreated: options.onPodCreated,
      events: kubernetesEvents
    })
    const podLog = makePodLog(store, streams)
    const podAttach = makePodAttach({ store, streams, requestLog, token })
    const route = makeRouter([
      versionRoute,
      ...reviews.routes,
      ...pods.routes,
      ...podLog.routes,
      ...secrets.routes,
      ...kubernetesEvents.routes,
      ...nodes.routes
    ])

    const handle = (incoming: IncomingMessage, response: ServerResponse) =>
      Effect.gen(function*() {
        const { entry, url } = describeRequest(incoming, token)
        const recordStatus = yield* requestLog.record(entry)
        const finish = (status: number, body: unknown) =>
          Effect.zipRight(Effect.sync(() => respondJson(response, status, body)), recordStatus(status))
        if (!entry.authorized) return yield* finish(401, statusBody(401, "Unauthorized", "Unauthorized"))
        const answer = yield* route(
          { method: entry.method, url, incoming, response, onStreamStarted: recordStatus(200) },
          pathSegments(url)
        ).pipe(
          Effect.catchTag(
            "ApiFailure",
            (failure) => Effect.succeed<Reply>({ status: failure.body.code, body: failure.body })
          )
        )
        if (answer !== "streamed") yield* finish(answer.status, answer.body)
      })

    const listening = yield* serveHttps({
      address,
      tls: { cert, key },
      handler: handle,
      onUpgrade: podAttach.onUpgrade
    })
    // Runs before the server closes: upgraded connections would keep it open.
    yield* Effect.addFinalizer(() => podAttach.close)
    const kubeconfigPath = path.join(dir, "kubeconfig")
    yield* fs.writeFileString(
      kubeconfigPath,
      kubeconfigYaml({ server: listening.url, caFile: options.pki.caFile, token })
    )

    const api: ApiServer = {
      url: listening.url,
      address,
      port: listening.port,
      caFile: options.pki.caFile,
      kubeconfigPath,
      token,
      addPod: (pod) => pods.add(pod).pipe(Effect.mapError(toHarnessError)),
      deletePod: (namespace, name, gracePeriodSeconds) =>
        pods.remove(namespace, name, gracePeriodSeconds).pipe(Effect.asVoid, Effect.mapError(toHarnessError)),
      createPod: (namespace, body) =>
        pods.create(namespace, body as Record<string, unknown>).pipe(Effect.mapError(toHarnessError)),
      addNode: nodes.add,
      addUser: reviews.addUser,
      addSecret: (secret) => secrets.add(secret).pipe(Effect.mapError(toHarnessError)),
      updatePodStatus: (namespace, name, update) =>
        pods.updateStatus(namespace, name, update).pipe(Effect.mapError(toHarnessError)),
      findPod: pods.find,
      pods: () => pods.all,
      secrets: () => secrets.all,
      events: () => pods.events,
      kubernetesEvents: () => kubernetesEvents.all,
      requests: () => requestLog.requests,
      setPodRunner: pods.setRunner,
      setCreateFault: faults.setCreateFault,
      containerLog: podLog.containerLog
    }
    return api
  }).pipe(Effect.withSpan("ApiServer.start"))
