import { AuthenticationV1Api, AuthorizationV1Api, CoreV1Api } from "@kubernetes/client-node"
import type { CoreV1Event, V1Pod, V1ResourceAttributes, V1UserInfo } from "@kubernetes/client-node"
import { Duration, Effect, Option, Schedule } from "effect"
import { callApi, idempotent, KubernetesApi, KubernetesApiError, whenFound } from "./KubernetesApi.ts"

/** A pod's uid, when the pod was found and has one. */
export const podUid = (pod: Option.Option<V1Pod>): string | undefined =>
  Option.getOrUndefined(Option.flatMapNullable(pod, (found) => found.metadata?.uid))

export interface PodEventRecord {
  readonly namespace: string
  readonly pod: string
  readonly uid: string | undefined
  readonly container: string
  readonly type: "Normal" | "Warning"
  /** UpperCamelCase, as `kubectl get events` shows it: Checkpointed, CheckpointFailed, Restored. */
  readonly reason: string
  readonly message: string
  /** The node whose Checkpointer reports it (`source.host`). */
  readonly node: string
}

/**
 * What the orchestration and the API need of Kubernetes: pods (find, create, delete, their events), Checkpointer peers,
 * reviews.
 */
export class Cluster extends Effect.Service<Cluster>()("checkpointer/Cluster", {
  effect: Effect.gen(function*() {
    const { kubeConfig } = yield* KubernetesApi
    const core = kubeConfig.makeApiClient(CoreV1Api)
    const authentication = kubeConfig.makeApiClient(AuthenticationV1Api)
    const authorization = kubeConfig.makeApiClient(AuthorizationV1Api)

    const getPod = Effect.fn("Cluster.getPod")(function*(namespace: string, name: string) {
      return yield* whenFound(
        idempotent(callApi(`get pod ${namespace}/${name}`, () => core.readNamespacedPod({ namespace, name })))
      )
    })

    /** Deletes the pod and waits until the API server no longer has it (its containers are gone). */
    const deletePod = Effect.fn("Cluster.deletePod")(function*(
      namespace: string,
      name: string,
      timeout: Duration.Duration
    ) {
      const deleted = yield* whenFound(
        idempotent(callApi(`delete pod ${namespace}/${name}`, () => core.deleteNamespacedPod({ namespace, name })))
      )
      if (Option.isNone(deleted)) return
      const uid = deleted.value.metadata?.uid
      const stillThere = getPod(namespace, name).pipe(
        Effect.map(Option.exists((pod: V1Pod) => uid === undefined || pod.metadata?.uid === uid))
      )
      yield* stillThere.pipe(
        Effect.repeat({ schedule: Schedule.spaced("250 millis"), while: (present) => present }),
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () =>
            new KubernetesApiError({
              status: undefined,
              message: `pod ${namespace}/${name} still exists ${Duration.format(timeout)} after its deletion`
            })
        })
      )
    })

    /** Creates a pod (not retried: a create is not idempotent); a taken name fails with status 409. */
    const createPod = Effect.fn("Cluster.createPod")(function*(namespace: string, pod: V1Pod) {
      return yield* callApi(
        `create pod ${namespace}/${pod.metadata?.name ?? ""}`,
        () => core.createNamespacedPod({ namespace, body: pod })
      )
    })

    /** What the pod's events say, oldest first, as `Reason: message` lines. */
    const podEvents = Effect.fn("Cluster.podEvents")(function*(namespace: string, name: string) {
      const list = yield* idempotent(
        callApi(`list events of pod ${namespace}/${name}`, () =>
          core.listNamespacedEvent({
            namespace,
            fieldSelector: `involvedObject.kind=Pod,involvedObject.name=${name}`
          }))
      )
      const at = (event: CoreV1Event) =>
        new Date(event.lastTimestamp ?? event.eventTime ?? event.metadata.creationTimestamp ?? 0).getTime()
      return list.items.toSorted((a, b) => at(a) - at(b)).map((event) =>
        `${event.reason ?? "Event"}: ${event.message ?? ""}`
      )
    })

    /** Running Checkpointer pods with an IP on `node` (label app.kubernetes.io/name=checkpointer), in any namespace. */
    const checkpointerPodsOn = Effect.fn("Cluster.checkpointerPodsOn")(function*(node: string) {
      const list = yield* idempotent(
        callApi(`list Checkpointer pods on node ${node}`, () =>
          core.listPodForAllNamespaces({
            labelSelector: "app.kubernetes.io/name=checkpointer",
            fieldSelector: `spec.nodeName=${node}`
          }))
      )
      return list.items.filter((pod) => pod.status?.phase === "Running" && (pod.status.podIP ?? "") !== "")
    })

    /** TokenReview: who the bearer of `token` is, or None when the API server does not know the token. */
    const reviewToken = Effect.fn("Cluster.reviewToken")(function*(token: string) {
      const review = yield* idempotent(callApi("token review", () =>
        authentication.createTokenReview({
          body: { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token } }
        })))
      return review.status?.authenticated === true && review.status.user !== undefined
        ? Option.some(review.status.user)
        : Option.none()
    })

    /** SubjectAccessReview: whether `user` may do what `access` says. */
    const reviewAccess = Effect.fn("Cluster.reviewAccess")(function*(user: V1UserInfo, access: V1ResourceAttributes) {
      const review = yield* idempotent(callApi("access review", () =>
        authorization.createSubjectAccessReview({
          body: {
            apiVersion: "authorization.k8s.io/v1",
            kind: "SubjectAccessReview",
            spec: {
              resourceAttributes: access,
              ...(user.username === undefined ? {} : { user: user.username }),
              ...(user.uid === undefined ? {} : { uid: user.uid }),
              ...(user.groups === undefined ? {} : { groups: user.groups }),
              ...(user.extra === undefined ? {} : { extra: user.extra })
            }
          }
        })))
      return review.status?.allowed === true
    })

    /** A core/v1 Event on a pod (and one of its containers), as the kubelet writes them; `uid` ties it to this pod. */
    const recordPodEvent = Effect.fn("Cluster.recordPodEvent")(function*(event: PodEventRecord) {
      const { namespace, pod, uid } = event
      const now = new Date()
      yield* callApi(`record event ${event.reason} on pod ${namespace}/${pod}`, () =>
        core.createNamespacedEvent({
          namespace,
          body: {
            metadata: { generateName: `${pod}.` },
            involvedObject: {
              apiVersion: "v1",
              kind: "Pod",
              namespace,
              name: pod,
              ...(uid === undefined ? {} : { uid }),
              fieldPath: `spec.containers{${event.container}}`
            },
            type: event.type,
            reason: event.reason,
            message: event.message,
            count: 1,
            firstTimestamp: now,
            lastTimestamp: now,
            source: { component: "checkpointer", host: event.node },
            reportingComponent: "checkpointer",
            reportingInstance: event.node
          }
        }))
    })

    return {
      reviewToken,
      recordPodEvent,
      reviewAccess,
      getPod,
      createPod,
      deletePod,
      podEvents,
      checkpointerPodsOn
    } as const
  }),
  dependencies: [KubernetesApi.Default]
}) {}
