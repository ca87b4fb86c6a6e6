import { FileSystem, HttpClientRequest, HttpClientResponse } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Data, Duration, Effect, Layer, Option, Schedule, Schema } from "effect"
import { kubeletConfig } from "../config/Config.ts"
import type { ContainerRef } from "../domain/Domain.ts"
import { ContainerMissing, PhaseFailed } from "../domain/Errors.ts"
import { transportReason } from "../domain/Reason.ts"

const CheckpointResponse = Schema.Struct({ items: Schema.NonEmptyArray(Schema.String) })

const failed = (message: string, cause?: unknown) => new PhaseFailed({ phase: "kubelet", message, cause })

/**
 * The runtime could not freeze the container before dumping it (runc's cgroup v1 freezer races with a process that
 * forks, more often under load). Nothing was dumped and runc thawed the container, so the kubelet is asked again.
 */
class PauseFailed extends Data.TaggedError("PauseFailed")<{ readonly message: string }> {}
const pauseFailure = /failed to pause container/
const pauseRetries = Schedule.exponential("250 millis").pipe(Schedule.intersect(Schedule.recurs(2)))

/**
 * The kubelet checkpoint API of this node: `POST /checkpoint/{ns}/{pod}/{container}?timeout=N` over HTTPS with the
 * client certificate. Answers the path of the archive the kubelet wrote.
 */
export class KubeletService extends Effect.Service<KubeletService>()("checkpointer/KubeletService", {
  effect: Effect.gen(function*() {
    const config = yield* kubeletConfig
    const fs = yield* FileSystem.FileSystem
    const readPem = (path: string, what: string) =>
      fs.readFileString(path).pipe(
        Effect.mapError((cause) => failed(`cannot read the kubelet ${what} ${path}: ${cause.message}`, cause))
      )
    const ca: Effect.Effect<{ readonly ca?: string }, PhaseFailed> = Option.match(config.caFile, {
      onNone: () => Effect.succeed({}),
      onSome: (file) => Effect.map(readPem(file, "CA file"), (pem) => ({ ca: pem }))
    })
    // KUBELET_AUTH=token: the service-account token (RBAC `create` on nodes/checkpoint), not a client certificate.
    const credentials: Effect.Effect<
      { readonly ca?: string; readonly cert?: string; readonly key?: string },
      PhaseFailed
    > = config.auth === "token"
      ? ca
      : Effect.all({
        cert: readPem(config.certFile, "client certificate"),
        key: readPem(config.keyFile, "client key"),
        ca
      }).pipe(Effect.map(({ ca, cert, key }) => ({ cert, key, ...ca })))
    const authorization = config.auth === "token"
      ? fs.readFileString(config.tokenFile).pipe(
        Effect.map((token) => HttpClientRequest.bearerToken(token.trim())),
        Effect.mapError((cause) => failed(`cannot read the token file ${config.tokenFile}: ${cause.message}`, cause))
      )
      : Effect.succeed((request: HttpClientRequest.HttpClientRequest) => request)
    const baseUrl = `https://${config.nodeIp.includes(":") ? `[${config.nodeIp}]` : config.nodeIp}:${config.port}`

    // Certificates and tokens are read per request: Kubernetes rotates mounted Secrets and tokens in place.
    const client = credentials.pipe(
      Effect.flatMap((tls) =>
        NodeHttpClient.makeAgent({ ...tls, rejectUnauthorized: !config.allowInsecure, keepAlive: false })
      ),
      Effect.flatMap((agent) => Effect.provideService(NodeHttpClient.make, NodeHttpClient.HttpAgent, agent))
    )

    const checkpoint = Effect.fn("KubeletService.checkpoint")(function*(container: ContainerRef) {
      const deadline = Duration.seconds(config.timeoutSeconds + Math.min(15, 5 + config.timeoutSeconds))
      const url = `${baseUrl}/checkpoint/${encodeURIComponent(container.namespace)}/${
        encodeURIComponent(container.pod)
      }/${encodeURIComponent(container.container)}`
      const request = HttpClientRequest.post(url).pipe(
        HttpClientRequest.setUrlParam("timeout", String(config.timeoutSeconds))
      )
      return yield* Effect.scoped(Effect.gen(function*() {
        const http = yield* client
        const response = yield* http.execute((yield* authorization)(request)).pipe(
          Effect.mapError((cause) => failed(`kubelet at ${baseUrl} unreachable: ${transportReason(cause)}`, cause))
        )
        if (response.status === 404) {
          return yield* new ContainerMissing({
            container,
            message: `container ${container} not found on node ${config.node}`
          })
        }
        if (response.status !== 200) {
          const text = yield* response.text.pipe(Effect.orElseSucceed(() => ""))
          const message = `kubelet answered ${response.status}: ${text.trim().slice(0, 500)}`
          return yield* response.status === 500 && pauseFailure.test(text)
            ? new PauseFailed({ message })
            : failed(message)
        }
        const body = yield* HttpClientResponse.schemaBodyJson(CheckpointResponse)(response).pipe(
          Effect.mapError((cause) => failed(`kubelet answered an unexpected body: ${cause.message}`, cause))
        )
        return body.items[0]
      })).pipe(
        // The kubelet gets its own timeout plus a margin to answer before we give up on it.
        Effect.timeoutFail({
          duration: deadline,
          onTimeout: () => failed(`kubelet did not answer within ${Duration.format(deadline)}`)
        }),
        Effect.tapErrorTag(
          "PauseFailed",
          (error) =>
            Effect.logWarning("the runtime could not pause the container").pipe(
              Effect.annotateLogs({ reason: error.message })
            )
        ),
        Effect.retry({ schedule: pauseRetries, while: (error) => error._tag === "PauseFailed" }),
        Effect.catchTag("PauseFailed", (error) => failed(error.message)),
        Effect.annotateLogs({ service: "KubeletService", container: String(container) })
      )
    })

    return { checkpoint } as const
  })
}) {}

/** A kubelet that answers the given archive path (or failure) without any network, for tests of the orchestration. */
export const KubeletServiceTest = (
  checkpoint: (container: ContainerRef) => Effect.Effect<string, ContainerMissing | PhaseFailed>
) => Layer.succeed(KubeletService, KubeletService.make({ checkpoint }))
