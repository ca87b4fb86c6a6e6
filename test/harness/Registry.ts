import { Command, FileSystem, HttpClientRequest, Path } from "@effect/platform"
import type { CommandExecutor, HttpClient, HttpClientResponse } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Agent } from "@effect/platform-node/Undici"
import { Data, Duration, Effect, Fiber, Ref, Schedule, Stream } from "effect"
import type { Scope } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { makePki } from "./Certificates.ts"
import { freePort } from "./CheckpointerProcess.ts"
import { startTokenServer } from "./TokenServer.ts"

export class RegistryHarnessError extends Data.TaggedError("RegistryHarnessError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** `anonymous`: anyone may pull and push, as the workloads' registry of a cluster that pulls without credentials. */
export type RegistryAuthMode = "htpasswd" | "token" | "anonymous"

export interface FetchedManifest {
  /** The Content-Type the registry served. */
  readonly contentType: string
  /** Docker-Content-Digest of the served manifest. */
  readonly digest: string
  /** sha256 of the bytes served (must equal `digest`). */
  readonly computedDigest: string
  readonly raw: string
  readonly json: {
    readonly schemaVersion?: number
    readonly mediaType?: string
    readonly config: { readonly mediaType: string; readonly digest: string; readonly size: number }
    readonly layers: ReadonlyArray<{ readonly mediaType: string; readonly digest: string; readonly size: number }>
    readonly annotations?: Readonly<Record<string, string>>
  }
}

export interface TestRegistry {
  /** `127.0.0.1:PORT` */
  readonly host: string
  readonly auth: RegistryAuthMode
  /** `https://HOST`, or `http://HOST` for a registry without TLS. */
  readonly url: string
  /** The CA (PEM file) that signed the registry's (and token server's) certificate. */
  readonly caFile: string
  /** A podman/containers `--cert-dir` with that CA (`ca.crt`). */
  readonly certDir: string
  readonly username: string
  readonly password: string
  /** Docker config JSON with the right credentials for `host`. */
  readonly authFile: string
  /** Docker config JSON for the same host with `wrongPassword`. */
  readonly wrongAuthFile: string
  readonly wrongPassword: string
  /** An HTTP client that trusts `caFile`, closed with the registry (requests carry no credentials of their own). */
  readonly http: HttpClient.HttpClient
  /** Registry and token server output so far. */
  readonly logs: () => string
  readonly manifest: (repository: string, reference: string) => Effect.Effect<FetchedManifest, RegistryHarnessError>
  /** A blob's bytes (small blobs: configs). */
  readonly blob: (repository: string, digest: string) => Effect.Effect<Uint8Array, RegistryHarnessError>
  /** sha256 and size of a blob, streamed (any size). */
  readonly blobDigest: (
    repository: string,
    digest: string
  ) => Effect.Effect<{ readonly digest: string; readonly size: number }, RegistryHarnessError>
  readonly tags: (repository: string) => Effect.Effect<ReadonlyArray<string>, RegistryHarnessError>
}

const ociManifestTypes = [
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json"
].join(", ")

const harnessError = (message: string) => (cause: unknown) =>
  cause instanceof RegistryHarnessError ? cause : new RegistryHarnessError({ message, cause })

const registryConfig = (options: {
  readonly address: string
  readonly port: number
  readonly storage: string
  readonly tls: { readonly cert: string; readonly key: string } | undefined
  readonly auth: string | undefined
  readonly deleteEnabled: boolean
}) =>
  [
    "version: 0.1",
    "log:",
    "  level: info",
    "  formatter: text",
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${options.storage}`,
    "  delete:",
    `    enabled: ${options.deleteEnabled}`,
    "http:",
    `  addr: ${options.address}:${options.port}`,
    `  secret: ${randomBytes(16).toString("hex")}`,
    ...(options.tls === undefined
      ? []
      : ["  tls:", `    certificate: ${options.tls.cert}`, `    key: ${options.tls.key}`]),
    ...(options.auth === undefined ? [] : ["auth:", options.auth]),
    ""
  ].join("\n")

/** Writes a docker config JSON to `file` that logs in to `host` as `username` with `secret`; returns `file`. */
export const writeAuthFile = (file: string, host: string, username: string, secret: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const auth = Buffer.from(`${username}:${secret}`).toString("base64")
    yield* fs.writeFileString(file, JSON.stringify({ auths: { [host]: { auth } } }, null, 2))
    return file
  })

/**
 * A real `docker-registry serve` (CNCF distribution 2.8) on 127.0.0.1:<free port> with TLS from a test CA (or plain
 * HTTP with `tls: false`) and htpasswd (bcrypt) or JWT token authentication (with a token server in this process).
 * The process is killed and `dir` removed when the scope closes.
 */
export const startRegistry = (options: {
  readonly dir: string
  readonly auth: RegistryAuthMode
  /** Default true. */
  readonly tls?: boolean
  /** Whether manifests and blobs may be deleted (distribution's storage.delete.enabled); default true. */
  readonly deleteEnabled?: boolean
  /** With token auth: how long the token server's tokens are valid; default 300 s. */
  readonly tokenSeconds?: number
  /**
   * Where the registry listens (default 127.0.0.1, the host in `host`) and what its command is prefixed with, e.g.
   * `["ip", "netns", "exec", NAME]` for a registry inside a network namespace reached at that namespace's address.
   */
  readonly listen?: { readonly address: string; readonly commandPrefix?: ReadonlyArray<string> }
}): Effect.Effect<
  TestRegistry,
  RegistryHarnessError,
  Scope.Scope | FileSystem.FileSystem | Path.Path | CommandExecutor.CommandExecutor
> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    yield* Effect.acquireRelease(
      fs.makeDirectory(options.dir, { recursive: true }),
      () => Effect.ignore(fs.remove(options.dir, { recursive: true }))
    )
    const output = yield* Ref.make<ReadonlyArray<string>>([])
    const log = (line: string) => Ref.update(output, (lines) => [...lines, line])
    const pki = yield* makePki(path.join(options.dir, "pki"))
    const address = options.listen?.address ?? "127.0.0.1"
    const serverCert = yield* pki.issue("registry", { ips: [...new Set(["127.0.0.1", address])], dns: ["localhost"] })
    const certDir = path.join(options.dir, "certs.d")
    yield* fs.makeDirectory(certDir, { recursive: true })
    yield* fs.copyFile(pki.caFile, path.join(certDir, "ca.crt"))

    const username = "checkpointer"
    const password = `pw-${randomBytes(12).toString("hex")}`
    const wrongPassword = `wrong-${randomBytes(12).toString("hex")}`
    const port = yield* freePort("127.0.0.1").pipe(Effect.mapError(harnessError("no free port for the registry")))
    const host = `${address}:${port}`

    let authSection: string | undefined
    if (options.auth === "anonymous") {
      authSection = undefined
    } else if (options.auth === "htpasswd") {
      const line = yield* Command.make("htpasswd", "-Bbn", username, password).pipe(Command.string)
      const htpasswdFile = path.join(options.dir, "htpasswd")
      yield* fs.writeFileString(htpasswdFile, line.trim() + "\n")
      authSection = ["  htpasswd:", "    realm: checkpointer-test-registry", `    path: ${htpasswdFile}`].join("\n")
    } else {
      const service = "checkpointer-test-registry"
      const issuer = "checkpointer-test-token-issuer"
      const tokenServer = yield* startTokenServer({
        pki,
        service,
        issuer,
        username,
        password,
        log: (line) => Effect.runSync(log(line)),
        ...(options.tokenSeconds === undefined ? {} : { tokenSeconds: options.tokenSeconds })
      })
      authSection = [
        "  token:",
        `    realm: ${tokenServer.realm}`,
        `    service: ${service}`,
        `    issuer: ${issuer}`,
        `    rootcertbundle: ${tokenServer.rootCertBundle}`
      ].join("\n")
    }

    const configFile = path.join(options.dir, "config.yml")
    yield* fs.writeFileString(
      configFile,
      registryConfig({
        address,
        port,
        storage: path.join(options.dir, "storage"),
        tls: options.tls === false ? undefined : serverCert,
        auth: authSection,
        deleteEnabled: options.deleteEnabled ?? true
      })
    )

    const [command, ...args] = [...(options.listen?.commandPrefix ?? []), "docker-registry", "serve", configFile]
    const process = yield* Command.start(Command.make(command!, ...args))
    const collect = (stream: Stream.Stream<Uint8Array, unknown>) =>
      stream.pipe(Stream.decodeText(), Stream.splitLines, Stream.runForEach(log), Effect.ignore)
    yield* Effect.forkScoped(collect(process.stdout))
    yield* Effect.forkScoped(collect(process.stderr))
    const logs = () => Effect.runSync(Ref.get(output)).join("\n")

    const dispatcher = yield* Effect.acquireRelease(
      fs.readFileString(pki.caFile).pipe(Effect.map((ca) => new Agent({ connect: { ca } }))),
      (agent) => Effect.promise(() => agent.destroy())
    )
    const http = NodeHttpClient.makeUndici(dispatcher)
    const base = `${options.tls === false ? "http" : "https"}://${host}`

    const exited = yield* Effect.fork(process.exitCode)
    yield* http.get(`${base}/v2/`).pipe(
      Effect.flatMap((response) =>
        response.status === 200 || response.status === 401
          ? Effect.void
          : Effect.fail(new RegistryHarnessError({ message: `registry answered ${response.status}` }))
      ),
      Effect.retry(Schedule.spaced(Duration.millis(100))),
      Effect.raceFirst(
        Fiber.join(exited).pipe(
          Effect.flatMap((code) =>
            Effect.fail(new RegistryHarnessError({ message: `docker-registry exited (${code}):\n${logs()}` }))
          )
        )
      ),
      Effect.timeoutFail({
        duration: Duration.seconds(30),
        onTimeout: () => new RegistryHarnessError({ message: `docker-registry did not answer:\n${logs()}` })
      }),
      Effect.mapError(harnessError("docker-registry did not start"))
    )

    const authFile = yield* writeAuthFile(path.join(options.dir, "auth.json"), host, username, password)
    const wrongAuthFile = yield* writeAuthFile(path.join(options.dir, "wrong-auth.json"), host, username, wrongPassword)

    const authorize = (repository: string, request: HttpClientRequest.HttpClientRequest) =>
      Effect.gen(function*() {
        if (options.auth === "anonymous") return request
        if (options.auth === "htpasswd") return HttpClientRequest.basicAuth(request, username, password)
        const challenge = yield* http.get(`${base}/v2/`)
        const header = challenge.headers["www-authenticate"] ?? ""
        const realm = /realm="([^"]+)"/.exec(header)?.[1]
        const service = /service="([^"]+)"/.exec(header)?.[1]
        if (realm === undefined || service === undefined) {
          return yield* new RegistryHarnessError({ message: `unexpected challenge: ${header}` })
        }
        const tokenUrl = new URL(realm)
        tokenUrl.searchParams.set("service", service)
        tokenUrl.searchParams.set("scope", `repository:${repository}:pull`)
        const response = yield* http.execute(
          HttpClientRequest.get(tokenUrl).pipe(HttpClientRequest.basicAuth(username, password))
        )
        const body = (yield* response.json) as { token?: string }
        if (body.token === undefined) return yield* new RegistryHarnessError({ message: "token server gave no token" })
        return HttpClientRequest.bearerToken(request, body.token)
      })

    const fetchOk = (repository: string, request: HttpClientRequest.HttpClientRequest) =>
      Effect.gen(function*() {
        const response: HttpClientResponse.HttpClientResponse = yield* http.execute(
          yield* authorize(repository, request)
        )
        if (response.status !== 200) {
          const body = yield* response.text
          return yield* new RegistryHarnessError({
            message: `${request.method} ${request.url}: ${response.status} ${body}`
          })
        }
        return response
      }).pipe(Effect.mapError(harnessError("request failed")))

    const manifest = (repository: string, reference: string) =>
      Effect.gen(function*() {
        const response = yield* fetchOk(
          repository,
          HttpClientRequest.get(`${base}/v2/${repository}/manifests/${reference}`).pipe(
            HttpClientRequest.setHeader("accept", ociManifestTypes)
          )
        )
        const bytes = new Uint8Array(yield* response.arrayBuffer)
        const raw = Buffer.from(bytes).toString("utf8")
        return {
          contentType: response.headers["content-type"] ?? "",
          digest: response.headers["docker-content-digest"] ?? "",
          computedDigest: `sha256:${createHash("sha256").update(bytes).digest("hex")}`,
          raw,
          json: JSON.parse(raw) as FetchedManifest["json"]
        }
      }).pipe(Effect.mapError(harnessError("manifest")))

    const blobRequest = (repository: string, digest: string) =>
      fetchOk(repository, HttpClientRequest.get(`${base}/v2/${repository}/blobs/${digest}`))

    const blob = (repository: string, digest: string) =>
      Effect.flatMap(blobRequest(repository, digest), (response) => response.arrayBuffer).pipe(
        Effect.map((buffer) => new Uint8Array(buffer)),
        Effect.mapError(harnessError("blob"))
      )

    const blobDigest = (repository: string, digest: string) =>
      Effect.gen(function*() {
        const response = yield* blobRequest(repository, digest)
        const hash = createHash("sha256")
        let size = 0
        yield* Stream.runForEach(response.stream, (chunk) =>
          Effect.sync(() => {
            hash.update(chunk)
            size += chunk.length
          }))
        return { digest: `sha256:${hash.digest("hex")}`, size }
      }).pipe(Effect.mapError(harnessError("blob")))

    const tags = (repository: string) =>
      fetchOk(repository, HttpClientRequest.get(`${base}/v2/${repository}/tags/list`)).pipe(
        Effect.flatMap((response) => response.json),
        Effect.map((body) => (body as { tags?: ReadonlyArray<string> | null }).tags ?? []),
        Effect.mapError(harnessError("tags"))
      )

    return {
      host,
      auth: options.auth,
      url: base,
      caFile: pki.caFile,
      certDir,
      username,
      password,
      authFile,
      wrongAuthFile,
      wrongPassword,
      http,
      logs,
      manifest,
      blob,
      blobDigest,
      tags
    } satisfies TestRegistry
  }).pipe(Effect.mapError(harnessError("cannot start the test registry")))
