import type { V1Container, V1Pod, V1PodSpec } from "@kubernetes/client-node"
import { Either, ParseResult, Schema } from "effect"

/**
 * What a checkpoint image records of its pod (annotation `io.checkpointer.pod`), so that a restore can make the pod
 * again: labels, annotations, and the spec without what the cluster generates (status, nodeName, the service-account
 * token volume, priority, ephemeral containers). The registry is no place for secrets: literal env values are left
 * out (their names are kept in `omittedEnv`); references (valueFrom, envFrom, Secret volumes, imagePullSecrets) stay.
 */
export const podRecordAnnotation = "io.checkpointer.pod"
export const restoredFromLabel = "checkpointer.io/restored-from"
export const restoredImageAnnotation = "checkpointer.io/restored-image"
export const originalLabelsAnnotation = "checkpointer.io/original-labels"

const Strings = Schema.Record({ key: Schema.String, value: Schema.String })
const Fields = Schema.Record({ key: Schema.String, value: Schema.Unknown })

export const PodRecord = Schema.Struct({
  version: Schema.Literal(1),
  /** The checkpointed container: its image becomes the checkpoint image on restore. */
  container: Schema.String,
  metadata: Schema.Struct({
    name: Schema.String,
    namespace: Schema.String,
    labels: Schema.optional(Strings),
    annotations: Schema.optional(Strings),
    /** The controller that owned the pod, if any (owner references are not restored). */
    controller: Schema.optional(Schema.Struct({ kind: Schema.String, name: Schema.String }))
  }),
  spec: Schema.Struct(
    { containers: Schema.NonEmptyArray(Schema.Struct({ name: Schema.String, image: Schema.String }, Fields)) },
    Fields
  ),
  /** `container/variable` of each literal env value left out. */
  omittedEnv: Schema.Array(Schema.String)
})
export type PodRecord = typeof PodRecord.Type

/** Annotations that only describe how the pod was last applied or made, not what it is. */
const droppedAnnotations: ReadonlySet<string> = new Set(["kubectl.kubernetes.io/last-applied-configuration"])

const isTokenVolume = (volume: { readonly name: string; readonly projected?: unknown }) =>
  volume.name.startsWith("kube-api-access-") && volume.projected !== undefined

const withoutLiteralEnv = (container: V1Container, omitted: Array<string>): V1Container => ({
  ...container,
  ...(container.env === undefined ? {} : {
    env: container.env.map((variable) => {
      if (variable.value === undefined) return variable
      omitted.push(`${container.name}/${variable.name}`)
      const { value: _value, ...rest } = variable
      return rest
    })
  })
})

const clone = <A>(value: A): A => JSON.parse(JSON.stringify(value)) as A

/** The record of `pod`, whose `container` is being checkpointed. */
export const recordPod = (pod: V1Pod, container: string): PodRecord => {
  const spec = clone(pod.spec ?? { containers: [] }) as V1PodSpec
  const tokenVolumes = new Set((spec.volumes ?? []).filter(isTokenVolume).map((volume) => volume.name))
  const omittedEnv: Array<string> = []
  const keepContainer = (c: V1Container) =>
    withoutLiteralEnv(
      c.volumeMounts === undefined
        ? c
        : { ...c, volumeMounts: c.volumeMounts.filter((mount) => !tokenVolumes.has(mount.name)) },
      omittedEnv
    )
  const {
    nodeName: _nodeName,
    priority: _priority,
    ephemeralContainers: _ephemeral,
    volumes,
    containers,
    initContainers,
    ...rest
  } = spec
  const keptVolumes = volumes?.filter((volume) => !tokenVolumes.has(volume.name))
  const annotations = Object.entries(pod.metadata?.annotations ?? {}).filter(([key]) => !droppedAnnotations.has(key))
  const owner = pod.metadata?.ownerReferences?.find((reference) => reference.controller === true)
  return {
    version: 1,
    container,
    metadata: {
      name: pod.metadata?.name ?? "",
      namespace: pod.metadata?.namespace ?? "default",
      ...(pod.metadata?.labels === undefined ? {} : { labels: { ...pod.metadata.labels } }),
      ...(annotations.length === 0 ? {} : { annotations: Object.fromEntries(annotations) }),
      ...(owner === undefined ? {} : { controller: { kind: owner.kind, name: owner.name } })
    },
    spec: {
      ...rest,
      ...(keptVolumes === undefined || keptVolumes.length === 0 ? {} : { volumes: keptVolumes }),
      ...(initContainers === undefined ? {} : { initContainers: initContainers.map(keepContainer) }),
      containers: containers.map(keepContainer)
    } as unknown as PodRecord["spec"],
    omittedEnv
  }
}

