import {
  HttpApi,
  HttpApiEndpoint,
  HttpApiGroup,
  HttpApiMiddleware,
  HttpApiSchema,
  HttpApiSecurity,
  OpenApi
} from "@effect/platform"
import { Array as Arr, Context, ParseResult, Schema } from "effect"
import type { Effect } from "effect"
import {
  AsyncCheckpointAccepted,
  CheckpointIdentifier,
  CheckpointOptions,
  CheckpointResult,
  ContainerName,
  Namespace,
  PodName,
  RestoreRequest,
  RestoreResult
} from "../domain/Domain.ts"

/** An API error whose body is its message as plain text, as the Go service answers errors. */
const plainText = <E extends { readonly message: string }, I>(
  error: Schema.Schema<E, I> & (new(props: { readonly message: string }) => E),
  status: number,
  description: string
) =>
  Schema.transform(Schema.String, Schema.typeSchema(error), {
    strict: true,
    decode: (message) => new error({ message }),
    encode: (failure) => failure.message
  }).pipe(
    HttpApiSchema.withEncoding({ kind: "Text", contentType: "text/plain; charset=utf-8" }),
    (schema) => schema.annotations({ ...HttpApiSchema.annotations({ status }), description })
  )

export class InvalidRequest extends Schema.TaggedError<InvalidRequest>()("InvalidRequest", {
  message: Schema.String
}) {}

export class ContainerNotFound extends Schema.TaggedError<ContainerNotFound>()("ContainerNotFound", {
  message: Schema.String
}) {}

export class CheckpointNotFound extends Schema.TaggedError<CheckpointNotFound>()("CheckpointNotFound", {
  message: Schema.String
}) {}

/** A checkpoint of the same container is already running on this node; the message names its identifier. */
export class CheckpointInProgress extends Schema.TaggedError<CheckpointInProgress>()("CheckpointInProgress", {
  message: Schema.String
}) {}

export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()("PayloadTooLarge", {
  message: Schema.String
}) {}

/** The Checkpointer is shutting down and takes no new checkpoints. */
export class Unavailable extends Schema.TaggedError<Unavailable>()("Unavailable", {
  message: Schema.String
}) {}

/** AUTH_MODE=kubernetes: no bearer token, or one the API server does not accept. */
export class AuthenticationRequired extends Schema.TaggedError<AuthenticationRequired>()("AuthenticationRequired", {
  message: Schema.String
}) {}

/** AUTH_MODE=kubernetes: the caller may not do this (a SubjectAccessReview said no). */
export class AccessDenied extends Schema.TaggedError<AccessDenied>()("AccessDenied", {
  message: Schema.String
}) {}

/** The request is for another node and was already forwarded once (it is never forwarded twice). */
export class Misdirected extends Schema.TaggedError<Misdirected>()("Misdirected", {
  message: Schema.String
}) {}

/** The Checkpointer on the node that serves this request did not answer. */
export class PeerUnreachable extends Schema.TaggedError<PeerUnreachable>()("PeerUnreachable", {
  message: Schema.String
}) {}

/** The pod a restore would create exists already. */
export class PodExists extends Schema.TaggedError<PodExists>()("PodExists", {
  message: Schema.String
}) {}

/** A checkpoint that failed; the message names the phase (kubelet, build/push, delete pod) and the reason. */
export class CheckpointFailed extends Schema.TaggedError<CheckpointFailed>()("CheckpointFailed", {
  message: Schema.String
}) {}

