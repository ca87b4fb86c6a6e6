import { Effect } from "effect"
import type { IncomingMessage } from "node:http"
import type { Duplex } from "node:stream"
import type { ContainerStreams } from "../PodRuntime.ts"
import { makeAttachServer } from "../PodRuntime.ts"
import { describeRequest } from "./RequestLog.ts"
import type { RequestLog } from "./RequestLog.ts"
import { keyOf } from "./Resources.ts"
import { pathSegments } from "./Router.ts"
import type { Store } from "./Store.ts"

const refuse = (socket: Duplex, statusLine: string) =>
  socket.end(`HTTP/1.1 ${statusLine}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`)

/**
 * The `attach` subresource of pods: `GET .../namespaces/{ns}/pods/{name}/attach` with a WebSocket upgrade; any other
 * upgrade is refused. Every upgrade is logged with the status it was answered with.
 */
export const makePodAttach = (options: {
  readonly store: Store
  readonly streams: ContainerStreams
  readonly requestLog: RequestLog
  readonly token: string
}) => {
  const attachServer = makeAttachServer(options.streams)

  const onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    const { entry, url } = describeRequest(request, options.token)
    const segments = pathSegments(url)
    const [api, version, namespaces, namespace, pods, name, attach] = segments
    const isAttach = segments.length === 7 && api === "api" && version === "v1" && namespaces === "namespaces" &&
      pods === "pods" && attach === "attach"
    const pod = isAttach ? Effect.runSync(options.store.state).pods.get(keyOf(namespace!, name!)) : undefined
    const status = !entry.authorized
      ? (refuse(socket, "401 Unauthorized"), 401)
      : !isAttach
      ? (refuse(socket, "404 Not Found"), 404)
      : attachServer.upgrade({ request, socket, head, url, pod, name: name! })
    Effect.runSync(options.requestLog.record({ ...entry, status }))
  }

  /** Ends the attach sessions: they would keep the server open. */
  return { onUpgrade, close: attachServer.close } as const
}
