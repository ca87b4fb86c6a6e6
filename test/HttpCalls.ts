import { Effect } from "effect"
import { request as httpsRequest } from "node:https"

export interface Answer {
  readonly status: number
  readonly contentType: string
  readonly text: string
}

/** A plain HTTP call to a Checkpointer, as curl would make it. */
export const call = (url: string, init?: RequestInit) =>
  Effect.promise(async (): Promise<Answer> => {
    const response = await fetch(url, init)
    return {
      status: response.status,
      contentType: response.headers.get("content-type") ?? "",
      text: await response.text()
    }
  })

export const postCheckpoint = (base: string, path: string, body?: unknown) =>
  call(`${base}/checkpoint/${path}`, {
    method: "POST",
    ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { "content-type": "application/json" } })
  })

export const postRestore = (base: string, body: unknown) =>
  call(`${base}/restore`, {
    method: "POST",
    body: JSON.stringify(body),
    headers: { "content-type": "application/json" }
  })

export const getResult = (base: string, identifier: string) =>
  call(`${base}/checkpoint?checkpointIdentifier=${encodeURIComponent(identifier)}`)

/** A call to a Checkpointer that serves HTTPS, verified with `ca` (PEM), as curl --cacert would make it. */
export const callTls = (
  url: string,
  ca: string,
  init?: { readonly method?: string; readonly headers?: Record<string, string>; readonly body?: string }
) =>
  Effect.async<Answer, Error>((resume) => {
    const options = { method: init?.method ?? "GET", headers: init?.headers ?? {}, ca }
    const request = httpsRequest(url, options, (response) => {
      const chunks: Array<Buffer> = []
      response.on("data", (chunk: Buffer) => chunks.push(chunk))
      response.on("end", () =>
        resume(Effect.succeed({
          status: response.statusCode ?? 0,
          contentType: String(response.headers["content-type"] ?? ""),
          text: Buffer.concat(chunks).toString()
        })))
    })
    request.on("error", (error) => resume(Effect.fail(error)))
    request.end(init?.body)
  })
