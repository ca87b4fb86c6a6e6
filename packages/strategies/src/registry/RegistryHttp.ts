import { HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Agent, buildConnector } from "@effect/platform-node/Undici"
import { Config, Effect, Option } from "effect"
import { createSecureContext, rootCertificates } from "node:tls"
import { credentialsFor, readAuthFile } from "./DockerConfig.ts"
import type { ImageReference } from "./OciRegistry.ts"
import { readRegistryCa, registryTrustConfig } from "./RegistryTrust.ts"

/** How this process reaches registries: REGISTRY_AUTH_FILE, REGISTRY_CA_FILE and REGISTRY_INSECURE. */
export interface RegistryAccess {
  /** Docker config JSON with `auths` (REGISTRY_AUTH_FILE). */
  readonly authFile: Option.Option<string>
  /** Extra CA certificates (PEM) trusted for registries and token servers (REGISTRY_CA_FILE). */
  readonly caFile: Option.Option<string>
  /** Plain HTTP allowed and TLS left unverified (REGISTRY_INSECURE). */
  readonly insecure: boolean
}

export const registryAccessConfig: Config.Config<RegistryAccess> = Config.all({
  authFile: Config.option(Config.string("REGISTRY_AUTH_FILE")),
  trust: registryTrustConfig
}).pipe(Config.map(({ authFile, trust }) => ({ authFile, ...trust })))

/**
 * Connections that trust REGISTRY_CA_FILE besides Node's root certificates, through one TLS context made when the
 * first connection needs it. Given `ca` instead, each new connection would parse the ~150 root certificates again
 * (about 5 ms of CPU and 1 MiB of memory); made at start, the context would hold 1.7 MiB in a server yet to push.
 */
const trustingConnector = (ca: string, rejectUnauthorized: boolean): buildConnector.connector => {
  let connector: buildConnector.connector | undefined
  return (options, callback) => {
    connector ??= buildConnector({
      allowH2: false,
      secureContext: createSecureContext({ ca: [...rootCertificates, ca] }),
      rejectUnauthorized
    })
    connector(options, callback)
  }
}

/**
 * An HTTP client for registries that trusts REGISTRY_CA_FILE too; its connections close with the scope. It speaks
 * HTTP/1.1 only: a 260 MiB blob upload took 1.2 to 2 times as long over HTTP/2 (one stream, flow-controlled).
 */
export const registryHttpClient = Effect.fn("RegistryHttp.client")(
  function*(access: RegistryAccess, userAgent: string) {
    const extraCa = yield* readRegistryCa(access.caFile)
    const rejectUnauthorized = !access.insecure
    const dispatcher = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new Agent({
          allowH2: false,
          connect: Option.match(extraCa, {
            onNone: () => ({ rejectUnauthorized }),
            onSome: (ca) => trustingConnector(ca, rejectUnauthorized)
          })
        })
      ),
      (agent) => Effect.promise(() => agent.destroy())
    )
    return NodeHttpClient.makeUndici(dispatcher).pipe(
      HttpClient.mapRequest(HttpClientRequest.setHeader("user-agent", userAgent))
    )
  }
)

/** The credentials REGISTRY_AUTH_FILE holds for the image's registry (read each time: the file may be rotated). */
export const credentialsOf = (access: RegistryAccess, reference: ImageReference) =>
  Option.match(access.authFile, {
    onNone: () => Effect.succeed(Option.none()),
    onSome: (path) => Effect.map(readAuthFile(path), (config) => credentialsFor(config, reference.domain))
  })
