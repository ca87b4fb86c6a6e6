import type { CommandExecutor } from "@effect/platform"
import { FileSystem, Path } from "@effect/platform"
import type { PlatformError } from "@effect/platform/Error"
import { Effect } from "effect"
import type { Scope } from "effect"
import { createHash } from "node:crypto"
import { runtimesBin } from "./CriRuntime.ts"
import type { PodmanError } from "./Podman.ts"
import { counterScript, podman } from "./Podman.ts"
import type { ProcessError } from "./Process.ts"
import { run } from "./Process.ts"
import type { RegistryHarnessError, TestRegistry } from "./Registry.ts"
import { startRegistry } from "./Registry.ts"

/** The images pods of the harness run, in a registry that serves them without credentials. */
export interface Workloads {
  readonly registry: TestRegistry
  /** busybox whose own CMD is the counter (runtimes rebuild a restored container from the image's command). */
  readonly counterImage: string
  /** The pause image CRI-O and containerd need for pod sandboxes. */
  readonly pauseImage: string
}

const applets = ["sh", "sleep", "echo", "cat", "ls", "mkdir", "rm", "mv", "true", "false", "test", "kill", "ps", "head"]

/** Builds an image from one root filesystem folder with podman, pushes it to `registry` and drops the local copy. */
const pushImage = (options: {
  readonly rootfs: string
  readonly tarball: string
  readonly image: string
  readonly changes: ReadonlyArray<string>
}) =>
  Effect.gen(function*() {
    yield* run(["tar", "-C", options.rootfs, "-cf", options.tarball, "."])
    const changes = options.changes.flatMap((change) => ["--change", change])
    yield* podman(["import", ...changes, options.tarball, options.image])
    yield* podman(["push", "--quiet", "--tls-verify=false", options.image])
    yield* Effect.ignore(podman(["rmi", "--force", options.image]))
    return options.image
  })

/** An anonymous plain-HTTP registry (as a cluster's workload images are pulled) with the counter and pause images. */
export const startWorkloads = (options: { readonly dir: string }): Effect.Effect<
  Workloads,
  RegistryHarnessError | ProcessError | PodmanError | PlatformError,
  Scope.Scope | FileSystem.FileSystem | Path.Path | CommandExecutor.CommandExecutor
> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const registry = yield* startRegistry({ dir: path.join(options.dir, "registry"), auth: "anonymous", tls: false })
    const build = path.join(options.dir, "build")
    const busybox = path.join(build, "busybox")
    yield* fs.makeDirectory(path.join(busybox, "bin"), { recursive: true })
    yield* fs.copyFile("/bin/busybox", path.join(busybox, "bin", "busybox"))
    yield* fs.chmod(path.join(busybox, "bin", "busybox"), 0o755)
    yield* Effect.forEach(applets, (applet) => fs.symlink("busybox", path.join(busybox, "bin", applet)), {
      discard: true
    })
    const counterImage = yield* pushImage({
      rootfs: busybox,
      tarball: path.join(build, "counter.tar"),
      image: `${registry.host}/workloads/counter:1`,
      changes: [`CMD ${JSON.stringify(["sh", "-c", counterScript])}`]
    })
    const pause = path.join(build, "pause")
    yield* fs.makeDirectory(pause, { recursive: true })
    yield* fs.copyFile(path.join(runtimesBin, "pause"), path.join(pause, "pause"))
    yield* fs.chmod(path.join(pause, "pause"), 0o755)
    const pauseImage = yield* pushImage({
      rootfs: pause,
      tarball: path.join(build, "pause.tar"),
      image: `${registry.host}/pause:3.10`,
      changes: ["ENTRYPOINT [\"/pause\"]"]
    })
    yield* fs.remove(build, { recursive: true })
    return { registry, counterImage, pauseImage } satisfies Workloads
  }).pipe(Effect.withSpan("Workloads.start"))

/** Annotations of the checkpoint base image, as the original base image had them (scratch + annotations). */
export const checkpointBaseAnnotations: Readonly<Record<string, string>> = {
  "io.kubernetes.cri-o.annotations.checkpoint.name": "checkpoint-base",
  "org.opencontainers.image.title": "checkpoint-base"
}

/**
 * The checkpoint base image the Kaniko builders start `FROM` (an empty image with the checkpoint annotations), written
 * as an OCI layout and pushed with skopeo to `REGISTRY/checkpoint-base:1.0.0`.
 */
export const pushCheckpointBaseImage = (options: {
  readonly registry: Pick<TestRegistry, "host" | "authFile" | "certDir">
  readonly dir: string
}) =>
  Effect.scoped(Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    yield* fs.makeDirectory(options.dir, { recursive: true })
    const layout = yield* fs.makeTempDirectoryScoped({ directory: options.dir, prefix: "base-image-" })
    const blobs = path.join(layout, "blobs", "sha256")
    yield* fs.makeDirectory(blobs, { recursive: true })
    const writeBlob = (json: unknown) =>
      Effect.gen(function*() {
        const bytes = new TextEncoder().encode(JSON.stringify(json))
        const hex = createHash("sha256").update(bytes).digest("hex")
        yield* fs.writeFile(path.join(blobs, hex), bytes)
        return { digest: `sha256:${hex}`, size: bytes.length }
      })
    const config = yield* writeBlob({
      architecture: ({ x64: "amd64", arm64: "arm64" } as Record<string, string>)[process.arch] ?? process.arch,
      os: "linux",
      config: {},
      rootfs: { type: "layers", diff_ids: [] }
    })
    const manifest = yield* writeBlob({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
      layers: [],
      annotations: checkpointBaseAnnotations
    })
    yield* fs.writeFileString(path.join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }))
    yield* fs.writeFileString(
      path.join(layout, "index.json"),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [{ mediaType: "application/vnd.oci.image.manifest.v1+json", ...manifest }]
      })
    )
    const image = `${options.registry.host}/checkpoint-base:1.0.0`
    yield* run([
      "skopeo",
      "copy",
      "--quiet",
      "--dest-authfile",
      options.registry.authFile,
      "--dest-cert-dir",
      options.registry.certDir,
      `oci:${layout}`,
      `docker://${image}`
    ])
    return image
  }))
