import { Data } from "effect"
import type { ContainerRef } from "./Domain.ts"

/** The kubelet (or the API server) says the pod or container does not exist. */
export class ContainerMissing extends Data.TaggedError("ContainerMissing")<{
  readonly container: ContainerRef
  readonly message: string
}> {}

/** The phases of a checkpoint, in the order they run: the words of failure messages, logs and metrics. */
export type CheckpointPhase = "kubelet" | "build/push" | "delete pod" | "result store"

/** The steps of the build/push phase, as image builders report where a build failed. */
export type BuildStep =
  | "read archive"
  | "build context"
  | "pod resources"
  | "pod creation"
  | "scheduling"
  | "streaming"
  | "build"
  | "push"
  | "compress layer"
  | "encrypt layer"

/** A checkpoint failed in one phase (and step); `message` is safe to show to callers (no credentials). */
export class PhaseFailed extends Data.TaggedError("PhaseFailed")<{
  readonly phase: CheckpointPhase
  readonly step?: BuildStep
  readonly message: string
  readonly cause?: unknown
}> {
  /** The one text a caller is told: `checkpoint failed in phase "build/push": push: <why>`. */
  get description(): string {
    const step = this.step === undefined ? "" : `${this.step}: `
    return `checkpoint failed in phase "${this.phase}": ${step}${this.message}`
  }
}

/** The phases of a restore, in the order they run. */
export type RestorePhase = "image" | "pod creation" | "scheduling" | "image pull" | "restore" | "result store"

/** A restore failed in one phase; `message` is safe to show to callers (with the pod's events when it has some). */
export class RestoreFailed extends Data.TaggedError("RestoreFailed")<{
  readonly phase: RestorePhase
  readonly message: string
  readonly cause?: unknown
}> {
  get description(): string {
    return `restore failed in phase "${this.phase}": ${this.message}`
  }
}
