import { FileSystem } from "@effect/platform"
import { expect } from "@effect/vitest"
import { Effect } from "effect"
import * as Podman from "./harness/Podman.ts"
import type { TestRegistry } from "./harness/Registry.ts"

/** The counter of a restored container goes on from where its checkpoint was taken, not from 1. */
export const expectRestoredCounterContinues = (
  registry: TestRegistry,
  image: string,
  name: string,
  valueBeforeCheckpoint: number
) =>
  Effect.gen(function*() {
    const restored = yield* Podman.restoreFromImage({
      image,
      name,
      certDir: registry.certDir,
      tlsVerify: true,
      creds: { username: registry.username, password: registry.password }
    })
    const first = yield* Podman.counterValue(restored.name)
    expect(first).toBeGreaterThanOrEqual(valueBeforeCheckpoint)
    const later = yield* Podman.waitForCounterAbove(restored.name, first + 2)
    expect(later).toBeGreaterThan(first)
    return { first, later }
  })

export const expectNoArchiveLeft = (checkpointsDir: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const left = yield* fs.readDirectory(checkpointsDir).pipe(Effect.orElseSucceed(() => []))
    expect(left).toEqual([])
  })

export const tagOf = (imageName: string) => imageName.slice(imageName.lastIndexOf(":") + 1)
