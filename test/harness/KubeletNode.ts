import type { CommandExecutor } from "@effect/platform"
import { FileSystem, Path } from "@effect/platform"
import type { PlatformError } from "@effect/platform/Error"
import { Clock, Duration, Effect, Ref } from "effect"
import type { Scope } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"
import type { Pki } from "./Certificates.ts"
import type { HttpsServerError } from "./HttpsServer.ts"
import { clientCommonName, respondJson, respondText, serveHttps } from "./HttpsServer.ts"
import type { NodeAgent } from "./NodeAgent.ts"

export interface KubeletRequest {
  readonly method: string
  readonly path: string
  /** The raw query string, without "?". */
  readonly query: string
  /** CN of the verified client certificate. */
  readonly clientCommonName: string | undefined
  /** The status answered; undefined while pending, or when the connection was closed without an answer. */
  readonly status?: number
  /** The archive written for a successful checkpoint. */
  readonly archive?: string
}

/**
 * Injected misbehaviour of checkpoint requests: answer 500, never answer, drop the connection, or answer 500 as CRI-O
 * does when runc could not freeze the container (every time, or the next time only).
 */
export type KubeletFault = "500" | "hang" | "close" | "pause" | "pause-once"

/** The container names of a pod bound to this node, or undefined if the kubelet does not know the pod. */
export type PodLookup = (namespace: string, pod: string) => Effect.Effect<ReadonlyArray<string> | undefined>

export interface KubeletNode {
  readonly nodeName: string
  readonly address: string
  readonly port: number
  /** https://ADDRESS:PORT */
  readonly url: string
  readonly caFile: string
  readonly serverCert: string
  /** A client certificate (signed by the same CA) for Checkpointer. */
  readonly clientCert: string
  readonly clientKey: string
  readonly checkpointsDir: string
  readonly requests: () => Effect.Effect<ReadonlyArray<KubeletRequest>>
  readonly setFault: (fault: KubeletFault | null) => Effect.Effect<void>
  /** A lying kubelet: checkpoint requests answer 200 with this path and write nothing (null: tell the truth). */
  readonly setArchiveAnswer: (path: string | null) => Effect.Effect<void>
  /** Accepts `Authorization: Bearer <token>` in place of a client certificate (the kubelet's webhook token auth). */
  readonly allowToken: (token: string) => Effect.Effect<void>
}

export interface KubeletNodeOptions {
  readonly nodeName: string
  /** A loopback address such as 127.0.0.1 or 127.0.0.2. */
  readonly address: string
  readonly pki: Pki
  readonly checkpointsDir: string
  /** Where the kubelet learns which pods it runs. */
  readonly lookupPod: PodLookup
  /** The node's runtime, which checkpoints the containers. */
  readonly agent: NodeAgent
  /** Used when the request has no (or a non-positive) timeout; the kubelet falls back to the CRI timeout (2 min). */
  readonly defaultTimeoutSeconds?: number
}

/** Go's time.RFC3339 in UTC, as the kubelet puts it into archive names: 2024-02-29T18:28:17Z */
const rfc3339 = (millis: number) => new Date(millis).toISOString().replace(/\.\d{3}Z$/, "Z")

/**
 * A kubelet-compatible HTTPS endpoint (client certificate required) whose `POST /checkpoint/{ns}/{pod}/{container}`
 * asks the node's container runtime for a CRI CheckpointContainer (the container goes on running), as the kubelet does.
 */
export const startKubeletNode = (
  options: KubeletNodeOptions
): Effect.Effect<
  KubeletNode,
  Error | PlatformError | HttpsServerError,
  CommandExecutor.CommandExecutor | FileSystem.FileSystem | Path.Path | Scope.Scope
> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const checkpointsDir = path.resolve(options.checkpointsDir)
    yield* fs.makeDirectory(checkpointsDir, { recursive: true, mode: 0o700 })
    const server = yield* options.pki.issue(`kubelet-${options.nodeName}`, {
      ips: [options.address],
      dns: [options.nodeName, "localhost"]
    })
    const client = yield* options.pki.issue(`checkpointer-client-${options.nodeName}`, { client: true })
    const [cert, key, ca] = yield* Effect.all([
      fs.readFileString(server.cert),
      fs.readFileString(server.key),
      fs.readFileString(options.pki.caFile)
    ])
    const log = yield* Ref.make<ReadonlyArray<KubeletRequest>>([])
    const fault = yield* Ref.make<KubeletFault | null>(null)
    const archiveAnswer = yield* Ref.make<string | null>(null)

    const knownContainers = options.lookupPod

    const checkpoint = (
      segments: { readonly namespace: string; readonly pod: string; readonly container: string },
      url: URL,
      answer: (status: number, body: string | { readonly items: ReadonlyArray<string> }) => Effect.Effect<void>
    ) =>
      Effect.gen(function*() {
        const { container, namespace, pod } = segments
        const containers = yield* knownContainers(namespace, pod)
        if (containers === undefined) return yield* answer(404, "pod does not exist")
        if (!containers.includes(container)) return yield* answer(404, `container ${container} does not exist`)
        const timeouts = url.searchParams.getAll("timeout")
        let timeoutSeconds = options.defaultTimeoutSeconds ?? 120
        if (timeouts.length > 0) {
          const last = timeouts[timeouts.length - 1]!
          if (!/^[+-]?\d+$/.test(last)) return yield* answer(404, "cannot parse value of timeout parameter")
          const parsed = Number.parseInt(last, 10)
          if (parsed > 0) timeoutSeconds = parsed
        }
        const archive = path.join(
          checkpointsDir,
          `checkpoint-${pod}_${namespace}-${container}-${rfc3339(yield* Clock.currentTimeMillis)}.tar`
        )
        return yield* options.agent.checkpoint({
          namespace,
          pod,
          container,
          archive,
          timeout: Duration.seconds(timeoutSeconds)
        }).pipe(
          Effect.matchEffect({
            onFailure: (failure) => answer(failure.status, failure.message),
            onSuccess: () => answer(200, { items: [archive] })
          })
        )
      })

    const tokens = yield* Ref.make<ReadonlySet<string>>(new Set())

    const handle = (request: IncomingMessage, response: ServerResponse) =>
      Effect.gen(function*() {
        const url = new URL(request.url ?? "/", "https://kubelet.invalid")
        const method = request.method ?? "GET"
        const index = yield* Ref.modify(log, (entries) => [entries.length, [...entries, {
          method,
          path: url.pathname,
          query: url.search.replace(/^\?/, ""),
          clientCommonName: clientCommonName(request)
        }]])
        const answer = (status: number, body: string | { readonly items: ReadonlyArray<string> }) =>
          Effect.zipRight(
            Effect.sync(() =>
              typeof body === "string" ? respondText(response, status, body) : respondJson(response, status, body)
            ),
            Ref.update(log, (entries) =>
              entries.map((entry, i) =>
                i !== index ? entry : typeof body === "string" ? { ...entry, status } : {
                  ...entry,
                  status,
                  archive: body.items[0]!
                }
              ))
          )
        // As the kubelet with anonymous auth off: a verified client certificate or an accepted bearer token, else 401.
        const certified = (request.socket as { readonly authorized?: boolean }).authorized === true
        const bearer = /^Bearer (\S+)$/.exec(request.headers.authorization ?? "")?.[1]
        if (!certified && (bearer === undefined || !(yield* Ref.get(tokens)).has(bearer))) {
          return yield* answer(401, "Unauthorized")
        }
        const segments = url.pathname.split("/").slice(1).map(decodeURIComponent)
        if (segments.length !== 4 || segments[0] !== "checkpoint" || segments.some((s) => s.length === 0)) {
          return yield* answer(404, "404 page not found")
        }
        if (method !== "POST") return yield* answer(405, "405: Method Not Allowed")
        const lie = yield* Ref.get(archiveAnswer)
        if (lie !== null) return yield* answer(200, { items: [lie] })
        switch (yield* Ref.get(fault)) {
          case "500":
            return yield* answer(500, `checkpointing of ${segments.slice(1).join("/")} failed (injected fault)`)
          case "hang":
            return yield* Effect.never
          case "close":
            return yield* Effect.sync(() => request.socket.destroy())
          case "pause-once":
          case "pause": {
            yield* Ref.update(fault, (current) => current === "pause-once" ? null : current)
            return yield* answer(
              500,
              `checkpointing of ${segments.slice(1).join("/")} failed (injected fault: rpc error: code = Unknown ` +
                "desc = failed to pause container before checkpointing: unable to freeze)"
            )
          }
          case null:
            return yield* checkpoint(
              { namespace: segments[1]!, pod: segments[2]!, container: segments[3]! },
              url,
              answer
            )
        }
      })

    const listening = yield* serveHttps({
      address: options.address,
      tls: { cert, key, ca, requestCert: true, rejectUnauthorized: false },
      handler: handle
    })
    return {
      nodeName: options.nodeName,
      address: listening.address,
      port: listening.port,
      url: listening.url,
      caFile: options.pki.caFile,
      serverCert: server.cert,
      clientCert: client.cert,
      clientKey: client.key,
      checkpointsDir,
      requests: () => Ref.get(log),
      setFault: (next) => Ref.set(fault, next),
      setArchiveAnswer: (path) => Ref.set(archiveAnswer, path),
      allowToken: (token) => Ref.update(tokens, (all) => new Set([...all, token]))
    } satisfies KubeletNode
  }).pipe(Effect.withSpan("KubeletNode.start", { attributes: { nodeName: options.nodeName } }))
