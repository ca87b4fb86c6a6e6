import type { CommandExecutor } from "@effect/platform"
import { FileSystem, Path } from "@effect/platform"
import type { PlatformError } from "@effect/platform/Error"
import { Effect, Option, Schedule } from "effect"
import type { Scope } from "effect"
import type { ApiServer, ApiServerError, Pod } from "./ApiServer.ts"
import { startApiServer } from "./ApiServer.ts"
import type { Pki } from "./Certificates.ts"
import { makePki } from "./Certificates.ts"
import type { HttpsServerError } from "./HttpsServer.ts"
import type { KubeletNode } from "./KubeletNode.ts"
import { startKubeletNode } from "./KubeletNode.ts"
import * as Podman from "./Podman.ts"

export interface LocalCluster {
  readonly dir: string
  readonly pki: Pki
  readonly apiServer: ApiServer
  /** One per requested node, in order, on 127.0.0.2, 127.0.0.3, ... */
  readonly nodes: ReadonlyArray<KubeletNode>
  readonly node: (name: string) => KubeletNode
}

type Requirements = CommandExecutor.CommandExecutor | FileSystem.FileSystem | Path.Path

/**
 * An API server on 127.0.0.1 and one kubelet endpoint per node on its own loopback address, sharing one PKI under
 * `dir`. A kubelet knows the pods the API server binds to its node (as long as they exist there).
 */
export const startLocalCluster = (options: {
  readonly dir: string
  readonly nodes: ReadonlyArray<string>
}): Effect.Effect<LocalCluster, Error | PlatformError | HttpsServerError, Requirements | Scope.Scope> =>
  Effect.gen(function*() {
    const path = yield* Path.Path
    const fs = yield* FileSystem.FileSystem
    const dir = path.resolve(options.dir)
    yield* fs.makeDirectory(dir, { recursive: true })
    const pki = yield* makePki(path.join(dir, "pki"))
    const apiServer = yield* startApiServer({ pki, dir: path.join(dir, "apiserver") })
    const nodes = yield* Effect.forEach(options.nodes, (nodeName, i) =>
      Effect.gen(function*() {
        const address = `127.0.0.${i + 2}`
        yield* apiServer.addNode({ name: nodeName, address })
        return yield* startKubeletNode({
          nodeName,
          address,
          pki,
          checkpointsDir: path.join(dir, "nodes", nodeName, "checkpoints"),
          lookupPod: (namespace, pod) =>
            apiServer.findPod(namespace, pod).pipe(
              Effect.map((found) =>
                Option.getOrUndefined(Option.filter(found, (p) => p.spec.nodeName === nodeName))?.spec.containers.map(
                  (container) => container.name
                )
              )
            )
        })
      }))
    const node = (name: string) => {
      const found = nodes.find((n) => n.nodeName === name)
      if (found === undefined) throw new Error(`no node ${name} in this cluster`)
      return found
    }
    return { dir, pki, apiServer, nodes, node } satisfies LocalCluster
  }).pipe(Effect.withSpan("Cluster.start"))

/**
 * A running counter pod: the podman container `<name>-<container>` (scoped) registered with the API server as a
 * Running pod on `nodeName`.
 */
export const startCounterPod = (
  apiServer: ApiServer,
  options: {
    readonly namespace: string
    readonly name: string
    readonly nodeName: string
    readonly container?: string
    readonly labels?: Readonly<Record<string, string>>
    readonly podIP?: string
  }
): Effect.Effect<
  { readonly pod: Pod; readonly container: Podman.RunningContainer },
  Podman.PodmanError | PlatformError | ApiServerError,
  Requirements | Scope.Scope
> =>
  Effect.gen(function*() {
    const containerName = options.container ?? "counter"
    const container = yield* Podman.runCounter(`${options.name}-${containerName}`)
    const pod = yield* apiServer.addPod({
      namespace: options.namespace,
      name: options.name,
      nodeName: options.nodeName,
      containers: [{ name: containerName }],
      ...(options.labels === undefined ? {} : { labels: options.labels }),
      ...(options.podIP === undefined ? {} : { podIP: options.podIP })
    })
    return { pod, container }
  })

/**
 * A Running pod whose container `main` holds `bytes` random bytes in its rootfs: they end up in the checkpoint
 * archive's rootfs-diff.tar (and do not compress), which makes archives of a chosen size.
 */
export const startBallastPod = (
  apiServer: ApiServer,
  options: { readonly namespace: string; readonly name: string; readonly nodeName: string; readonly bytes: number }
): Effect.Effect<Pod, Podman.PodmanError | PlatformError | ApiServerError, Requirements | Scope.Scope> =>
  Effect.gen(function*() {
    const container = `${options.name}-main`
    yield* Podman.ensureBusyboxImage()
    yield* Podman.runContainer({
      name: container,
      command: [
        "sh",
        "-c",
        `trap "exit 0" TERM; head -c ${options.bytes} /dev/urandom > /ballast && echo > /ready; ` +
        "while true; do sleep 0.2; done"
      ]
    })
    yield* Podman.podman(["exec", container, "cat", "/ready"]).pipe(
      Effect.retry({ schedule: Schedule.spaced("500 millis"), times: 240 })
    )
    return yield* apiServer.addPod({
      namespace: options.namespace,
      name: options.name,
      nodeName: options.nodeName,
      containers: [{ name: "main" }]
    })
  })
