import { HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Agent } from "@effect/platform-node/Undici"
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
 * An HTTP client for registries that trusts REGISTRY_CA_FILE too; its connections close with the scope. The trust is
 * one TLS context shared by every connection: given `ca` instead, each new connection would parse Node's ~150 root
 * certificates again (about 5 ms of CPU and 1 MiB of memory per connection).
 */
export const registryHttpClient = Effect.fn("RegistryHttp.client")(
  function*(access: RegistryAccess, userAgent: string) {
    const extraCa = yield* readRegistryCa(access.caFile)
    const trust = Option.map(extraCa, (pem) => createSecureContext({ ca: [...rootCertificates, pem] }))
    const dispatcher = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new Agent({
          connect: {
            ...Option.match(trust, { onNone: () => ({}), onSome: (secureContext) => ({ secureContext }) }),
            rejectUnauthorized: !access.insecure
          }
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