export const InvalidRequestText = plainText(InvalidRequest, 400, "Malformed request: the body says what is wrong.")
const ContainerNotFoundText = plainText(ContainerNotFound, 404, "The pod or container does not exist.")
const CheckpointNotFoundText = plainText(CheckpointNotFound, 404, "No checkpoint has this identifier.")
const CheckpointFailedText = plainText(CheckpointFailed, 500, "The checkpoint failed; the body names the phase.")
const CheckpointInProgressText = plainText(
  CheckpointInProgress,
  409,
  "A checkpoint of this container is already running; the body names its identifier."
)
const PodExistsText = plainText(PodExists, 409, "A pod with the restored pod's name already exists.")
const CheckpointOrImageNotFoundText = plainText(
  CheckpointNotFound,
  404,
  "No checkpoint has this identifier, it failed, or the registry has no such image."
)
const RestoreFailedText = plainText(
  CheckpointFailed,
  500,
  "The restore failed; the body names the phase (image, pod creation, scheduling, image pull, restore) and the " +
    "pod's events."
)
const PayloadTooLargeText = plainText(PayloadTooLarge, 413, "The request body is larger than 64 KiB.")
const UnavailableText = plainText(Unavailable, 503, "The Checkpointer is shutting down.")
const AuthenticationRequiredText = plainText(AuthenticationRequired, 401, "A valid bearer token is required.")
const AccessDeniedText = plainText(AccessDenied, 403, "The caller may not do this.")
const MisdirectedText = plainText(
  Misdirected,
  421,
  "The pod or checkpoint is on another node and this request was already forwarded once."
)
const PeerUnreachableText = plainText(
  PeerUnreachable,
  502,
  "The Checkpointer on the node of the pod or checkpoint did not answer."
)

/** What a caller wants to do, as a SubjectAccessReview puts it. */
export interface Access {
  readonly verb: string
  readonly resource: string
  readonly subresource?: string
  /** Omitted: in every namespace. */
  readonly namespace?: Namespace
}

/** The authenticated caller of a checkpoint endpoint. */
export class Caller extends Context.Tag("checkpointer/Caller")<Caller, {
  /** Fails unless the caller may do every one of `accesses` (AUTH_MODE=none: always allowed). */
  readonly authorize: (accesses: ReadonlyArray<Access>) => Effect.Effect<void, AccessDenied | CheckpointFailed>
}>() {}

/**
 * Authenticates the caller of the checkpoint endpoints by their bearer token (AUTH_MODE=kubernetes: a TokenReview);
 * 401 without a valid one, 500 when the API server cannot be asked.
 */
export class Authentication extends HttpApiMiddleware.Tag<Authentication>()("checkpointer/Authentication", {
  failure: Schema.Union(AuthenticationRequiredText, CheckpointFailedText),
  provides: Caller,
  security: { bearer: HttpApiSecurity.bearer }
}) {}

const payloadShape = "{\"deletePod\"?: boolean, \"async\"?: boolean}"

/** What is wrong with a body that is not CheckpointOptions (its alternative, no body, would add nothing). */
const describePayloadIssue = (issue: ParseResult.ParseIssue) =>
  ParseResult.ArrayFormatter.formatIssueSync(issue._tag === "Composite" ? Arr.ensure(issue.issues)[0] : issue)
    .map((each) => `${each.path.join(".") || "body"}: ${each.message}`)
    .join("; ")

/** The optional JSON body of a checkpoint request: no body means `{"deletePod": false, "async": false}`. */
export const CheckpointPayload = Schema.Union(
  CheckpointOptions,
  Schema.transform(Schema.Null, Schema.typeSchema(CheckpointOptions), {
    strict: true,
    decode: () => new CheckpointOptions({}),
    encode: () => null
  })
).annotations({
  message: (issue) => ({
    message: `expected ${payloadShape} or no body: ${describePayloadIssue(issue)}`,
    override: true
  })
})

export const ContainerPath = Schema.Struct({
  namespace: Namespace,
  pod: PodName,
  container: ContainerName
})

