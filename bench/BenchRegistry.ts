import { FileSystem, Path } from "@effect/platform"
import { Effect } from "effect"
import type { TestRegistry } from "../test/harness/Registry.ts"
import { startRegistry } from "../test/harness/Registry.ts"
import type { BenchError } from "./Tools.ts"
import { failedTo, findProcess, processCpu } from "./Tools.ts"

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
