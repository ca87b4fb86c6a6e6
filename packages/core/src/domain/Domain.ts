import { Schema } from "effect"

const dnsLabel = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/
const dnsSubdomain = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/

/** A Kubernetes DNS-1123 label: namespaces and container names. */
export const DnsLabel = Schema.String.pipe(
  Schema.maxLength(63, { message: () => "must be at most 63 characters" }),
  Schema.pattern(dnsLabel, {
    message: () =>
      "must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit"
  })
)

/** A Kubernetes DNS-1123 subdomain: pod and node names. */
export const DnsSubdomain = Schema.String.pipe(
  Schema.maxLength(253, { message: () => "must be at most 253 characters" }),
  Schema.pattern(dnsSubdomain, {
    message: () =>
      "must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', " +
      "starting and ending with a letter or digit"
  })
)

export const Namespace = DnsLabel.pipe(Schema.brand("Namespace"))
export type Namespace = typeof Namespace.Type
export const PodName = DnsSubdomain.pipe(Schema.brand("PodName"))
export type PodName = typeof PodName.Type
export const ContainerName = DnsLabel.pipe(Schema.brand("ContainerName"))
export type ContainerName = typeof ContainerName.Type
export const NodeName = DnsSubdomain.pipe(Schema.brand("NodeName"))
export type NodeName = typeof NodeName.Type

export class ContainerRef extends Schema.Class<ContainerRef>("ContainerRef")({
  namespace: Namespace,
  pod: PodName,
  container: ContainerName
}) {
  override toString(): string {
    return `${this.namespace}/${this.pod}/${this.container}`
  }
}

/** The 16 hex digits that are both the image tag and the second half of a checkpoint identifier. */
export const CheckpointTag = Schema.String.pipe(
  Schema.pattern(/^[0-9a-f]{16}$/, { message: () => "must be 16 lower-case hex digits" }),
  Schema.brand("CheckpointTag")
)
export type CheckpointTag = typeof CheckpointTag.Type

/** `<node>:<16 hex>`: the node that runs the checkpoint and the tag of its image. */
export const CheckpointIdentifier = Schema.String.pipe(
  Schema.pattern(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?:[0-9a-f]{16}$/, {
    message: () => "must be <node>:<16 hex digits>"
  }),
  Schema.maxLength(253 + 17, { message: () => "is too long" }),
  Schema.brand("CheckpointIdentifier")
)
export type CheckpointIdentifier = typeof CheckpointIdentifier.Type

export const makeIdentifier = (node: NodeName, tag: CheckpointTag): CheckpointIdentifier =>
  `${node}:${tag}` as CheckpointIdentifier

export const parseIdentifier = (identifier: CheckpointIdentifier): { node: NodeName; tag: CheckpointTag } => {
  const separator = identifier.lastIndexOf(":")
  return {
    node: identifier.slice(0, separator) as NodeName,
    tag: identifier.slice(separator + 1) as CheckpointTag
  }
}

export class CheckpointOptions extends Schema.Class<CheckpointOptions>("CheckpointOptions")({
  deletePod: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  async: Schema.optionalWith(Schema.Boolean, { default: () => false })
}) {}

/** The body of a successful checkpoint, as the Go service answers it (timestamps in Unix seconds). */
export class CheckpointResult extends Schema.Class<CheckpointResult>("CheckpointResult")({
  containerIdentifier: ContainerRef,
  beginTimestamp: Schema.Number,
  endTimestamp: Schema.Number,
  containerImageName: Schema.String,
  containerImageDigest: Schema.optional(Schema.String)
}) {}

export class AsyncCheckpointAccepted extends Schema.Class<AsyncCheckpointAccepted>("AsyncCheckpointAccepted")({
  checkpointIdentifier: CheckpointIdentifier
}) {}

/** An image reference as a caller gives it (`registry/repository:tag`); the registry client checks its form. */
export const ImageName = Schema.String.pipe(
  Schema.minLength(1, { message: () => "must not be empty" }),
  Schema.maxLength(1024, { message: () => "is too long" }),
  Schema.pattern(/^\S+$/, { message: () => "must not contain whitespace" })
)

const RestoreFields = Schema.Struct({
  checkpointIdentifier: Schema.optional(CheckpointIdentifier),
  image: Schema.optional(ImageName),
  /** Default: the namespace of the checkpointed pod. */
  namespace: Schema.optional(Namespace),
  /** Default: `<original pod>-restored-<6 hex>`. */
  pod: Schema.optional(PodName),
  /** Pinned to this node; by default the scheduler decides. */
  node: Schema.optional(NodeName),
  async: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  /** Keep a pod whose restore failed (for inspection); by default it is deleted. */
  keepFailedPod: Schema.optionalWith(Schema.Boolean, { default: () => false })
})

/** The body of `POST /restore`: exactly one of `checkpointIdentifier` and `image`. */
export class RestoreRequest extends Schema.Class<RestoreRequest>("RestoreRequest")(
  RestoreFields.pipe(
    Schema.filter((request) =>
      (request.checkpointIdentifier === undefined) !== (request.image === undefined) ||
      "exactly one of checkpointIdentifier and image is required"
    )
  )
) {}

/** A restored pod, running the checkpointed process again. */
export class RestoreResult extends Schema.Class<RestoreResult>("RestoreResult")({
  namespace: Namespace,
  pod: PodName,
  node: NodeName,
  image: Schema.String,
  /** The container the checkpoint image restored (the pod's other containers started afresh). */
  container: ContainerName,
  /** `container/variable` of literal env values the image did not record and no live pod gave. */
  omittedEnv: Schema.optional(Schema.Array(Schema.String))
}) {}