export class CheckpointGroup extends HttpApiGroup.make("checkpoint")
  .add(
    HttpApiEndpoint.post("checkpoint", "/checkpoint/:namespace/:pod/:container")
      .setPath(ContainerPath)
      .setPayload(CheckpointPayload)
      .addSuccess(CheckpointResult, { status: 201 })
      .addSuccess(AsyncCheckpointAccepted, { status: 202 })
      .addError(AccessDeniedText)
      .addError(ContainerNotFoundText)
      .addError(CheckpointInProgressText)
      .addError(PayloadTooLargeText)
      .addError(MisdirectedText)
      .addError(PeerUnreachableText)
      .addError(UnavailableText)
      .addError(CheckpointFailedText)
      .annotate(OpenApi.Summary, "Checkpoint a container")
      .annotate(
        OpenApi.Description,
        "Checkpoints the container through the kubelet, pushes the archive as an image and answers its name (201). " +
          "With async=true it answers 202 with an identifier at once; deletePod=true deletes the pod afterwards. " +
          "The JSON body is optional."
      )
  )
  .add(
    HttpApiEndpoint.get("result", "/checkpoint")
      .setUrlParams(Schema.Struct({ checkpointIdentifier: CheckpointIdentifier }))
      .addSuccess(Schema.Union(CheckpointResult, RestoreResult))
      .addError(AccessDeniedText)
      .addError(CheckpointNotFoundText)
      .addError(MisdirectedText)
      .addError(PeerUnreachableText)
      .addError(CheckpointFailedText)
      .annotate(OpenApi.Summary, "Result of an asynchronous checkpoint or restore")
      .annotate(OpenApi.Description, "Waits while a checkpoint is still running.")
  )
  .add(
    HttpApiEndpoint.post("restore", "/restore")
      .setPayload(RestoreRequest)
      .addSuccess(RestoreResult, { status: 201 })
      .addSuccess(AsyncCheckpointAccepted, { status: 202 })
      .addError(AccessDeniedText)
      .addError(CheckpointOrImageNotFoundText)
      .addError(PodExistsText)
      .addError(PayloadTooLargeText)
      .addError(RestoreFailedText)
      .annotate(OpenApi.Summary, "Restore a checkpoint as a running pod")
      .annotate(
        OpenApi.Description,
        "Creates the pod the checkpoint image records, its checkpointed container running the image, which the " +
          "node's runtime restores; answers 201 once it runs. Exactly one of checkpointIdentifier and image. " +
          "namespace (default: the original), pod (default: <original>-restored-<hex>), node (default: the " +
          "scheduler decides). async=true answers 202 with an identifier; keepFailedPod=true keeps a failed pod."
      )
  )
  .addError(InvalidRequestText)
  .middleware(Authentication)
{}

/** This Checkpointer cannot take checkpoints now; the message says which check failed and why. */
export class NotReady extends Schema.TaggedError<NotReady>()("NotReady", {
  message: Schema.String
}) {}

const NotReadyText = plainText(NotReady, 503, "Not ready: the body names the failed check (result store, API server).")

/** Prometheus text exposition format 0.0.4. */
export const PrometheusText = HttpApiSchema.Text({ contentType: "text/plain; version=0.0.4; charset=utf-8" })

export class HealthGroup extends HttpApiGroup.make("health")
  .add(
    HttpApiEndpoint.get("healthz", "/healthz")
      .addSuccess(HttpApiSchema.Text())
      .annotate(OpenApi.Summary, "Liveness: the process serves requests")
  )
  .add(
    HttpApiEndpoint.get("readyz", "/readyz")
      .addSuccess(HttpApiSchema.Text())
      .addError(NotReadyText)
      .annotate(OpenApi.Summary, "Readiness: the result store is writable and the API server answers")
  )
  .add(
    HttpApiEndpoint.get("metrics", "/metrics")
      .addSuccess(PrometheusText)
      .annotate(OpenApi.Summary, "Metrics in the Prometheus text format")
  )
  .annotate(OpenApi.Exclude, false)
{}

export class CheckpointerApi extends HttpApi.make("checkpointer")
  .add(CheckpointGroup)
  .add(HealthGroup)
  .annotate(OpenApi.Title, "Checkpointer")
  .annotate(OpenApi.Description, "Checkpoints Kubernetes containers with CRIU and pushes them as OCI images.")
{}
