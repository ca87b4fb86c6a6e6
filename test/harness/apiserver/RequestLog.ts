import { Effect, Ref } from "effect"
import type { IncomingMessage } from "node:http"

export interface ApiRequest {
  readonly method: string
  readonly path: string
  /** The raw query string, without "?". */
  readonly query: string
  readonly authorized: boolean
  /** undefined while pending; 200 for a watch as soon as its stream has started. */
  readonly status?: number
}

/** What the log records of a request as it arrives, and the URL it was for. */
export const describeRequest = (request: IncomingMessage, token: string) => {
  const url = new URL(request.url ?? "/", "https://apiserver.invalid")
  const entry: ApiRequest = {
    method: request.method ?? "GET",
    path: url.pathname,
    query: url.search.replace(/^\?/, ""),
    authorized: request.headers.authorization === `Bearer ${token}`
  }
  return { url, entry }
}

/** Every request the API server received, in order, with the status it was answered with. */
export const makeRequestLog = Effect.gen(function*() {
  const log = yield* Ref.make<ReadonlyArray<ApiRequest>>([])

  /** Appends a request; what it returns records the status it is answered with. */
  const record = (entry: ApiRequest) =>
    Effect.map(
      Ref.modify(log, (entries) => [entries.length, [...entries, entry]]),
      (index) => (status: number) =>
        Ref.update(log, (entries) => entries.map((logged, i) => i === index ? { ...logged, status } : logged))
    )

  return { requests: Ref.get(log), record } as const
})

export type RequestLog = Effect.Effect.Success<typeof makeRequestLog>
