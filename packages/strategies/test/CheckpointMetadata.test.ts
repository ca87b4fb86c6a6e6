import { ContainerName, ContainerRef, Namespace, PodName } from "@checkpointer/core"
import { describe, expect, it } from "@effect/vitest"
import { Option } from "effect"
import { checkpointFacts } from "../src/archive/CheckpointMetadata.ts"
import { imageAnnotations } from "../src/archive/ImageAnnotations.ts"
import { podmanConfigDump, podmanSpecDump } from "./ArchiveFixtures.ts"

describe("CheckpointMetadata", () => {
  it("reads checkpointctl's facts for Podman, CRI-O and containerd archives", () => {
    const podman = checkpointFacts({ configDump: Option.some(podmanConfigDump), specDump: Option.some(podmanSpecDump) })
    expect(podman).toEqual({
      engine: "Podman",
      containerName: "web-counter",
      runtime: "runc",
      rootfsImageName: "localhost/busybox:test",
      rootfsImageId: "b1e2842282687f25",
      rawImageName: "localhost/busybox:test"
    })
    const crio = checkpointFacts({
      configDump: Option.some({
        id: "abc",
        name: "k8s_counter_counters_default_1",
        rootfsImage: "quay.io/adrianreber/counter:latest",
        rootfsImageRef: "sha256:7c2d",
        rootfsImageName: "quay.io/adrianreber/counter:latest",
        runtime: "crun"
      }),
      specDump: Option.some({
        annotations: {
          "io.container.manager": "cri-o",
          "io.kubernetes.cri-o.Metadata": "{\"name\":\"counter\"}",
          "io.kubernetes.pod.name": "counters",
          "io.kubernetes.pod.namespace": "default"
        }
      })
    })
    expect(crio).toEqual({
      engine: "CRI-O",
      containerName: "counter",
      podName: "counters",
      podNamespace: "default",
      runtime: "crun",
      rootfsImageName: "quay.io/adrianreber/counter:latest",
      rootfsImageUserRequested: "quay.io/adrianreber/counter:latest",
      rootfsImageId: "sha256:7c2d"
    })
    expect(checkpointFacts({
      configDump: Option.some({ runtime: "runc" }),
      specDump: Option.some({
        annotations: {
          "io.kubernetes.cri.container-name": "app",
          "io.kubernetes.cri.sandbox-name": "pod-1",
          "io.kubernetes.cri.sandbox-namespace": "ns"
        }
      })
    })).toEqual({ engine: "containerd", containerName: "app", podName: "pod-1", podNamespace: "ns", runtime: "runc" })
    expect(checkpointFacts({ configDump: Option.none(), specDump: Option.none() })).toEqual({})
  })

  it("annotates for CRI-O always and for Podman only when the runtime is known", () => {
    const container = ContainerRef.make({
      namespace: Namespace.make("default"),
      pod: PodName.make("web"),
      container: ContainerName.make("counter")
    })
    const facts = checkpointFacts({ configDump: Option.some(podmanConfigDump), specDump: Option.some(podmanSpecDump) })
    expect(imageAnnotations(facts, container, "amd64")).toEqual({
      "io.kubernetes.cri-o.annotations.checkpoint.name": "counter",
      "org.criu.checkpoint.container.name": "web-counter",
      "org.criu.checkpoint.pod.name": "web",
      "org.criu.checkpoint.pod.namespace": "default",
      "org.criu.checkpoint.host.arch": "amd64",
      "org.criu.checkpoint.engine.name": "Podman",
      "org.criu.checkpoint.runtime.name": "runc",
      "org.criu.checkpoint.rootfsImageName": "localhost/busybox:test",
      "org.criu.checkpoint.rootfsImageID": "b1e2842282687f25",
      "org.criu.checkpoint.rawImageName": "localhost/busybox:test",
      "io.podman.annotations.checkpoint.name": "web-counter",
      "io.podman.annotations.checkpoint.runtime.name": "runc",
      "io.podman.annotations.checkpoint.rootfsImageName": "localhost/busybox:test",
      "io.podman.annotations.checkpoint.rootfsImageID": "b1e2842282687f25",
      "io.podman.annotations.checkpoint.rawImageName": "localhost/busybox:test"
    })
    expect(imageAnnotations({}, container, "arm64")).toEqual({
      "io.kubernetes.cri-o.annotations.checkpoint.name": "counter",
      "org.criu.checkpoint.container.name": "counter",
      "org.criu.checkpoint.pod.name": "web",
      "org.criu.checkpoint.pod.namespace": "default",
      "org.criu.checkpoint.host.arch": "arm64"
    })
  })
})
