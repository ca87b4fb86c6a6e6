import type { HttpServerRequest } from "@effect/platform"
import { HttpApiBuilder } from "@effect/platform"
import {
  CheckpointerApi,
  Checkpointer,
  CheckpointFailed,
  CheckpointNotFound,
  CheckpointOptions,
  ContainerNotFound,
  ContainerRef,
  InvalidRequest
} from "@checkpointer/core"
import { Effect, ParseResult, Schema } from "effect"

const maxBodyBytes = 64 * 1024

const decodeOptions = Schema.decodeUnknown(CheckpointOptions, { errors: "all", onExcessProperty: "ignore" })

/** The optional JSON body of a checkpoint request: no body means `{"deletePod": false, "async": false}`. */
export const readCheckpointOptions = (request: HttpServerRequest.HttpServerRequest) =>
  Effect.gen(function*() {
    const text = yield* request.text.pipe(
      Effect.mapError(() => new InvalidRequest({ message: "could not read the request body" }))
    )
    if (Buffer.byteLength(text) > maxBodyBytes) {
      return yield* new InvalidRequest({ message: `request body is larger than ${maxBodyBytes} bytes` })
    }
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
      return handlers
        .handleRaw("checkpoint", ({ path, request }) =>
          readCheckpointOptions(request).pipe(
            Effect.flatMap((options) => checkpointer.checkpoint(new ContainerRef(path), options)),
            Effect.catchTags({
              ContainerMissing: (error) => new ContainerNotFound({ message: error.message }),
              PhaseFailed: (error) => new CheckpointFailed({ message: error.description })
            })
          ))
        .handle("result", ({ urlParams }) =>
          checkpointer.result(urlParams.checkpointIdentifier).pipe(
            Effect.catchTags({
              CheckpointUnknown: (error) => new CheckpointNotFound({ message: error.message }),
              CheckpointFailure: (error) => new CheckpointFailed({ message: error.message })
            })
          ))
    })
)
