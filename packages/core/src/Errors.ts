import { Data } from "effect"
import type { ContainerRef } from "./Domain.ts"

/** The kubelet (or the API server) says the pod or container does not exist. */
export class ContainerMissing extends Data.TaggedError("ContainerMissing")<{
  readonly container: ContainerRef
  readonly message: string
}> {}

export type CheckpointPhase = "kubelet" | "build/push" | "delete pod" | "result store"

/** A checkpoint failed in one phase; `message` is safe to show to callers (no credentials). */
export class PhaseFailed extends Data.TaggedError("PhaseFailed")<{
  readonly phase: CheckpointPhase
  readonly message: string
  readonly cause?: unknown
}> {
  get description(): string {
    return `checkpoint failed in phase "${this.phase}": ${this.message}`
  }
}
