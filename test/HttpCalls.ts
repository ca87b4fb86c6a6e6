import { Effect } from "effect"

export interface Answer {
  readonly status: number
  readonly contentType: string
  readonly text: string
}

/** A plain HTTP call to a Checkpointer, as curl would make it. */
export const call = (url: string, init?: RequestInit) =>
  Effect.promise(async (): Promise<Answer> => {
    const response = await fetch(url, init)
    return { status: response.status, contentType: response.headers.get("content-type") ?? "", text: await response.text() }
  })

export const postCheckpoint = (base: string, path: string, body?: unknown) =>
  call(`${base}/checkpoint/${path}`, {
    method: "POST",
    ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { "content-type": "application/json" } })
  })

export const getResult = (base: string, identifier: string) =>
  call(`${base}/checkpoint?checkpointIdentifier=${encodeURIComponent(identifier)}`)
