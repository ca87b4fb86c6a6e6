import type { ContainerRef } from "@checkpointer/core"
import type { CheckpointFacts } from "./CheckpointMetadata.ts"

const ociArchitectures: Readonly<Record<string, string>> = { x64: "amd64", arm64: "arm64", arm: "arm", ia32: "386" }
export const nodeArchitecture = (): string => ociArchitectures[process.arch] ?? process.arch

/**
 * The manifest annotations that CRI-O, Podman and checkpointctl look for, from what the archive tells and the
 * container checkpointed (when known; the archive's names otherwise).
 */
export const imageAnnotations = (
  facts: CheckpointFacts,
  container: ContainerRef | undefined,
  architecture: string
): Record<string, string> => {
  const engineName = facts.containerName ?? container?.container
  const optional = (entries: ReadonlyArray<readonly [string, string | undefined]>) =>
    Object.fromEntries(entries.filter((entry): entry is readonly [string, string] => entry[1] !== undefined))
  return {
    ...optional([
      ["io.kubernetes.cri-o.annotations.checkpoint.name", container?.container ?? facts.containerName],
      ["org.criu.checkpoint.container.name", engineName],
      ["org.criu.checkpoint.pod.name", facts.podName ?? container?.pod],
      ["org.criu.checkpoint.pod.namespace", facts.podNamespace ?? container?.namespace]
    ]),
    "org.criu.checkpoint.host.arch": architecture,
    ...optional([
      ["org.criu.checkpoint.engine.name", facts.engine],
      ["org.criu.checkpoint.runtime.name", facts.runtime],
      ["org.criu.checkpoint.rootfsImageName", facts.rootfsImageName],
      ["org.criu.checkpoint.rootfsImageUserRequested", facts.rootfsImageUserRequested],
      ["org.criu.checkpoint.rootfsImageID", facts.rootfsImageId],
      ["org.criu.checkpoint.rawImageName", facts.rawImageName]
    ]),
    ...(facts.runtime === undefined || engineName === undefined ? {} : {
      "io.podman.annotations.checkpoint.name": engineName,
      "io.podman.annotations.checkpoint.runtime.name": facts.runtime,
      ...optional([
        ["io.podman.annotations.checkpoint.rootfsImageName", facts.rootfsImageName],
        ["io.podman.annotations.checkpoint.rootfsImageID", facts.rootfsImageId],
        ["io.podman.annotations.checkpoint.rawImageName", facts.rawImageName]
      ])
    })
  }
}
