import { HttpClient, HttpClientResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Either, Option, Redacted, Ref, Stream } from "effect"
import {
  formatReference,
  makeSession,
  monolithicUploadLimit,
  parseImageReference,
  sha256Digest
} from "../src/registry/OciRegistry.ts"

const parsed = (name: string) => Either.getOrThrow(parseImageReference(name))

describe("parseImageReference", () => {
  it("keeps an explicit host with a port, a nested path and the tag", () => {
    expect(parsed("127.0.0.1:5000/checkpoints/team/counter:0123456789abcdef")).toEqual({
      domain: "127.0.0.1:5000",
      apiHost: "127.0.0.1:5000",
      repository: "checkpoints/team/counter",
      tag: "0123456789abcdef"
    })
    expect(parsed("registry.example.com/app:v1.2")).toMatchObject({ domain: "registry.example.com", repository: "app" })
    expect(parsed("localhost/app:x")).toMatchObject({ domain: "localhost", repository: "app" })
    expect(parsed("localhost:5000/app")).toMatchObject({ domain: "localhost:5000", repository: "app", tag: "latest" })
    expect(parsed("[::1]:5000/app:t")).toMatchObject({ domain: "[::1]:5000", repository: "app", tag: "t" })
  })

  it("sends names without a host to Docker Hub, under library/ when they have a single component", () => {
    expect(parsed("busybox")).toEqual({
      domain: "docker.io",
      apiHost: "registry-1.docker.io",
      repository: "library/busybox",
      tag: "latest"
    })
    expect(parsed("pbaran555/checkpoint-base:1.0.0")).toMatchObject({
      domain: "docker.io",
      apiHost: "registry-1.docker.io",
      repository: "pbaran555/checkpoint-base",
      tag: "1.0.0"
    })
    expect(parsed("docker.io/busybox:1")).toMatchObject({
      repository: "library/busybox",
      apiHost: "registry-1.docker.io"
    })
    expect(parsed("index.docker.io/user/app:1")).toMatchObject({ domain: "docker.io", repository: "user/app" })
    expect(formatReference(parsed("busybox:1"))).toBe("docker.io/library/busybox:1")
  })

  it("treats the first component as a path unless it looks like a host", () => {
    expect(parsed("team/app:1")).toMatchObject({ domain: "docker.io", repository: "team/app" })
    expect(parsed("my-registry.local/a/b/c:1")).toMatchObject({ domain: "my-registry.local", repository: "a/b/c" })
  })

  it("accepts the separators docker accepts in path components", () => {
    expect(parsed("r.io/a_b/c__d/e.f/g--h:t_1.x-y").repository).toBe("a_b/c__d/e.f/g--h")
  })

  it("rejects what docker rejects", () => {
    const invalid = ["r.io/App:1", "r.io/a//b:1", "r.io/-a:1", "r.io/a:", "r.io/a:-x", "r.io/a_:1", "", "r.io/a@sha2:0"]
    for (const name of invalid) {
      expect(Either.isLeft(parseImageReference(name)), name).toBe(true)
    }
    expect(Either.isLeft(parseImageReference(`r.io/a:${"x".repeat(129)}`))).toBe(true)
    expect(Either.isLeft(parseImageReference(`r.io/${"a".repeat(260)}:1`))).toBe(true)
  })
})

interface Seen {
  readonly method: string
  readonly url: string
  readonly authorization: string | undefined
  readonly contentType: string | undefined
  readonly contentRange: string | undefined
  readonly body: Uint8Array
}

/**
 * A scripted registry behind a fake HttpClient: Bearer auth whose first token expires after the layer upload,
 * relative Location headers with state in their query, and a record of every request.
 */
