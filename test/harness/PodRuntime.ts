import { Effect, Queue, Stream, Take } from "effect"
import type { Option } from "effect"
import type { IncomingMessage } from "node:http"
import { STATUS_CODES } from "node:http"
import type { Duplex } from "node:stream"
import { WebSocketServer } from "ws"
import type { RawData, WebSocket } from "ws"
import type { Pod, PodContainer, PodStatus } from "./apiserver/Resources.ts"

/** What a node agent sees of a pod it runs. */
export interface PodHandle {
  readonly pod: Pod
  /** The grace period of the pod's deletion once it is being deleted (its spec's until then). */
  readonly graceSeconds: Effect.Effect<number>
  /** Replaces the pod's status (published on watches); a pod already gone is ignored. */
  readonly setStatus: (update: (status: PodStatus) => PodStatus) => Effect.Effect<void>
  /** What attach sessions write to the container's stdin; ends when stdin closes (stdinOnce: when the first ends). */
  readonly stdin: (container: string) => Stream.Stream<Uint8Array>
  /** Appends to the container's log (served at `.../pods/{name}/log`, sent to attached stdout). */
  readonly log: (container: string, text: string) => Effect.Effect<void>
  /** The decoded data of a secret in the pod's namespace. */
  readonly secret: (name: string) => Effect.Effect<Option.Option<Readonly<Record<string, string>>>>
  /** An event about the pod, as the kubelet reports them (`kubectl describe pod` lists them). */
  readonly report: (type: "Normal" | "Warning", reason: string, message: string) => Effect.Effect<void>
}

/** A node agent: runs the pods it accepts; the run is interrupted when the pod is deleted. */
export interface PodRunner {
  readonly accepts: (pod: Pod) => boolean
  readonly run: (handle: PodHandle) => Effect.Effect<void>
}

/** An answer forced on every pod creation, e.g. 403 Forbidden or 422 Invalid. */
export interface CreateFault {
  readonly code: number
  readonly reason: string
  readonly message: string
}

interface ContainerIo {
  readonly stdin: Queue.Queue<Take.Take<Uint8Array>>
  stdinOpen: boolean
  log: string
  exited: boolean
  readonly listeners: Set<(text: string) => void>
  readonly onExit: Set<() => void>
}

/** The streams of the containers of created pods: stdin fed by attach sessions, logs, exits. */
export const makeContainerStreams = () => {
  const ios = new Map<string, ContainerIo>()
  const key = (pod: Pod, container: string) => `${pod.metadata.uid}/${container}`

  const ioOf = (pod: Pod, container: string): ContainerIo => {
    const found = ios.get(key(pod, container))
    if (found !== undefined) return found
    const created: ContainerIo = {
      stdin: Effect.runSync(Queue.unbounded<Take.Take<Uint8Array>>()),
      stdinOpen: true,
      log: "",
      exited: false,
      listeners: new Set(),
      onExit: new Set()
    }
    ios.set(key(pod, container), created)
    return created
  }

  const closeStdin = (io: ContainerIo) => {
    if (!io.stdinOpen) return
    io.stdinOpen = false
    Queue.unsafeOffer(io.stdin, Take.end)
  }

  const appendLog = (io: ContainerIo, text: string) => {
    io.log += text
    for (const listener of io.listeners) listener(text)
  }

  const markExited = (pod: Pod) =>
    Effect.sync(() => {
      for (const container of pod.spec.containers) {
        const io = ioOf(pod, container.name)
        io.exited = true
        closeStdin(io)
        for (const callback of io.onExit) callback()
      }
    })

  const stdinOf = (pod: Pod, container: string) =>
    Stream.suspend(() => Stream.fromQueue(ioOf(pod, container).stdin).pipe(Stream.flattenTake))

  const logOf = (pod: Pod, container: string) => ios.get(key(pod, container))?.log ?? ""

  const forget = (pod: Pod) =>
    Effect.sync(() => {
      for (const container of pod.spec.containers) ios.delete(key(pod, container.name))
    })

  return { ioOf, closeStdin, appendLog, markExited, stdinOf, logOf, forget } as const
}

export type ContainerStreams = ReturnType<typeof makeContainerStreams>

/** The last `lines` lines of a log, as `kubectl logs --tail` gives them. */
export const tailLines = (text: string, lines: number | undefined) => {
  if (lines === undefined) return text
  const all = text.endsWith("\n") ? text.slice(0, -1).split("\n") : text.split("\n")
  if (all.length === 1 && all[0] === "") return ""
  return lines === 0 ? "" : all.slice(-lines).join("\n") + "\n"
}

const protocols = ["v5.channel.k8s.io", "v4.channel.k8s.io"]

