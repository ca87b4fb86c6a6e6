import { ContainerName, ContainerRef, ImageBuilder, Namespace, PodName } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { connect, createServer } from "node:net"
import type { AddressInfo, Socket } from "node:net"
import { describeE2E } from "../../../test/harness/E2E.ts"
import { startRegistry } from "../../../test/harness/Registry.ts"
import { nativeBuilder, sha256, writeMarkedArchive } from "./BuilderFixtures.ts"

/**
 * A TCP relay to the registry on a port of its own that can drop every connection it carries and reset the next
 * ones it is given, as a flaky network does.
 */
const startFlakyRelay = (target: { readonly host: string; readonly port: number }) =>
  Effect.acquireRelease(
    Effect.async<{
      readonly port: number
      readonly dropAll: () => void
      readonly resetNext: (count: number) => void
      readonly resets: () => number
      readonly close: () => void
    }>((resume) => {
      const open = new Set<Socket>()
      let toReset = 0
      let resets = 0
      const server = createServer((client) => {
        if (toReset > 0) {
          toReset--
          resets++
          client.resetAndDestroy()
          return
        }
        const upstream = connect(target.port, target.host)
        for (const socket of [client, upstream]) {
          open.add(socket)
          socket.on("error", () => undefined)
          socket.on("close", () => open.delete(socket))
        }
        client.pipe(upstream).pipe(client)
        client.on("close", () => upstream.destroy())
        upstream.on("close", () => client.destroy())
      })
      const dropAll = () => open.forEach((socket) => socket.destroy())
      server.listen(0, "127.0.0.1", () =>
        resume(Effect.succeed({
          port: (server.address() as AddressInfo).port,
          dropAll,
          resetNext: (count) => {
            toReset = count
          },
          resets: () => resets,
          close: () => {
            dropAll()
            server.close()
          }
        })))
    }),
    (relay) => Effect.sync(() => relay.close())
  )

const container = ContainerRef.make({
  namespace: Namespace.make("default"),
  pod: PodName.make("web"),
  container: ContainerName.make("app")
})

describeE2E("NativeImageBuilder on a flaky network", () => {
  it.scopedLive(
    "a registry request whose connection is reset is sent again, and the push succeeds",
    () =>
      Effect.gen(function*() {
        const fs = yield* FileSystem.FileSystem
        const dir = yield* fs.makeTempDirectoryScoped({ prefix: "registry-retry-" })
        const registry = yield* startRegistry({ dir: `${dir}/registry`, auth: "anonymous" })
        const [host, port] = registry.host.split(":")
        const relay = yield* startFlakyRelay({ host: host!, port: Number(port) })
        const archive = yield* writeMarkedArchive(dir, "retry", 300 * 1024)
        const archiveDigest = sha256(yield* fs.readFile(archive))
        const builder = Context.get(
          yield* Layer.build(nativeBuilder({ REGISTRY_CA_FILE: registry.caFile })),
          ImageBuilder
        )
        const push = (tag: string) =>
          builder.build({ archive, container, imageName: `127.0.0.1:${relay.port}/retry/app:${tag}` })

        yield* push("first")
        // The connections the first push left open go; the next connection is reset as soon as it is accepted.
        relay.dropAll()
        yield* Effect.sleep("200 millis")
        relay.resetNext(1)
        const second = yield* push("second")

        expect(relay.resets()).toBe(1)
        const manifest = yield* registry.manifest("retry/app", "second")
        expect(manifest.digest).toBe(second.digest)
        expect(manifest.json.layers.map((layer) => layer.digest)).toEqual([archiveDigest])
      }).pipe(Effect.provide(NodeContext.layer)),
    120_000
  )
})
