import type { HttpClient } from "@effect/platform"
import { HttpClientRequest } from "@effect/platform"
import { Clock, Effect, Option, Redacted, Ref } from "effect"
import type { Credentials } from "./DockerConfig.ts"
import { failedResponse, RegistryError, transportError } from "./RegistryError.ts"
import { parseWwwAuthenticate } from "./WwwAuthenticate.ts"
import type { Challenge } from "./WwwAuthenticate.ts"

/** A Bearer token and when it is to be renewed, shortly before it expires (epoch milliseconds). */
export interface BearerToken {
  readonly value: Redacted.Redacted<string>
  readonly renewAtMillis: number
}

/** The token specification's lifetime of a token that does not say (`expires_in` absent). */
const defaultTokenSeconds = 60
/** A token is renewed this long before it expires (at most half its lifetime), so no request carries a stale one. */
const renewalMarginMillis = 10_000

/**
 * Asks a Bearer challenge's realm for a token for `scopes`, with Basic credentials when there are any; its expiry
 * comes from `expires_in`.
 */
export const fetchToken = (
  http: HttpClient.HttpClient,
  challenge: Challenge,
  scopes: ReadonlyArray<string>,
  credentials: Option.Option<Credentials>
) =>
  Effect.gen(function*() {
    const realm = challenge.params.realm
    if (realm === undefined || !/^https?:\/\//.test(realm)) {
      return yield* new RegistryError({ message: "registry sent a Bearer challenge without a usable realm" })
    }
    let request = HttpClientRequest.get(realm).pipe(HttpClientRequest.acceptJson)
    if (challenge.params.service !== undefined) {
      request = HttpClientRequest.appendUrlParam(request, "service", challenge.params.service)
    }
    for (const scope of scopes) request = HttpClientRequest.appendUrlParam(request, "scope", scope)
    if (Option.isSome(credentials)) {
      const { password, username } = credentials.value
      request = HttpClientRequest.basicAuth(request, username, Redacted.value(password))
    }
    const response = yield* http.execute(request).pipe(Effect.mapError(transportError("token request", realm)))
    if (response.status !== 200) {
      return yield* failedResponse("token request", response, Option.isNone(credentials))
    }
    const body = yield* response.json.pipe(
      Effect.mapError((cause) =>
        new RegistryError({ message: "token server answered something that is not JSON", cause })
      )
    )
    const { access_token, expires_in, token } = (typeof body === "object" && body !== null ? body : {}) as Record<
      string,
      unknown
    >
    const value = typeof token === "string" && token !== "" ? token : access_token
    if (typeof value !== "string" || value === "") {
      return yield* new RegistryError({ message: "token server answered without a token" })
    }
    const lifetimeMillis = (typeof expires_in === "number" && expires_in > 0 ? expires_in : defaultTokenSeconds) * 1000
    const renewAt = lifetimeMillis - Math.min(renewalMarginMillis, lifetimeMillis / 2)
    return {
      value: Redacted.make(value),
      renewAtMillis: (yield* Clock.currentTimeMillis) + renewAt
    } satisfies BearerToken
  })

interface AuthState {
  readonly scheme: "none" | "basic" | "bearer"
  readonly challenge: Option.Option<Challenge>
  readonly tokens: ReadonlyMap<string, BearerToken>
}

/**
 * Authorization against one registry: nothing until the registry asks, then Basic credentials or a Bearer token for
 * `scope` (`repository:<repo>:pull,push`), kept until shortly before it expires (then a new one is asked for).
 */
export const makeAuthenticator = (options: {
  readonly http: HttpClient.HttpClient
  readonly credentials: Option.Option<Credentials>
  readonly scope: string
}) =>
  Effect.gen(function*() {
    const state = yield* Ref.make<AuthState>({ scheme: "none", challenge: Option.none(), tokens: new Map() })

    // One token request at a time: requests sent together (a layer's and a config's upload) share the token.
    const oneAtATime = yield* Effect.makeSemaphore(1)
    const token = oneAtATime.withPermits(1)(Effect.gen(function*() {
      const current = yield* Ref.get(state)
      const cached = current.tokens.get(options.scope)
      if (cached !== undefined && (yield* Clock.currentTimeMillis) < cached.renewAtMillis) return cached.value
      if (Option.isNone(current.challenge)) {
        return yield* new RegistryError({ message: "registry asked for a Bearer token without a challenge" })
      }
      const fresh = yield* fetchToken(options.http, current.challenge.value, [options.scope], options.credentials)
      yield* Ref.update(state, (s) => ({ ...s, tokens: new Map([...s.tokens, [options.scope, fresh]]) }))
      return fresh.value
    }))

    const authorize = (request: HttpClientRequest.HttpClientRequest) =>
      Effect.gen(function*() {
        const { scheme } = yield* Ref.get(state)
        if (scheme === "basic" && Option.isSome(options.credentials)) {
          const { password, username } = options.credentials.value
          return HttpClientRequest.basicAuth(request, username, Redacted.value(password))
        }
        if (scheme === "bearer") return HttpClientRequest.bearerToken(request, Redacted.value(yield* token))
        return request
      })

    /** Takes a 401's challenges into account; tells whether a retry can succeed. */
    const challenged = (header: string | undefined) =>
      Effect.gen(function*() {
        const challenges = parseWwwAuthenticate(header ?? "")
        const bearer = challenges.find((challenge) => challenge.scheme === "bearer")
        const basic = challenges.find((challenge) => challenge.scheme === "basic")
        const previous = yield* Ref.get(state)
        if (bearer !== undefined) {
          yield* Ref.set(state, { scheme: "bearer" as const, challenge: Option.some(bearer), tokens: new Map() })
          return true
        }
        if (basic !== undefined) {
          yield* Ref.set(state, { ...previous, scheme: "basic" as const, challenge: Option.some(basic) })
          return previous.scheme !== "basic" && Option.isSome(options.credentials)
        }
        return false
      })

    return { authorize, challenged } as const
  })

export type Authenticator = Effect.Effect.Success<ReturnType<typeof makeAuthenticator>>
