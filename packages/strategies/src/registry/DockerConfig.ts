import { reasonOf } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { Effect, Either, Option, Redacted, Schema } from "effect"
import { RegistryError } from "./RegistryError.ts"

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

/** A docker config JSON file; its `auths` entries are decoded one by one, and those that are not entries skipped. */
const DockerConfigFile = Schema.Struct({
  auths: Schema.optionalWith(Schema.Record({ key: Schema.String, value: Schema.Unknown }), { default: () => ({}) })
})

const AuthEntry = Schema.Struct({
  auth: Schema.optional(Schema.String),
  username: Schema.optional(Schema.String),
  password: Schema.optional(Schema.String)
})

/** `auth` (base64 of `user:password`) when present, else `username` and `password`. */
const credentialsOf = (entry: typeof AuthEntry.Type): Option.Option<Credentials> => {
  if (entry.auth !== undefined && entry.auth !== "") {
    const decoded = Buffer.from(entry.auth, "base64").toString("utf8")
    const separator = decoded.indexOf(":")
    return separator <= 0 ? Option.none() : Option.some({
      username: decoded.slice(0, separator),
      password: Redacted.make(decoded.slice(separator + 1))
    })
  }
  return entry.username !== undefined && entry.username !== "" && entry.password !== undefined
    ? Option.some({ username: entry.username, password: Redacted.make(entry.password) })
    : Option.none()
}

/** Parses a docker config JSON (`{"auths":{...}}`). Errors never quote the content. */
export const parseAuthConfig = (text: string): Effect.Effect<AuthConfig, RegistryError> =>
  Effect.gen(function*() {
    const json = yield* Either.mapLeft(
      Schema.decodeUnknownEither(Schema.parseJson())(text),
      () => new RegistryError({ message: "the registry auth file is not valid JSON" })
    )
    const { auths } = yield* Either.mapLeft(
      Schema.decodeUnknownEither(DockerConfigFile)(json),
      () => new RegistryError({ message: "the registry auth file is not a docker config JSON object" })
    )
    const config = new Map<string, Credentials>()
    for (const [key, entry] of Object.entries(auths)) {
      const credentials = Option.flatMap(Schema.decodeUnknownOption(AuthEntry)(entry), credentialsOf)
      if (Option.isSome(credentials)) config.set(normalizeAuthKey(key), credentials.value)
    }
    return config
  })

export const readAuthFile = (path: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const text = yield* fs.readFileString(path).pipe(
      Effect.mapError((cause) =>
        new RegistryError({ message: `cannot read the registry auth file ${path} (${reasonOf(cause)})`, cause })
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

/** The credentials REGISTRY_AUTH_FILE (read now: it may have been rotated) has for a registry host, if any. */
export const credentialsFromFile = (authFile: Option.Option<string>, registry: string) =>
  Option.match(authFile, {
    onNone: () => Effect.succeed(Option.none<Credentials>()),
    onSome: (path) => Effect.map(readAuthFile(path), (config) => credentialsFor(config, registry))
  })
