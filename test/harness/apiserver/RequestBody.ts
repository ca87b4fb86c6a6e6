import { Effect } from "effect"
import type { IncomingMessage } from "node:http"
import { readBody } from "../HttpsServer.ts"
import { badRequest } from "./Status.ts"

/** The request's JSON object; an empty body is `{}`. */
export const readJson = (request: IncomingMessage) =>
  readBody(request).pipe(
    Effect.mapError((error) => badRequest(error.message)),
    Effect.flatMap((text) =>
      Effect.try({
        try: () => (text.trim().length === 0 ? {} : JSON.parse(text)) as Record<string, unknown>,
        catch: () => badRequest("the body of the request was in an unknown format")
      })
    )
  )

export const asRecord = (value: unknown): Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value) ? value as Record<string, unknown> : {}

/** The string-valued entries of an object (labels, annotations, stringData). */
export const asStringMap = (value: unknown): Readonly<Record<string, string>> | undefined => {
  if (typeof value !== "object" || value === null) return undefined
  return Object.fromEntries(
    Object.entries(value).filter((entry): entry is [string, string] => typeof entry[1] === "string")
  )
}