const fakeRegistry = (options: { readonly refuseUploads?: boolean } = {}) =>
  Effect.gen(function*() {
    const seen = yield* Ref.make<ReadonlyArray<Seen>>([])
    const tokensIssued = yield* Ref.make(0)
    const blobs = new Map<string, Uint8Array>()
    const challenge = "Bearer realm=\"https://auth.example/token\",service=\"fake\"," +
      "scope=\"repository:team/app:pull,push\""
    const http = HttpClient.make((request, url) =>
      Effect.gen(function*() {
        const body = request.body._tag === "Stream"
          ? Chunk.reduce(yield* Stream.runCollect(request.body.stream), new Uint8Array(0), (all, chunk) => {
            const next = new Uint8Array(all.length + chunk.length)
            next.set(all)
            next.set(chunk, all.length)
            return next
          })
          : request.body._tag === "Uint8Array"
          ? request.body.body
          : new Uint8Array(0)
        const authorization = request.headers["authorization"]
        yield* Ref.update(seen, (all) => [...all, {
          method: request.method,
          url: url.toString(),
          authorization,
          contentType: request.headers["content-type"],
          contentRange: request.headers["content-range"],
          body
        }])
        const respond = (status: number, headers: Record<string, string> = {}, text = "") =>
          HttpClientResponse.fromWeb(request, new Response(text === "" ? null : text, { status, headers }))
        if (url.host === "auth.example") {
          const issued = yield* Ref.updateAndGet(tokensIssued, (n) => n + 1)
          const token = JSON.stringify({ access_token: `token-${issued}` })
          return respond(200, { "content-type": "application/json" }, token)
        }
        const issued = yield* Ref.get(tokensIssued)
        const layerDone = [...blobs.keys()].some((key) => key.startsWith("sha256:"))
        const refused = options.refuseUploads === true && request.method === "PATCH"
        const valid = authorization === `Bearer token-${issued}` && !(issued === 1 && layerDone) && !refused
        if (!valid) {
          const error = JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] })
          return respond(401, { "www-authenticate": challenge }, error)
        }
        const path = url.pathname
        if (request.method === "HEAD" && path.startsWith("/v2/team/app/blobs/")) {
          return respond(blobs.has(path.split("/").at(-1)!) ? 200 : 404)
        }
        if (request.method === "POST" && path === "/v2/team/app/blobs/uploads/") {
          return respond(202, { location: "/v2/team/app/blobs/uploads/u1?_state=s0" })
        }
        if (request.method === "PATCH" && path === "/v2/team/app/blobs/uploads/u1") {
          blobs.set("pending", body)
          return respond(202, { location: `/v2/team/app/blobs/uploads/u1?_state=s1&size=${body.length}` })
        }
        if (request.method === "PUT" && path === "/v2/team/app/blobs/uploads/u1") {
          const digest = url.searchParams.get("digest")!
          blobs.set(digest, body.length > 0 ? body : blobs.get("pending")!)
          blobs.delete("pending")
          return respond(201, { "docker-content-digest": digest })
        }
        if (request.method === "PUT" && path === "/v2/team/app/manifests/v1") {
          return respond(201, { "docker-content-digest": sha256Digest(body) })
        }
        return respond(404)
      }).pipe(Effect.orDie)
    )
    return { http, seen, blobs, tokensIssued } as const
  })

/** A blob longer than `monolithicUploadLimit`, uploaded with a PATCH. */
const largeLayer = () => new TextEncoder().encode("layer bytes ".repeat(monolithicUploadLimit / 12 + 1000))

const sessionWith = (registry: Effect.Effect.Success<ReturnType<typeof fakeRegistry>>) =>
  makeSession({
    http: registry.http,
    reference: parsed("registry.example:5000/team/app:v1"),
    credentials: Option.some({ username: "user", password: Redacted.make("pass") }),
    insecure: false
  })

