import { HttpApi, HttpApiEndpoint, HttpApiGroup, HttpApiSchema, OpenApi } from "@effect/platform"
import { Schema } from "effect"
import {
  AsyncCheckpointAccepted,
  CheckpointIdentifier,
  CheckpointOptions,
  CheckpointResult,
  ContainerName,
  Namespace,
  PodName
} from "./Domain.ts"

/** An API error whose body is its message as plain text, as the seed answers errors. */
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

/** A checkpoint that failed; the message names the phase (kubelet, build/push, delete pod) and the reason. */
export class CheckpointFailed extends Schema.TaggedError<CheckpointFailed>()("CheckpointFailed", {
  message: Schema.String
}) {}

export const InvalidRequestText = plainText(InvalidRequest, 400, "Malformed request: the body says what is wrong.")
const ContainerNotFoundText = plainText(ContainerNotFound, 404, "The pod or container does not exist.")
const CheckpointNotFoundText = plainText(CheckpointNotFound, 404, "No checkpoint has this identifier.")
const CheckpointFailedText = plainText(CheckpointFailed, 500, "The checkpoint failed; the body names the phase.")

export const ContainerPath = Schema.Struct({
  namespace: Namespace,
  pod: PodName,
  container: ContainerName
})

export class CheckpointGroup extends HttpApiGroup.make("checkpoint")
  .add(
    HttpApiEndpoint.post("checkpoint", "/checkpoint/:namespace/:pod/:container")
      .setPath(ContainerPath)
      .setPayload(CheckpointOptions)
      .addSuccess(CheckpointResult, { status: 201 })
      .addSuccess(AsyncCheckpointAccepted, { status: 202 })
      .addError(ContainerNotFoundText)
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
      .addSuccess(CheckpointResult)
      .addError(CheckpointNotFoundText)
      .addError(CheckpointFailedText)
      .annotate(OpenApi.Summary, "Result of an asynchronous checkpoint")
      .annotate(OpenApi.Description, "Waits while the checkpoint is still running.")
  )
  .addError(InvalidRequestText)
{}

export class HealthGroup extends HttpApiGroup.make("health")
  .add(HttpApiEndpoint.get("healthz", "/healthz").addSuccess(HttpApiSchema.Text()))
  .add(HttpApiEndpoint.get("readyz", "/readyz").addSuccess(HttpApiSchema.Text()))
  .annotate(OpenApi.Exclude, false)
{}

export class CheckpointerApi extends HttpApi.make("checkpointer")
  .add(CheckpointGroup)
  .add(HealthGroup)
  .annotate(OpenApi.Title, "Checkpointer")
  .annotate(OpenApi.Description, "Checkpoints Kubernetes containers with CRIU and pushes them as OCI images.")
{}
