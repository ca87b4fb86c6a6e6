import type { HttpServerRequest } from "@effect/platform"
import { FileSystem, HttpApiBuilder, HttpIncomingMessage } from "@effect/platform"
import {
  AccessDenied,
  AuthenticationRequired,
  CallerAuth,
  CheckpointerApi,
  Checkpointer,
  CheckpointFailed,
  CheckpointInProgress,
  CheckpointNotFound,
  CheckpointOptions,
  ContainerNotFound,
  ContainerRef,
  InvalidRequest,
  PayloadTooLarge,
  Unavailable
} from "@checkpointer/core"
import { Effect, Option, ParseResult, Schema } from "effect"

const maxBodyBytes = 64 * 1024

const decodeOptions = Schema.decodeUnknown(CheckpointOptions, { errors: "all", onExcessProperty: "ignore" })

/** The optional JSON body of a checkpoint request: no body means `{"deletePod": false, "async": false}`. */
/** The raw body of a checkpoint request, at most 64 KiB (read once; later reads get the same text). */
export const readCheckpointBody = (request: HttpServerRequest.HttpServerRequest) =>
  Effect.gen(function*() {
    const tooLarge = new PayloadTooLarge({ message: `request body is larger than ${maxBodyBytes} bytes` })
    if (Number(request.headers["content-length"] ?? 0) > maxBodyBytes) return yield* tooLarge
    const text = yield* request.text.pipe(
      HttpIncomingMessage.withMaxBodySize(Option.some(FileSystem.Size(maxBodyBytes))),
      Effect.mapError((error) =>
        error.reason === "Decode" && String(error.cause).includes("maxBytes exceeded")
          ? tooLarge
          : new InvalidRequest({ message: "could not read the request body" })
      )
    )
    return Buffer.byteLength(text) > maxBodyBytes ? yield* tooLarge : text
  })

export const readCheckpointOptions = (request: HttpServerRequest.HttpServerRequest) =>
  Effect.gen(function*() {
    const text = yield* readCheckpointBody(request)
    if (text.trim() === "") return new CheckpointOptions({})
    const json = yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: (error) => new InvalidRequest({ message: `request body is not valid JSON: ${(error as Error).message}` })
    })
    return yield* decodeOptions(json).pipe(
      Effect.mapError((error) =>
        new InvalidRequest({
          message: `invalid request body, expected {"deletePod"?: boolean, "async"?: boolean}: ${
            ParseResult.ArrayFormatter.formatErrorSync(error)
              .map((issue) => `${issue.path.join(".") || "body"}: ${issue.message}`)
              .join("; ")
          }`
        })
      )
    )
  })

export const CheckpointHandlers = HttpApiBuilder.group(
  CheckpointerApi,
  "checkpoint",
  (handlers) =>
    Effect.gen(function*() {
      const checkpointer = yield* Checkpointer
      const auth = yield* CallerAuth
      return handlers
        .handleRaw("checkpoint", ({ path, request }) =>
          readCheckpointOptions(request).pipe(
            Effect.flatMap((options) => checkpointer.checkpoint(new ContainerRef(path), options)),
            Effect.catchTags({
              ContainerMissing: (error) => new ContainerNotFound({ message: error.message }),
              CheckpointConflict: (error) => new CheckpointInProgress({ message: error.message }),
              ShuttingDown: (error) => new Unavailable({ message: error.message }),
              PhaseFailed: (error) => new CheckpointFailed({ message: error.description }),
              CheckpointFailure: (error) => new CheckpointFailed({ message: error.message })
            })
          ))
        .handle("result", ({ request, urlParams }) =>
          Effect.gen(function*() {
            // The namespace of a result is known only here, where it is stored.
            if (auth.enabled) {
              const namespace = yield* checkpointer.namespaceOf(urlParams.checkpointIdentifier)
              yield* auth.authorize(request.headers.authorization, [{
                verb: "get",
                resource: "pods",
                subresource: "checkpoint",
                ...Option.match(namespace, { onNone: () => ({}), onSome: (namespace) => ({ namespace }) })
              }])
            }
            return yield* checkpointer.result(urlParams.checkpointIdentifier)
          }).pipe(
            Effect.catchTags({
              Unauthenticated: (error) => new AuthenticationRequired({ message: error.message }),
              Forbidden: (error) => new AccessDenied({ message: error.message }),
              AuthUnavailable: (error) => new CheckpointFailed({ message: error.message }),
              CheckpointUnknown: (error) => new CheckpointNotFound({ message: error.message }),
              CheckpointFailure: (error) => new CheckpointFailed({ message: error.message })
            })
          ))
    })
)