const refuse = (socket: Duplex, code: number, body: unknown) => {
  const json = JSON.stringify(body)
  socket.end(
    `HTTP/1.1 ${code} ${STATUS_CODES[code] ?? ""}\r\ncontent-type: application/json\r\n` +
      `content-length: ${Buffer.byteLength(json)}\r\nconnection: close\r\n\r\n${json}`
  )
}

const asBuffer = (data: RawData): Buffer =>
  Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data)

/**
 * Pod attach over WebSocket, the way the API server and kubelet speak it to @kubernetes/client-node: subprotocol
 * v5.channel.k8s.io or v4.channel.k8s.io, each binary message's first byte is the stream (0 stdin, 1 stdout, 2 stderr,
 * 3 error); v5 closes stdin with the message [255, 0]. When the container exits, a Status goes on stream 3 and the
 * connection closes.
 */
export const makeAttachServer = (streams: ContainerStreams) => {
  const sockets = new Set<WebSocket>()
  const server = new WebSocketServer({
    noServer: true,
    handleProtocols: (offered) => protocols.find((protocol) => offered.has(protocol)) ?? false
  })

  const session = (
    ws: WebSocket,
    pod: Pod,
    container: PodContainer,
    flags: { readonly stdin: boolean; readonly stdout: boolean; readonly stderr: boolean }
  ) => {
    sockets.add(ws)
    const io = streams.ioOf(pod, container.name)
    const send = (stream: number, data: Buffer) => {
      if (ws.readyState === ws.OPEN) ws.send(Buffer.concat([Buffer.from([stream]), data]))
    }
    const onOutput = (text: string) => send(1, Buffer.from(text, "utf8"))
    const onExit = () => {
      send(3, Buffer.from(JSON.stringify({ metadata: {}, status: "Success" })))
      ws.close(1000)
    }
    if (flags.stdout) io.listeners.add(onOutput)
    io.onExit.add(onExit)
    ws.on("message", (data) => {
      const bytes = asBuffer(data)
      if (bytes.length === 0) return
      if (bytes[0] === 0 && flags.stdin && io.stdinOpen && bytes.length > 1) {
        Queue.unsafeOffer(io.stdin, Take.of(Uint8Array.from(bytes.subarray(1))))
      } else if (ws.protocol === protocols[0] && bytes[0] === 255 && bytes[1] === 0) {
        streams.closeStdin(io)
      }
    })
    ws.on("close", () => {
      sockets.delete(ws)
      io.listeners.delete(onOutput)
      io.onExit.delete(onExit)
      if (flags.stdin && container["stdinOnce"] === true) streams.closeStdin(io)
    })
    if (io.exited) onExit()
  }

  /** Handles an upgrade for `.../pods/{name}/attach`; `status` is what was answered (101 when attached). */
  const upgrade = (options: {
    readonly request: IncomingMessage
    readonly socket: Duplex
    readonly head: Buffer
    readonly url: URL
    readonly pod: Pod | undefined
    readonly name: string
  }): number => {
    const { name, pod, socket, url } = options
    const status = (code: number, reason: string, message: string) => {
      refuse(socket, code, { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason, code })
      return code
    }
    if (pod === undefined) return status(404, "NotFound", `pods "${name}" not found`)
    const containerName = url.searchParams.get("container") ?? pod.spec.containers[0]?.name ?? ""
    const container = pod.spec.containers.find((candidate) => candidate.name === containerName)
    if (container === undefined) {
      return status(400, "BadRequest", `container ${containerName} is not valid for pod ${name}`)
    }
    const phase = pod.status.phase
    if (phase === "Succeeded" || phase === "Failed") {
      return status(400, "BadRequest", `cannot attach to a container in a completed pod; current phase is ${phase}`)
    }
    if (phase !== "Running") {
      return status(400, "BadRequest", `unable to upgrade connection: container not found ("${containerName}")`)
    }
    const flag = (key: string) => ["true", "1"].includes(url.searchParams.get(key) ?? "")
    const flags = { stdin: flag("stdin"), stdout: flag("stdout"), stderr: flag("stderr") }
    if (flags.stdin && container["stdin"] !== true) {
      return status(400, "BadRequest", `stdin is not enabled for container ${containerName} in pod ${name}`)
    }
    server.handleUpgrade(options.request, socket, options.head, (ws) => session(ws, pod, container, flags))
    return 101
  }

  const close = Effect.sync(() => {
    for (const socket of sockets) socket.terminate()
    server.close()
  })

  return { upgrade, close } as const
}

export const decodeSecretData = (data: Readonly<Record<string, string>>): Readonly<Record<string, string>> =>
  Object.fromEntries(Object.entries(data).map(([key, value]) => [key, Buffer.from(value, "base64").toString("utf8")]))
