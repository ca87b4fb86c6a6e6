import { reasonOf } from "@checkpointer/core"
import { FileSystem, HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Agent } from "@effect/platform-node/Undici"
import { Config, ConfigError, Effect, Option } from "effect"
import { rootCertificates } from "node:tls"

/** REGISTRY_CA_FILE (an extra CA, PEM) and REGISTRY_INSECURE (plain HTTP or unverified TLS allowed). */
export const registryTrustConfig = Config.all({
  caFile: Config.option(Config.string("REGISTRY_CA_FILE")),
  insecure: Config.withDefault(Config.boolean("REGISTRY_INSECURE"), false)
})

/** The PEM text of REGISTRY_CA_FILE, read at startup: an unreadable file is a startup error naming the variable. */
export const readRegistryCa = (caFile: Option.Option<string>) =>
  Option.match(caFile, {
    onNone: () => Effect.succeed(Option.none<string>()),
    onSome: (path) =>
      Effect.flatMap(FileSystem.FileSystem, (fs) => fs.readFileString(path)).pipe(
        Effect.map(Option.some),
        Effect.mapError((error) =>
          ConfigError.InvalidData(["REGISTRY_CA_FILE"], `cannot read ${path} (${reasonOf(error)})`)
        )
      )
  })

/**
 * An HTTP client for registries and their token servers, trusting the system's CAs and `extraCa`, or verifying
 * nothing when `insecure`; its connections are closed with the scope.
 */
export const registryHttpClient = (options: {
  readonly extraCa: Option.Option<string>
  readonly insecure: boolean
  readonly userAgent: string
}) =>
  Effect.acquireRelease(
    Effect.sync(() =>
      new Agent({
        connect: {
          ...Option.match(options.extraCa, {
            onNone: () => ({}),
            onSome: (pem) => ({ ca: [...rootCertificates, pem] })
          }),
          rejectUnauthorized: !options.insecure
        }
      })
    ),
    (agent) => Effect.promise(() => agent.destroy())
  ).pipe(
    Effect.map((dispatcher) =>
      NodeHttpClient.makeUndici(dispatcher).pipe(
        HttpClient.mapRequest(HttpClientRequest.setHeader("user-agent", options.userAgent))
      )
    )
  )
