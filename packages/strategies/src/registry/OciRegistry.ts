import { HttpClientRequest } from "@effect/platform"
import type { HttpClient, HttpClientResponse } from "@effect/platform"
import { Chunk, Data, Duration, Effect, Either, Option, Schedule, Stream } from "effect"
import { createHash } from "node:crypto"
import type { Credentials } from "./DockerConfig.ts"
import { makeAuthenticator } from "./RegistryAuth.ts"
import type { Authenticator } from "./RegistryAuth.ts"
import { failedResponse, RegistryError, transportError } from "./RegistryError.ts"

export class InvalidReference extends Data.TaggedError("InvalidReference")<{
  readonly reference: string
  readonly message: string
}> {}

/** A parsed `[host[:port]/]path[:tag]` image name, normalized as the docker CLI does. */
export interface ImageReference {
  /** `host[:port]` as written, `docker.io` when the name has none. */
  readonly domain: string
  /** Where the registry API answers: the domain, or `registry-1.docker.io` for Docker Hub. */
  readonly apiHost: string
  readonly repository: string
  readonly tag: string
}

export const dockerHubDomain = "docker.io"
const dockerHubApiHost = "registry-1.docker.io"
const pathComponent = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/
const domainComponent = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
const domainPattern = new RegExp(`^(?:${domainComponent}(?:\\.${domainComponent})*|\\[[0-9a-fA-F:.]+\\])(?::[0-9]+)?$`)
const tagPattern = /^[\w][\w.-]{0,127}$/

export const formatReference = (reference: ImageReference): string =>
  `${reference.domain}/${reference.repository}:${reference.tag}`

export const parseImageReference = (input: string): Either.Either<ImageReference, InvalidReference> => {
  const invalid = (message: string) => Either.left(new InvalidReference({ reference: input, message }))
  if (input.includes("@")) return invalid("a digest reference cannot be pushed to; name the image with a tag")
  const slash = input.indexOf("/")
  const first = slash === -1 ? "" : input.slice(0, slash)
  const hasDomain = slash !== -1 && (/[.:]/.test(first) || first === "localhost" || first.toLowerCase() !== first)
  let domain = hasDomain ? first : dockerHubDomain
  let remainder = hasDomain ? input.slice(slash + 1) : input
  if (domain === "index.docker.io") domain = dockerHubDomain
  const lastSlash = remainder.lastIndexOf("/")
  const colon = remainder.lastIndexOf(":")
  let tag = "latest"
  if (colon > lastSlash) {
    tag = remainder.slice(colon + 1)
    remainder = remainder.slice(0, colon)
  }
  if (domain === dockerHubDomain && !remainder.includes("/")) remainder = `library/${remainder}`
  if (!domainPattern.test(domain)) return invalid(`"${domain}" is not a valid registry host`)
  if (!tagPattern.test(tag)) return invalid(`"${tag}" is not a valid tag`)
  if (remainder === "" || !remainder.split("/").every((component) => pathComponent.test(component))) {
    return invalid("the repository must be lower-case path components ([a-z0-9] separated by '.', '_', '__' or '-')")
  }
  if (domain.length + 1 + remainder.length > 255) return invalid("the repository name is longer than 255 characters")
  return Either.right({
    domain,
    apiHost: domain === dockerHubDomain ? dockerHubApiHost : domain,
    repository: remainder,
    tag
  })
}

export const ociManifestMediaType = "application/vnd.oci.image.manifest.v1+json"
export const dockerManifestMediaType = "application/vnd.docker.distribution.manifest.v2+json"

export interface Descriptor {
  readonly mediaType: string
  readonly digest: string
  readonly size: number
}

export const sha256Digest = (bytes: Uint8Array): string => `sha256:${createHash("sha256").update(bytes).digest("hex")}`

/** Options of a push session with one repository of one registry. */
export interface SessionOptions {
  readonly http: HttpClient.HttpClient
  readonly reference: ImageReference
  readonly credentials: Option.Option<Credentials>
  /** Allows plain HTTP when the registry does not speak TLS (TLS verification is the HTTP client's business). */
  readonly insecure: boolean
  /** The actions a Bearer token is asked for; default `pull,push`. Deleting needs `delete`. */
  readonly actions?: string
  /** What an earlier session with the same repository and credentials learnt: no ping, its authorization reused. */
  readonly established?: Established | undefined
}

/** A session's base URL (after the ping) and authorization (scheme, token), reusable by the next session. */
export interface Established {
  readonly base: string
  readonly auth: Authenticator
}

