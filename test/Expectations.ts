import { FileSystem } from "@effect/platform"
import { expect } from "@effect/vitest"
import { CoreV1Api, KubeConfig } from "@kubernetes/client-node"
import type { CoreV1Event } from "@kubernetes/client-node"
import { Effect, Schedule } from "effect"
import type { LocalCluster } from "./harness/Cluster.ts"
import type { RestoreOptions } from "./harness/Cluster.ts"
import { counterOf, runRestoredPod } from "./harness/Cluster.ts"
import type { TestRegistry } from "./harness/Registry.ts"

/**
 * Restores a checkpoint image the way a cluster does (see `runRestoredPod`). Where the runtime says whether it
 * restored (CRI-O does, containerd does not), it must say so.
 */
export const expectRestoredPod = (
  stack: { readonly cluster: LocalCluster; readonly registry: TestRegistry },
  image: string,
  name: string,
  options: RestoreOptions = {}
) =>
  Effect.gen(function*() {
    const restored = yield* runRestoredPod(stack, image, name, options)
    if (restored !== undefined) expect(restored).toBe(true)
  })

/** A restored counter goes on from where the checkpoint was taken, not from 1. */
export const expectRestoredCounterContinues = (
  stack: { readonly cluster: LocalCluster; readonly registry: TestRegistry },
  image: string,
  name: string,
  valueBeforeCheckpoint: number,
  options: RestoreOptions = {}
) =>
  Effect.gen(function*() {
    const namespace = options.namespace ?? "default"
    yield* expectRestoredPod(stack, image, name, options)
    const counter = counterOf(stack.cluster, namespace, name, options.container)
    const first = yield* counter.value
    expect(first).toBeGreaterThanOrEqual(valueBeforeCheckpoint)
    const later = yield* counter.waitAbove(first + 2)
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

/**
/** Whether Checkpointer wrote an event (the simulated kubelet writes others: Started, Failed). */
export const byCheckpointer = (event: CoreV1Event) => event.source?.component === "checkpointer"

/**
 * The Kubernetes events on a pod, read through @kubernetes/client-node as `kubectl describe pod` reads them, once
 * Checkpointer wrote `until` of them, or one has the reason `until` (Checkpointer writes them in the background), or
 * those there are after 10 s.
 */
export const podEvents = (cluster: LocalCluster, namespace: string, pod: string, until: number | string = 1) => {
  const list = Effect.promise(() => {
    const config = new KubeConfig()
    config.loadFromFile(cluster.apiServer.kubeconfigPath)
    return config.makeApiClient(CoreV1Api).listNamespacedEvent({
      namespace,
      fieldSelector: `involvedObject.kind=Pod,involvedObject.name=${pod}`
    })
  }).pipe(Effect.map((found) => found.items))
  return list.pipe(
    Effect.filterOrFail((events) =>
      typeof until === "number"
        ? events.filter(byCheckpointer).length >= until
        : events.some((event) => event.reason === until)
    ),
    Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.intersect(Schedule.recurs(100)))),
    Effect.orElse(() => list)
  )
}
