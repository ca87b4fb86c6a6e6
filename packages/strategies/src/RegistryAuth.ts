import { FileSystem } from "@effect/platform"
import type { PlatformError } from "@effect/platform/Error"
import type { HttpClient, HttpClientResponse } from "@effect/platform"
import { HttpClientRequest } from "@effect/platform"
import { Config, ConfigError, Data, Effect, Option, Redacted, Ref } from "effect"

/** A failure talking to a registry or its token server. Messages carry statuses and error codes, never secrets. */
export class RegistryError extends Data.TaggedError("RegistryError")<{
  readonly message: string
  readonly status?: number
  readonly code?: string
  readonly cause?: unknown
}> {}

export interface Credentials {
  readonly username: string
  readonly password: Redacted.Redacted<string>
}

/** The `auths` of a docker config file, keyed by normalized host (`host[:port]`). */
export type AuthConfig = ReadonlyMap<string, Credentials>

export const dockerHubAuthKey = "https://index.docker.io/v1/"
const dockerHubHosts = ["docker.io", "index.docker.io", "registry-1.docker.io"]

/** The host part of a docker config `auths` key: `https://host:port/v1/` -> `host:port` (as the docker CLI does). */
export const normalizeAuthKey = (key: string): string => {
  const withoutScheme = key.replace(/^[a-z][a-z0-9+.-]*:\/\//i, "")
  return withoutScheme.split("/")[0]!.toLowerCase()
}

const decodeAuthEntry = (entry: unknown): Option.Option<Credentials> => {
  if (typeof entry !== "object" || entry === null) return Option.none()
  const { auth, password, username } = entry as Record<string, unknown>
  if (typeof auth === "string" && auth !== "") {
    const decoded = Buffer.from(auth, "base64").toString("utf8")
    const separator = decoded.indexOf(":")
    if (separator <= 0) return Option.none()
    return Option.some({
      username: decoded.slice(0, separator),
      password: Redacted.make(decoded.slice(separator + 1))
    })
  }
  if (typeof username === "string" && username !== "" && typeof password === "string") {
    return Option.some({ username, password: Redacted.make(password) })
  }
  return Option.none()
}

/** Parses a docker config JSON (`{"auths":{...}}`). Errors never quote the content. */
export const parseAuthConfig = (text: string): Effect.Effect<AuthConfig, RegistryError> =>
  Effect.gen(function*() {
    const json = yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: () => new RegistryError({ message: "the registry auth file is not valid JSON" })
    })
    if (typeof json !== "object" || json === null) {
      return yield* new RegistryError({ message: "the registry auth file is not a docker config JSON object" })
    }
    const auths = (json as Record<string, unknown>).auths
    const config = new Map<string, Credentials>()
    if (typeof auths !== "object" || auths === null) return config
    for (const [key, entry] of Object.entries(auths)) {
      const credentials = decodeAuthEntry(entry)
      if (Option.isSome(credentials)) config.set(normalizeAuthKey(key), credentials.value)
    }
    return config
  })

export const platformReason = (error: PlatformError): string => {
  if (error._tag !== "SystemError") return error.message
  return error.description === undefined ? error.reason : `${error.reason}: ${error.description}`
}

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
          ConfigError.InvalidData(["REGISTRY_CA_FILE"], `cannot read ${path} (${platformReason(error)})`)
        )
      )
  })

export const readAuthFile = (path: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const text = yield* fs.readFileString(path).pipe(
      Effect.mapError((cause) =>
        new RegistryError({ message: `cannot read the registry auth file ${path} (${platformReason(cause)})`, cause })
      )
    )
    return yield* parseAuthConfig(text)
  })

/** Credentials for a registry host (`host[:port]` as written in the image name); Docker Hub's aliases included. */
export const credentialsFor = (config: AuthConfig, registry: string): Option.Option<Credentials> => {
  const host = registry.toLowerCase()
  const candidates = dockerHubHosts.includes(host) ? ["index.docker.io", ...dockerHubHosts] : [host]
  for (const candidate of candidates) {
    const found = config.get(candidate)
    if (found !== undefined) return Option.some(found)
  }
  return Option.none()
}

export interface Challenge {
  /** Lower-case scheme: `basic`, `bearer`, ... */
  readonly scheme: string
  readonly params: Readonly<Record<string, string>>
}