describe("OciRegistry session", () => {
  it.effect("streams a long blob in one PATCH, closes with the digest, follows relative Locations, renews tokens", () =>
    Effect.gen(function*() {
      const registry = yield* fakeRegistry()
      const session = yield* sessionWith(registry)
      expect(session.base).toBe("https://registry.example:5000")
      const layer = largeLayer()
      const chunks = Stream.fromIterable([layer.subarray(0, 5000), layer.subarray(5000)])
      yield* session.pushBlobStream(chunks, Effect.succeed(sha256Digest(layer)))
      const config = yield* session.pushBlob(new TextEncoder().encode("{}"), "application/vnd.oci.image.config.v1+json")
      expect(config).toEqual({
        mediaType: "application/vnd.oci.image.config.v1+json",
        digest: sha256Digest(new TextEncoder().encode("{}")),
        size: 2
      })
      const manifest = new TextEncoder().encode("{\"schemaVersion\":2}")
      const manifestDigest = yield* session.putManifest(manifest, "application/vnd.oci.image.manifest.v1+json")
      expect(manifestDigest).toBe(sha256Digest(manifest))

      const seen = yield* Ref.get(registry.seen)
      const base = "https://registry.example:5000/v2/team/app"
      const digestParam = /digest=sha256%3A[0-9a-f]+/
      expect(seen.map((r) => `${r.method} ${r.url.replace(digestParam, "digest=D")} ${r.authorization}`)).toEqual([
        "GET https://registry.example:5000/v2/ undefined",
        "GET https://auth.example/token?service=fake&scope=repository%3Ateam%2Fapp%3Apull%2Cpush Basic dXNlcjpwYXNz",
        `POST ${base}/blobs/uploads/ Bearer token-1`,
        `PATCH ${base}/blobs/uploads/u1?_state=s0 Bearer token-1`,
        `PUT ${base}/blobs/uploads/u1?_state=s1&size=${layer.length}&digest=D Bearer token-1`,
        `HEAD ${base}/blobs/${config.digest} Bearer token-1`,
        "GET https://auth.example/token?service=fake&scope=repository%3Ateam%2Fapp%3Apull%2Cpush Basic dXNlcjpwYXNz",
        `HEAD ${base}/blobs/${config.digest} Bearer token-2`,
        `POST ${base}/blobs/uploads/ Bearer token-2`,
        `PUT ${base}/blobs/uploads/u1?_state=s0&digest=D Bearer token-2`,
        `PUT ${base}/manifests/v1 Bearer token-2`
      ])
      const patch = seen.find((r) => r.method === "PATCH")!
      expect(patch.contentRange).toBeUndefined()
      expect(patch.contentType).toBe("application/octet-stream")
      expect(sha256Digest(patch.body)).toBe(sha256Digest(layer))
      expect(seen.at(-1)!.contentType).toBe("application/vnd.oci.image.manifest.v1+json")
      expect(sha256Digest(registry.blobs.get(sha256Digest(layer))!)).toBe(sha256Digest(layer))
    }))

  it.effect("does not replay a streamed body after a 401 and names the registry's answer", () =>
    Effect.gen(function*() {
      const registry = yield* fakeRegistry({ refuseUploads: true })
      const session = yield* sessionWith(registry)
      const upload = session.pushBlobStream(Stream.make(largeLayer()), Effect.succeed("sha256:x"))
      const error = yield* Effect.flip(upload)
      expect(error.message).toBe("registry refused credentials (401 UNAUTHORIZED)")
      const requests = (yield* Ref.get(registry.seen)).map((r) => `${r.method} ${new URL(r.url).pathname}`)
      expect(requests.filter((r) => r.startsWith("PATCH"))).toHaveLength(1)
      expect(requests.at(-1)).toBe("DELETE /v2/team/app/blobs/uploads/u1")
    }))

  it.effect("uploads a stream that ends within the limit in the closing PUT, copied out of reused buffers", () =>
    Effect.gen(function*() {
      const registry = yield* fakeRegistry()
      const session = yield* sessionWith(registry)
      const layer = new TextEncoder().encode("small layer ".repeat(25000))
      // One buffer refilled for every chunk, as readArchive's ring reuses its buffers.
      const buffer = new Uint8Array(100000)
      const chunks = Stream.range(0, 2, 1).pipe(
        Stream.map((index) => {
          buffer.set(layer.subarray(index * buffer.length, (index + 1) * buffer.length))
          return buffer.subarray(0, Math.min(buffer.length, layer.length - index * buffer.length))
        })
      )
      yield* session.pushBlobStream(chunks, Effect.succeed(sha256Digest(layer)))
      const seen = yield* Ref.get(registry.seen)
      const base = "https://registry.example:5000/v2/team/app"
      expect(seen.slice(2).map((r) => `${r.method} ${r.url}`)).toEqual([
        `POST ${base}/blobs/uploads/`,
        `PUT ${base}/blobs/uploads/u1?_state=s0&digest=${encodeURIComponent(sha256Digest(layer))}`
      ])
      expect(seen.at(-1)!.contentType).toBe("application/octet-stream")
      expect(sha256Digest(registry.blobs.get(sha256Digest(layer))!)).toBe(sha256Digest(layer))
    }))

  it.effect("cancels the opened upload when the stream fails before its first bytes are sent", () =>
    Effect.gen(function*() {
      const registry = yield* fakeRegistry()
      const session = yield* sessionWith(registry)
      const failing = Stream.concat(Stream.make(Uint8Array.of(1)), Stream.fail("archive unreadable"))
      const error = yield* Effect.flip(session.pushBlobStream(failing, Effect.succeed("sha256:x")))
      expect(error).toBe("archive unreadable")
      const requests = (yield* Ref.get(registry.seen)).map((r) => `${r.method} ${new URL(r.url).pathname}`)
      expect(requests.slice(2)).toEqual(["POST /v2/team/app/blobs/uploads/", "DELETE /v2/team/app/blobs/uploads/u1"])
    }))
})
