import { Effect, Ref } from "effect"
import type { CreateFault } from "../PodRuntime.ts"
import { failure } from "./Status.ts"

/** Failures a test forces on the API's answers. */
export const makeFaults = Effect.gen(function*() {
  const createFault = yield* Ref.make<CreateFault | null>(null)
  return {
    setCreateFault: (fault: CreateFault | null) => Ref.set(createFault, fault),
    /** Fails as a pod creation through the API must fail now, if a fault is set. */
    checkPodCreation: Effect.flatMap(
      Ref.get(createFault),
      (fault) => fault === null ? Effect.void : Effect.fail(failure(fault.code, fault.reason, fault.message))
    )
  } as const
})

export type Faults = Effect.Effect.Success<typeof makeFaults>