/** The manifest types a tag of a checkpoint image can name (OCI and Docker, single and index). */
const manifestMediaTypes = [
  ociManifestMediaType,
  "application/vnd.oci.image.index.v1+json",
  dockerManifestMediaType,
  "application/vnd.docker.distribution.manifest.list.v2+json"
]

/** A streamed blob that ends within this many bytes is uploaded in one request instead of two. */
export const monolithicUploadLimit = 1024 * 1024

/**
 * Pulls a stream's first chunks until they hold `limit` bytes or the stream ends. The stream may reuse a chunk's
 * buffer once it is pulled again, which happens only while the head is under `limit`: the chunks kept then are
 * copied (less than `limit` bytes in all), and none when the first pull brings `limit` bytes.
 */
const pullHead = <E>(pull: Effect.Effect<Chunk.Chunk<Uint8Array>, Option.Option<E>>, limit: number) =>
  Effect.iterate({ chunks: [] as ReadonlyArray<Uint8Array>, size: 0, ended: false }, {
    while: (head) => !head.ended && head.size < limit,
    body: (head) =>
      pull.pipe(
        Effect.map((pulled) => {
          const chunks = Chunk.toReadonlyArray(pulled)
          const size = chunks.reduce((total, bytes) => total + bytes.length, head.size)
          const kept = size < limit ? chunks.map((bytes) => bytes.slice()) : chunks
          return { chunks: [...head.chunks, ...kept], size, ended: false }
        }),
        Effect.catchAll(Option.match({
          onNone: () => Effect.succeed({ ...head, ended: true }),
          onSome: (error) => Effect.fail(error)
        }))
      )
  })

const concatBytes = (chunks: ReadonlyArray<Uint8Array>): Uint8Array =>
  chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)

const requestTimeout = Duration.seconds(60)
const transientRetry = Schedule.exponential("250 millis").pipe(Schedule.intersect(Schedule.recurs(3)))

/**
 * A push session: pings `/v2/` (choosing https, or http when insecure and TLS fails), authenticates as the registry
 * asks, and pushes blobs and manifests of one repository following the OCI distribution spec. Given what an earlier
 * session `established`, it skips the ping and keeps that session's authorization (and token).
 */
