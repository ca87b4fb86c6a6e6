import {
  FileSystem,
  HttpApiBuilder,
  HttpApiError,
  HttpIncomingMessage,
  HttpMethod,
  HttpServerRequest,
  HttpServerResponse
} from "@effect/platform"
import type { HttpServerError } from "@effect/platform"
import { Cause, Effect, Option } from "effect"

const describeDecodeError = (error: HttpApiError.HttpApiDecodeError): string =>
  error.issues.length === 0
    ? error.message
    : error.issues.map((issue) => `invalid ${issue.path.join(".") || "request"}: ${issue.message}`).join("; ")

const hasTag = <Tag extends string>(error: unknown, tag: Tag): error is { readonly _tag: Tag } =>
  typeof error === "object" && error !== null && "_tag" in error && error._tag === tag

const isRouteNotFound = (error: unknown): error is HttpServerError.RouteNotFound => hasTag(error, "RouteNotFound")

const maxBodyBytes = 64 * 1024
const bodyTooLarge = `request body is larger than ${maxBodyBytes} bytes`

/** Why a request body could not be read (the contract reads it before decoding the payload). */
const describeUnreadableBody = (error: unknown): Option.Option<HttpServerResponse.HttpServerResponse> => {
  if (!hasTag(error, "RequestError") || !("cause" in error)) return Option.none()
  const cause = error.cause
  if (cause instanceof SyntaxError) {
    return Option.some(
      HttpServerResponse.text(`request body is not valid JSON: ${cause.message}`, { status: 400 })
    )
  }
  return Option.some(
    cause instanceof Error && cause.message === "maxBytes exceeded"
      ? HttpServerResponse.text(bodyTooLarge, { status: 413 })
      : HttpServerResponse.text("could not read the request body", { status: 400 })
  )
}

/**
 * Every body is read as JSON, whatever its content type (`curl --data` sends JSON as a form), and at most 64 KiB of
 * it (413). Requests the contract cannot decode (path names, identifiers, bodies) get a plain-text 400, and requests
 * for no endpoint a plain-text 404, as every other error.
 */
export const RequestDecoding = HttpApiBuilder.middleware((app) =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    if (Number(request.headers["content-length"] ?? 0) > maxBodyBytes) {
      return HttpServerResponse.text(bodyTooLarge, { status: 413 })
    }
    const asJson = HttpMethod.hasBody(request.method)
      ? request.modify({ headers: { ...request.headers, "content-type": "application/json" } })
      : request
    return yield* app.pipe(
      HttpIncomingMessage.withMaxBodySize(Option.some(FileSystem.Size(maxBodyBytes))),
      Effect.provideService(HttpServerRequest.HttpServerRequest, asJson)
    )
  }).pipe(
    Effect.catchAllCause((cause) => {
      const failure = Cause.failureOption(cause as Cause.Cause<unknown>)
      if (Option.isSome(failure)) {
        const error = failure.value
        if (error instanceof HttpApiError.HttpApiDecodeError) {
          return Effect.succeed(HttpServerResponse.text(describeDecodeError(error), { status: 400 }))
        }
        if (isRouteNotFound(error)) {
          return Effect.succeed(HttpServerResponse.text(
            `no endpoint ${error.request.method} ${error.request.url.split("?")[0]}: see /openapi.json`,
            { status: 404 }
          ))
        }
      }
      return Option.match(Option.flatMap(Cause.dieOption(cause), describeUnreadableBody), {
        onNone: () => Effect.failCause(cause),
        onSome: Effect.succeed
      })
    })
  )
)
