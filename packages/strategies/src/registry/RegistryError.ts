import { transportReason } from "@checkpointer/core"
import type { HttpClientResponse } from "@effect/platform"
import { Data, Effect } from "effect"

/** A failure talking to a registry or its token server. Messages carry statuses and error codes, never secrets. */
export class RegistryError extends Data.TaggedError("RegistryError")<{
  readonly message: string
  readonly status?: number
  readonly code?: string
  readonly cause?: unknown
}> {}

const errorBodyCode = (body: string): { code?: string; detail?: string } => {
  try {
    const json = JSON.parse(body) as {
      errors?: ReadonlyArray<{ code?: unknown; message?: unknown }>
      details?: unknown
    }
    const first = json.errors?.[0]
    const code = typeof first?.code === "string" ? first.code : undefined
    const detail = typeof first?.message === "string"
      ? first.message
      : typeof json.details === "string"
      ? json.details
      : undefined
    return { ...(code === undefined ? {} : { code }), ...(detail === undefined ? {} : { detail }) }
  } catch {
    return {}
  }
}

const statusCodes: Record<number, string> = { 401: "UNAUTHORIZED", 403: "DENIED", 404: "NOT_FOUND" }

/** Status and the registry's error code of a failed response, e.g. `401 UNAUTHORIZED` or `400 DIGEST_INVALID: ...`. */
export const describeResponse = (response: HttpClientResponse.HttpClientResponse) =>
  response.text.pipe(
    Effect.orElseSucceed(() => ""),
    Effect.map((body) => {
      const { code, detail } = errorBodyCode(body)
      const shownCode = code ?? statusCodes[response.status]
      const summary = [String(response.status), shownCode].filter((part) => part !== undefined).join(" ")
      return {
        status: response.status,
        code: shownCode,
        summary: detail !== undefined && detail !== "" && response.status !== 401 ? `${summary}: ${detail}` : summary
      }
    })
  )

export const failedResponse = (
  what: string,
  response: HttpClientResponse.HttpClientResponse,
  anonymous = false
) =>
  Effect.flatMap(describeResponse(response), ({ code, status, summary }) => {
    const message = status === 401
      ? `registry ${anonymous ? "requires" : "refused"} credentials (${summary})`
      : status === 403
      ? `registry denied access (${summary})`
      : `${what} failed: registry answered ${summary}`
    return Effect.fail(new RegistryError({ message, status, ...(code === undefined ? {} : { code }) }))
  })

export const transportError = (what: string, url: string) => (cause: unknown) =>
  new RegistryError({ message: `${what} failed: cannot reach ${url} (${transportReason(cause)})`, cause })
