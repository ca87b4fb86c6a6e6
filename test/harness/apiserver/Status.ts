import { Data } from "effect"

/** A `Status` object, the body of every failed call. */
export const statusBody = (
  code: number,
  reason: string,
  message: string,
  details?: { readonly name?: string; readonly kind?: string }
) => ({
  kind: "Status",
  apiVersion: "v1",
  metadata: {},
  status: "Failure",
  message,
  reason,
  ...(details === undefined ? {} : { details }),
  code
})

/** A call answered with a failure `Status`. */
export class ApiFailure extends Data.TaggedError("ApiFailure")<{ readonly body: ReturnType<typeof statusBody> }> {}

export const failure = (code: number, reason: string, message: string) =>
  new ApiFailure({ body: statusBody(code, reason, message) })

export const unknownResource = () => failure(404, "NotFound", "the server could not find the requested resource")

export const methodNotAllowed = () =>
  failure(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

export const notFound = (kind: string, name: string) =>
  new ApiFailure({ body: statusBody(404, "NotFound", `${kind} "${name}" not found`, { name, kind }) })

export const badRequest = (message: string) => failure(400, "BadRequest", message)

export const alreadyExists = (kind: string, name: string) =>
  new ApiFailure({ body: statusBody(409, "AlreadyExists", `${kind} "${name}" already exists`, { name, kind }) })

export const invalid = (message: string, details: { readonly name?: string; readonly kind: string }) =>
  new ApiFailure({ body: statusBody(422, "Invalid", message, details) })