const decodeRecord = Schema.decodeUnknownEither(Schema.parseJson(PodRecord))

/** The record from an image's annotation; the reason if it is not one. */
export const parsePodRecord = (text: string): Either.Either<PodRecord, string> =>
  Either.mapLeft(
    decodeRecord(text),
    (error) =>
      `the ${podRecordAnnotation} annotation is not a pod record: ${ParseResult.TreeFormatter.formatErrorSync(error)}`
  )

export const encodePodRecord = (record: PodRecord): string => JSON.stringify(record)

/** Labels by which a controller (its selector) finds its pods; a restored pod must not carry them. */
const controllerLabels: ReadonlyArray<string> = [
  "pod-template-hash",
  "controller-revision-hash",
  "statefulset.kubernetes.io/pod-name",
  "apps.kubernetes.io/pod-index",
  "controller-uid",
  "batch.kubernetes.io/controller-uid",
  "job-name",
  "batch.kubernetes.io/job-name",
  "batch.kubernetes.io/job-completion-index"
]

/**
 * Controllers whose selectors may consist of the pod's own labels alone (a ReplicaSet not made by a Deployment, a
 * ReplicationController, a DaemonSet): they would adopt a restored pod with those labels and delete it or another.
 */
const adoptsByOwnLabels = (record: PodRecord): boolean => {
  const kind = record.metadata.controller?.kind
  if (kind === undefined) return false
  if (kind === "ReplicaSet") return record.metadata.labels?.["pod-template-hash"] === undefined
  return kind === "ReplicationController" || kind === "DaemonSet"
}

/**
 * The labels of a restored pod: the recorded ones without those a controller finds its pods by, so that no controller
 * adopts the restored pod (and deletes it or one of its own). For a pod whose controller selects by the pod's own
 * labels, no recorded label is kept: they are moved into the `checkpointer.io/original-labels` annotation.
 */
const restoredLabels = (record: PodRecord, restoredFrom: string) => {
  const recorded = record.metadata.labels ?? {}
  if (adoptsByOwnLabels(record)) {
    return {
      labels: { [restoredFromLabel]: restoredFrom },
      moved: Object.keys(recorded).length === 0 ? {} : { [originalLabelsAnnotation]: JSON.stringify(recorded) }
    }
  }
  const kept = Object.entries(recorded).filter(([key]) => !controllerLabels.includes(key))
  return { labels: { ...Object.fromEntries(kept), [restoredFromLabel]: restoredFrom }, moved: {} }
}

export interface RestoreTarget {
  /** The checkpoint image, run in place of the checkpointed container's image. */
  readonly image: string
  /** A label value naming the checkpoint (its tag). */
  readonly restoredFrom: string
  readonly name: string
  readonly namespace: string
  /** Pinned to this node; otherwise the scheduler decides. */
  readonly node?: string
  /** Values for the env variables the record left out (`container/variable`), e.g. from the live pod. */
  readonly env?: Readonly<Record<string, string>>
}

/** The pod to create for a restore: the recorded pod, its checkpointed container running the checkpoint image. */
export const restoredPod = (record: PodRecord, target: RestoreTarget): V1Pod => {
  const { labels, moved } = restoredLabels(record, target.restoredFrom)
  const spec = clone(record.spec) as unknown as V1PodSpec
  const fill = (container: V1Container): V1Container => ({
    ...container,
    ...(container.env === undefined ? {} : {
      env: container.env.map((variable) => {
        const value = target.env?.[`${container.name}/${variable.name}`]
        return value === undefined ? variable : { ...variable, value }
      })
    })
  })
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name: target.name,
      namespace: target.namespace,
      labels,
      annotations: { ...record.metadata.annotations, ...moved, [restoredImageAnnotation]: target.image }
    },
    spec: {
      ...spec,
      ...(target.node === undefined ? {} : { nodeName: target.node }),
      ...(spec.initContainers === undefined ? {} : { initContainers: spec.initContainers.map(fill) }),
      containers: spec.containers.map((container) =>
        container.name === record.container
          ? { ...fill(container), image: target.image, imagePullPolicy: "IfNotPresent" }
          : fill(container)
      )
    }
  }
}