export const makeSession = Effect.fn("OciRegistry.session")(function*(options: SessionOptions) {
  const { http, reference } = options
  const scope = `repository:${reference.repository}:${options.actions ?? "pull,push"}`
  const auth = options.established?.auth ??
    (yield* makeAuthenticator({ http, credentials: options.credentials, scope }))

  const send = (what: string, request: HttpClientRequest.HttpClientRequest) =>
    http.execute(request).pipe(
      Effect.mapError(transportError(what, reference.apiHost))
    )

  /** A request whose body can be sent again: bounded in time, and retried with backoff when the network failed. */
  const sendReplayable = (what: string, request: HttpClientRequest.HttpClientRequest) =>
    send(what, request).pipe(
      Effect.timeoutFail({
        duration: requestTimeout,
        onTimeout: () =>
          new RegistryError({
            message: `${what} failed: ${reference.apiHost} did not answer within ${Duration.format(requestTimeout)}`
          })
      }),
      Effect.retry({ schedule: transientRetry, while: (error) => error.status === undefined })
    )

  const refused = (what: string, response: HttpClientResponse.HttpClientResponse) =>
    failedResponse(what, response, Option.isNone(options.credentials)).pipe(
      Effect.mapError((error) =>
        error.status === 401 && Option.isNone(options.credentials)
          ? new RegistryError({
            ...error,
            message: `${error.message}; REGISTRY_AUTH_FILE has no credentials for ${reference.domain}`
          })
          : error
      )
    )

  /** Sends with authorization; on a 401 follows the challenge and retries once (only for replayable bodies). */
  const exchange = (what: string, request: HttpClientRequest.HttpClientRequest, replayable = true) =>
    Effect.gen(function*() {
      const deliver = replayable ? sendReplayable : send
      const response = yield* deliver(what, yield* auth.authorize(request))
      if (response.status !== 401 || !replayable) return response
      const retry = yield* auth.challenged(response.headers["www-authenticate"])
      if (!retry) return response
      yield* response.text.pipe(Effect.ignore)
      return yield* deliver(what, yield* auth.authorize(request))
    })

  /** A PUT the registry must answer 201, and whose Docker-Content-Digest (when it sends one) must be `digest`. */
  const createdWith = (
    what: string,
    registryDid: "stored" | "computed",
    request: HttpClientRequest.HttpClientRequest,
    digest: string
  ) =>
    Effect.gen(function*() {
      const response = yield* exchange(what, request)
      if (response.status !== 201) return yield* refused(what, response)
      yield* response.text.pipe(Effect.ignore)
      const confirmed = response.headers["docker-content-digest"]
      if (confirmed !== undefined && confirmed !== digest) {
        return yield* new RegistryError({
          message: `${what} failed: registry ${registryDid} ${confirmed}, expected ${digest}`
        })
      }
    })

  const ping = (base: string) =>
    Effect.gen(function*() {
      const response = yield* send("registry ping", HttpClientRequest.get(`${base}/v2/`))
      yield* response.text.pipe(Effect.ignore)
      if (response.status === 401) yield* auth.challenged(response.headers["www-authenticate"])
      else if (response.status !== 200) return yield* failedResponse("registry ping", response)
    })

  const secureBase = `https://${reference.apiHost}`
  const plainBase = `http://${reference.apiHost}`
  const base = options.established?.base ?? (yield* ping(secureBase).pipe(
    Effect.as(secureBase),
    Effect.catchAll((error) =>
      options.insecure && error.status === undefined
        ? ping(plainBase).pipe(Effect.as(plainBase), Effect.orElseFail(() => error))
        : Effect.fail(error)
    )
  ))
  const repositoryUrl = `${base}/v2/${reference.repository}`

  const resolveLocation = (what: string, response: HttpClientResponse.HttpClientResponse, requestUrl: string) => {
    const location = response.headers["location"]
    return location === undefined || location === ""
      ? Effect.fail(
        new RegistryError({ message: `${what} failed: registry answered ${response.status} without a Location` })
      )
      : Effect.succeed(new URL(location, requestUrl))
  }

  const withDigest = (location: URL, digest: string) => {
    const url = new URL(location)
    url.searchParams.set("digest", digest)
    return url.toString()
  }

  const blobExists = (digest: string) =>
    Effect.gen(function*() {
      const response = yield* exchange("blob check", HttpClientRequest.head(`${repositoryUrl}/blobs/${digest}`))
      if (response.status === 200) return true
      if (response.status === 404) return false
      return yield* refused("blob check", response)
    })

  const startUpload = Effect.gen(function*() {
    const url = `${repositoryUrl}/blobs/uploads/`
    const response = yield* exchange("blob upload start", HttpClientRequest.post(url))
    if (response.status !== 202) return yield* refused("blob upload start", response)
    yield* response.text.pipe(Effect.ignore)
    return yield* resolveLocation("blob upload start", response, url)
  })

  const completeUpload = (location: URL, digest: string, body: Option.Option<Uint8Array>) =>
    Effect.gen(function*() {
      const request = HttpClientRequest.put(withDigest(location, digest)).pipe(
        Option.isSome(body)
          ? HttpClientRequest.bodyUint8Array(body.value, "application/octet-stream")
          : HttpClientRequest.setHeader("content-length", "0")
      )
      yield* createdWith("blob upload", "stored", request, digest)
    })

  /**
   * A small blob known to be new (no HEAD first): POST + monolithic PUT. The upload is opened at once and `bytes`
   * awaited meanwhile, so that the POST overlaps whatever produces them; a failure cancels the opened upload.
   */
  const uploadBlob = <E>(bytes: Effect.Effect<Uint8Array, E>, mediaType: string) =>
    Effect.gen(function*() {
      const location = yield* startUpload
      return yield* Effect.gen(function*() {
        const content = yield* bytes
        const descriptor: Descriptor = { mediaType, digest: sha256Digest(content), size: content.length }
        yield* completeUpload(location, descriptor.digest, Option.some(content))
        return descriptor
      }).pipe(Effect.onError(() => cancelUpload(location)))
    })

  /** A small blob whose bytes are at hand: HEAD, else POST + monolithic PUT. */
  const pushBlob = (bytes: Uint8Array, mediaType: string) =>
    Effect.gen(function*() {
      const digest = sha256Digest(bytes)
      return (yield* blobExists(digest))
        ? { mediaType, digest, size: bytes.length }
        : yield* uploadBlob(Effect.succeed(bytes), mediaType)
    })

  /**
   * A blob read once as a stream whose digest is known only after its last byte; its first bytes are read while the
   * upload opens. One that ends within `monolithicUploadLimit` bytes goes up whole, in the closing PUT with its digest
   * (POST + PUT); a longer one in one chunked PATCH carrying the whole stream (no Content-Range), then the closing PUT
   * with the digest and an empty body.
   */
  const pushBlobStream = <E, E2>(bytes: Stream.Stream<Uint8Array, E>, digest: Effect.Effect<string, E2>) =>
    Effect.scoped(Effect.gen(function*() {
      const pull = yield* Stream.toPull(bytes)
      const [location, firstBytes] = yield* Effect.all(
        [startUpload, Effect.either(pullHead(pull, monolithicUploadLimit))],
        { concurrency: 2 }
      )
      const upload = Effect.gen(function*() {
        const head = yield* firstBytes
        if (head.ended) return yield* completeUpload(location, yield* digest, Option.some(concatBytes(head.chunks)))
        const rest = Stream.concat(Stream.fromIterable(head.chunks), Stream.repeatEffectChunkOption(pull))
        const request = HttpClientRequest.patch(location).pipe(
          HttpClientRequest.bodyStream(rest, { contentType: "application/octet-stream" })
        )
        const response = yield* exchange("blob upload", request, false)
        if (response.status !== 202 && response.status !== 204) return yield* refused("blob upload", response)
        yield* response.text.pipe(Effect.ignore)
        const next = response.headers["location"] === undefined
          ? location
          : yield* resolveLocation("blob upload", response, location.toString())
        yield* completeUpload(next, yield* digest, Option.none())
      })
      yield* upload.pipe(Effect.onError(() => cancelUpload(location)))
    }))

  /** Best effort: tells the registry to drop an unfinished upload session. */
  const cancelUpload = (location: URL) =>
    exchange("blob upload cancel", HttpClientRequest.del(location)).pipe(
      Effect.flatMap((response) => response.text),
      Effect.ignore
    )

  const putManifest = (manifest: Uint8Array, mediaType: string) =>
    Effect.gen(function*() {
      const digest = sha256Digest(manifest)
      const request = HttpClientRequest.put(`${repositoryUrl}/manifests/${reference.tag}`).pipe(
        HttpClientRequest.bodyUint8Array(manifest, mediaType)
      )
      yield* createdWith("manifest push", "computed", request, digest)
      return digest
    })

  /** The manifest of the session's tag as JSON text; None when the registry does not have it. */
  const getManifest = Effect.gen(function*() {
    const request = HttpClientRequest.get(`${repositoryUrl}/manifests/${reference.tag}`).pipe(
      HttpClientRequest.setHeader("accept", manifestMediaTypes.join(", "))
    )
    const response = yield* exchange("manifest read", request)
    if (response.status === 404) {
      yield* response.text.pipe(Effect.ignore)
      return Option.none<string>()
    }
    if (response.status !== 200) return yield* refused("manifest read", response)
    return Option.some(
      yield* response.text.pipe(Effect.mapError(transportError("manifest read", reference.apiHost)))
    )
  })

  /** The digest of the manifest a tag names, none when the tag does not exist. */
  const manifestDigest = (tag: string) =>
    Effect.gen(function*() {
      const url = `${repositoryUrl}/manifests/${tag}`
      const accept = HttpClientRequest.setHeader("accept", manifestMediaTypes.join(", "))
      const head = yield* exchange("manifest check", HttpClientRequest.head(url).pipe(accept))
      if (head.status === 404) return Option.none<string>()
      if (head.status !== 200) return yield* refused("manifest check", head)
      const announced = head.headers["docker-content-digest"]
      if (announced !== undefined && announced !== "") return Option.some(announced)
      const response = yield* exchange("manifest read", HttpClientRequest.get(url).pipe(accept))
      if (response.status !== 200) return yield* refused("manifest read", response)
      const bytes = yield* response.arrayBuffer.pipe(Effect.mapError(transportError("manifest read", url)))
      return Option.some(sha256Digest(new Uint8Array(bytes)))
    })

  /** DELETE of a manifest by digest (which removes every tag naming it); false when it was already gone. */
  const deleteManifest = (digest: string) =>
    Effect.gen(function*() {
      const response = yield* exchange("manifest delete", HttpClientRequest.del(`${repositoryUrl}/manifests/${digest}`))
      if (response.status === 404) return yield* response.text.pipe(Effect.ignore, Effect.as(false))
      if (response.status !== 202 && response.status !== 200) return yield* refused("manifest delete", response)
      yield* response.text.pipe(Effect.ignore)
      return true
    })

  return {
    base,
    established: { base, auth } satisfies Established,
    blobExists,
    uploadBlob,
    pushBlob,
    pushBlobStream,
    putManifest,
    getManifest,
    manifestDigest,
    deleteManifest
  } as const
})

export type Session = Effect.Effect.Success<ReturnType<typeof makeSession>>
