import { FileSystem, HttpClientRequest, Path } from "@effect/platform"
import { Effect } from "effect"
import type { TestRegistry } from "../test/harness/Registry.ts"
import { startRegistry } from "../test/harness/Registry.ts"
import { summarize } from "./Stats.ts"
import type { BenchError } from "./Tools.ts"
import { failedTo, findProcess, processCpu, seconds } from "./Tools.ts"

export interface BenchRegistry extends TestRegistry {
  /** Deletes everything the registry stores (it keeps running): the next push lands in an empty registry. */
  readonly empty: Effect.Effect<void, BenchError>
  /** CPU seconds the docker-registry process has used so far (0 if it could not be found). */
  readonly cpu: Effect.Effect<number>
}

/**
 * Scoped: the harness's real docker-registry on loopback, TLS (its own CA) and htpasswd (Basic) auth, shared by every
 * pipeline. Its storage is emptied before every run instead of starting a registry per run, so that the Checkpointer
 * process (configured with one registry) stays warm between runs as it does in production. `listen`: elsewhere than
 * loopback, e.g. inside a network namespace (see startRegistry).
 */
export const startBenchRegistry = Effect.fn("BenchRegistry.start")(function*(
  dir: string,
  listen?: { readonly address: string; readonly commandPrefix?: ReadonlyArray<string> }
) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const registry = yield* startRegistry({
    dir,
    auth: "htpasswd",
    tls: true,
    ...(listen === undefined ? {} : { listen })
  })
  // startRegistry keeps the registry's filesystem storage in DIR/storage (the registry creates it on demand).
  const storage = path.join(dir, "storage")
  const empty = fs.remove(storage, { recursive: true, force: true }).pipe(
    Effect.zipRight(fs.exists(storage)),
    Effect.filterOrFail((exists) => !exists, () => `${storage} still exists`),
    Effect.asVoid,
    Effect.mapError(failedTo("empty the registry"))
  )
  yield* empty
  const pid = yield* findProcess(["docker-registry", "serve", path.join(dir, "config.yml")])
  return {
    ...registry,
    empty,
    cpu: pid === undefined ? Effect.succeed(0) : processCpu(pid)
  } satisfies BenchRegistry
}, Effect.mapError(failedTo("start the registry")))

/** How long the registry itself takes to answer, in seconds: medians over one kept-alive connection. */
export interface RegistryAnswers {
  readonly requests: number
  /** `GET /v2/` without credentials (answered 401). */
  readonly unauthenticated: number
  /** `GET /v2/` with the htpasswd credentials (200). */
  readonly authenticated: number
  /** `POST /v2/<repository>/blobs/uploads/` with them (202): the first of a push's sequential round trips. */
  readonly uploadStart: number
}

/** Times `requests` requests of each kind, one after the other, with the harness's client of the registry. */
export const registryAnswers = Effect.fn("BenchRegistry.answers")(function*(
  registry: BenchRegistry,
  repository: string,
  requests = 25
) {
  const authorized = HttpClientRequest.basicAuth(registry.username, registry.password)
  const median = (request: HttpClientRequest.HttpClientRequest, expected: number) =>
    Effect.gen(function*() {
      const times: Array<number> = []
      for (let i = 0; i < requests; i++) {
        const [time, status] = yield* seconds(
          Effect.flatMap(registry.http.execute(request), (response) => Effect.as(response.text, response.status))
        )
        if (status !== expected) {
          return yield* Effect.fail(`${request.method} ${request.url} answered ${status}, expected ${expected}`)
        }
        times.push(time)
      }
      return summarize(times).median
    })
  const result = {
    requests,
    unauthenticated: yield* median(HttpClientRequest.get(`${registry.url}/v2/`), 401),
    authenticated: yield* median(HttpClientRequest.get(`${registry.url}/v2/`).pipe(authorized), 200),
    uploadStart: yield* median(
      HttpClientRequest.post(`${registry.url}/v2/${repository}/blobs/uploads/`).pipe(authorized),
      202
    )
  } satisfies RegistryAnswers
  yield* registry.empty
  return result
}, Effect.mapError(failedTo("time the registry's answers")))