/** Parses `WWW-Authenticate` (RFC 7235): one or more challenges, parameters as tokens or quoted strings. */
export const parseWwwAuthenticate = (header: string): ReadonlyArray<Challenge> => {
  const challenges: Array<{ scheme: string; params: Record<string, string> }> = []
  let position = 0
  const skip = (pattern: RegExp) => {
    while (position < header.length && pattern.test(header[position]!)) position++
  }
  const token = () => {
    const start = position
    while (position < header.length && /[!#$%&'*+\-.^_`|~0-9A-Za-z/]/.test(header[position]!)) position++
    return header.slice(start, position)
  }
  const quoted = () => {
    let value = ""
    position++
    while (position < header.length && header[position] !== "\"") {
      if (header[position] === "\\" && position + 1 < header.length) position++
      value += header[position]
      position++
    }
    position++
    return value
  }
  while (position < header.length) {
    skip(/[\s,]/)
    const word = token()
    if (word === "") {
      position++
      continue
    }
    skip(/\s/)
    const current = challenges.at(-1)
    if (header[position] === "=" && current !== undefined) {
      position++
      skip(/\s/)
      current.params[word.toLowerCase()] = header[position] === "\"" ? quoted() : token()
      skip(/\s/)
    } else {
      challenges.push({ scheme: word.toLowerCase(), params: {} })
      skip(/\s/)
      const start = position
      const name = token()
      skip(/\s/)
      if (name !== "" && header[position] === "=") {
        position++
        skip(/\s/)
        challenges.at(-1)!.params[name.toLowerCase()] = header[position] === "\"" ? quoted() : token()
      } else {
        position = start
      }
    }
  }
  return challenges
}

const errorBodyCode = (body: string): { code?: string; detail?: string } => {
  try {
    const json = JSON.parse(body) as {
      errors?: ReadonlyArray<{ code?: unknown; message?: unknown }>
      details?: unknown
    }
    const first = json.errors?.[0]
    const code = typeof first?.code === "string" ? first.code : undefined
    const detail = typeof first?.message === "string"
      ? first.message
      : typeof json.details === "string"
      ? json.details
      : undefined
    return { ...(code === undefined ? {} : { code }), ...(detail === undefined ? {} : { detail }) }
  } catch {
    return {}
  }
}

const statusCodes: Record<number, string> = { 401: "UNAUTHORIZED", 403: "DENIED", 404: "NOT_FOUND" }

/** Status and the registry's error code of a failed response, e.g. `401 UNAUTHORIZED` or `400 DIGEST_INVALID: ...`. */
export const describeResponse = (response: HttpClientResponse.HttpClientResponse) =>
  response.text.pipe(
    Effect.orElseSucceed(() => ""),
    Effect.map((body) => {
      const { code, detail } = errorBodyCode(body)
      const shownCode = code ?? statusCodes[response.status]
      const summary = [String(response.status), shownCode].filter((part) => part !== undefined).join(" ")
      return {
        status: response.status,
        code: shownCode,
        summary: detail !== undefined && detail !== "" && response.status !== 401 ? `${summary}: ${detail}` : summary
      }
    })
  )

export const failedResponse = (
  what: string,
  response: HttpClientResponse.HttpClientResponse,
  anonymous = false
) =>
  Effect.flatMap(describeResponse(response), ({ code, status, summary }) => {
    const message = status === 401
      ? `registry ${anonymous ? "requires" : "refused"} credentials (${summary})`
      : status === 403
      ? `registry denied access (${summary})`
      : `${what} failed: registry answered ${summary}`
    return Effect.fail(new RegistryError({ message, status, ...(code === undefined ? {} : { code }) }))
  })

const transportError = (what: string, url: string) => (cause: unknown) =>
  new RegistryError({ message: `${what} failed: cannot reach ${url} (${transportReason(cause)})`, cause })

export const transportReason = (cause: unknown): string => {
  let current: unknown = cause
  for (let depth = 0; depth < 5 && typeof current === "object" && current !== null; depth++) {
    const next = (current as { cause?: unknown }).cause
    if (next === undefined || next === null) break
    current = next
  }
  const code = typeof current === "object" && current !== null ? (current as { code?: unknown }).code : undefined
  const message = current instanceof Error ? current.message : String(current)
  return typeof code === "string" && !message.includes(code) ? `${code}: ${message}` : message
}

/** Asks a Bearer challenge's realm for a token for `scopes`, with Basic credentials when there are any. */
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
    const { access_token, token } = (typeof body === "object" && body !== null ? body : {}) as Record<string, unknown>
    const value = typeof token === "string" && token !== "" ? token : access_token
    if (typeof value !== "string" || value === "") {
      return yield* new RegistryError({ message: "token server answered without a token" })
    }
    return Redacted.make(value)
  })

interface AuthState {
  readonly scheme: "none" | "basic" | "bearer"
  readonly challenge: Option.Option<Challenge>
  readonly tokens: ReadonlyMap<string, Redacted.Redacted<string>>
}

/**
 * Authorization for one build against one registry: nothing until the registry asks, then Basic credentials or a
 * Bearer token for `scope` (`repository:<repo>:pull,push`), cached for the life of the authenticator.
 */
export const makeAuthenticator = (options: {
  readonly http: HttpClient.HttpClient
  readonly credentials: Option.Option<Credentials>
  readonly scope: string
}) =>
  Effect.gen(function*() {
    const state = yield* Ref.make<AuthState>({ scheme: "none", challenge: Option.none(), tokens: new Map() })

    const token = Effect.gen(function*() {
      const current = yield* Ref.get(state)
      const cached = current.tokens.get(options.scope)
      if (cached !== undefined) return cached
      if (Option.isNone(current.challenge)) {
        return yield* new RegistryError({ message: "registry asked for a Bearer token without a challenge" })
      }
      const fresh = yield* fetchToken(options.http, current.challenge.value, [options.scope], options.credentials)
      yield* Ref.update(state, (s) => ({ ...s, tokens: new Map([...s.tokens, [options.scope, fresh]]) }))
      return fresh
    })

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
