import { FileSystem } from "@effect/platform"
import { Deferred, Effect, Option, Stream } from "effect"
import type { Writable } from "node:stream"
import * as Zlib from "node:zlib"
import { Parser } from "tar"
import type { ReadEntry } from "tar"
import {
  ArchiveError,
  bufferView,
  fatalTarWarnings,
  readFailed,
  sniffCompression,
  unreadableTar,
  writeDrained
} from "./ArchiveFormat.ts"
import { splitAtFrameEnds } from "./ZstdFrames.ts"

/** config.dump and spec.dump as JSON objects, when the archive has them. */
export interface CheckpointMetadata {
  readonly configDump: Option.Option<Readonly<Record<string, unknown>>>
  readonly specDump: Option.Option<Readonly<Record<string, unknown>>>
}

const metadataFiles = ["config.dump", "spec.dump"] as const
type MetadataFile = (typeof metadataFiles)[number]
const maxMetadataSize = 16 * 1024 * 1024

const entryName = (path: string): string => path.replace(/^(\.\/)+/, "")

const isMetadataFile = (name: string): name is MetadataFile => (metadataFiles as ReadonlyArray<string>).includes(name)

/** The metadata files' texts, as the tar entries handed to `collectMetadata` complete. */
export type CollectedMetadata = Map<MetadataFile, string>

export const allMetadataCollected = (completed: CollectedMetadata) => completed.size === metadataFiles.length

/**
 * A tar entry handler that keeps config.dump and spec.dump in `completed` and lets every other entry pass. The bytes
 * are copied: the archive reader reuses its buffers (see readArchive).
 */
export const collectMetadata =
  (completed: CollectedMetadata, onCollected: () => void = () => {}) => (entry: ReadEntry) => {
    const name = entryName(entry.path)
    if (!isMetadataFile(name) || entry.type !== "File" || entry.size > maxMetadataSize || completed.has(name)) {
      entry.resume()
      return
    }
    const chunks: Array<Buffer> = []
    entry.on("data", (chunk: Buffer) => chunks.push(Buffer.from(chunk)))
    entry.on("end", () => {
      completed.set(name, Buffer.concat(chunks).toString("utf8"))
      onCollected()
    })
  }

const parseJsonObject = (name: MetadataFile, text: string) =>
  Effect.try({
    try: () => JSON.parse(text) as unknown,
    catch: (cause) => new ArchiveError({ message: `${name} in the archive is not valid JSON`, cause })
  }).pipe(
    Effect.filterOrFail(
      (value): value is Record<string, unknown> => typeof value === "object" && value !== null && !Array.isArray(value),
      () => new ArchiveError({ message: `${name} in the archive is not a JSON object` })
    )
  )

/** The collected files parsed; a file that is there must be a JSON object. */
export const parseMetadata = (completed: CollectedMetadata): Effect.Effect<CheckpointMetadata, ArchiveError> => {
  const readDump = (name: MetadataFile) => {
    const text = completed.get(name)
    return text === undefined ? Effect.succeedNone : Effect.asSome(parseJsonObject(name, text))
  }
  return Effect.all({ configDump: readDump("config.dump"), specDump: readDump("spec.dump") })
}

/** Facts about the checkpointed container, read from config.dump and spec.dump as checkpointctl reads them. */
export interface CheckpointFacts {
  /** `Podman`, `CRI-O` or `containerd` (from the spec's `io.container.manager`). */
  readonly engine?: string
  /** The container's name in its engine. */
  readonly containerName?: string
  readonly podName?: string
  readonly podNamespace?: string
  /** The OCI runtime that ran the container (`runc`, `crun`). */
  readonly runtime?: string
  readonly rootfsImageName?: string
  readonly rootfsImageUserRequested?: string
  readonly rootfsImageId?: string
  readonly rawImageName?: string
}

const text = (record: Readonly<Record<string, unknown>> | undefined, key: string): string | undefined => {
  const value = record?.[key]
  return typeof value === "string" && value !== "" ? value : undefined
}

const criOContainerName = (annotations: Readonly<Record<string, unknown>> | undefined): string | undefined => {
  const metadata = text(annotations, "io.kubernetes.cri-o.Metadata")
  if (metadata !== undefined) {
    try {
      const name = (JSON.parse(metadata) as { name?: unknown }).name
      if (typeof name === "string" && name !== "") return name
    } catch {
      // fall back to the plain annotation
    }
  }
  return text(annotations, "io.kubernetes.container.name")
}

export const checkpointFacts = (description: CheckpointMetadata): CheckpointFacts => {
  const config = Option.getOrUndefined(description.configDump)
  const spec = Option.getOrUndefined(description.specDump)
  const rawAnnotations = spec?.annotations
  const annotations = typeof rawAnnotations === "object" && rawAnnotations !== null
    ? rawAnnotations as Readonly<Record<string, unknown>>
    : undefined
  const manager = text(annotations, "io.container.manager")
  const containerdName = text(annotations, "io.kubernetes.cri.container-name")
  const byEngine = manager === "libpod"
    ? { engine: "Podman", containerName: text(config, "name") }
    : manager === "cri-o"
    ? {
      engine: "CRI-O",
      containerName: criOContainerName(annotations),
      podName: text(annotations, "io.kubernetes.pod.name"),
      podNamespace: text(annotations, "io.kubernetes.pod.namespace")
    }
    : containerdName !== undefined
    ? {
      engine: "containerd",
      containerName: containerdName,
      podName: text(annotations, "io.kubernetes.cri.sandbox-name"),
      podNamespace: text(annotations, "io.kubernetes.cri.sandbox-namespace")
    }
    : { containerName: text(config, "name") }
  const facts: Record<string, string | undefined> = {
    ...byEngine,
    runtime: text(config, "runtime"),
    rootfsImageName: text(config, "rootfsImageName"),
    rootfsImageUserRequested: text(config, "rootfsImage"),
    rootfsImageId: text(config, "rootfsImageRef") ?? text(config, "rootfsImageID"),
    rawImageName: text(config, "RawImageName")
  }
  return Object.fromEntries(Object.entries(facts).filter(([, value]) => value !== undefined)) as CheckpointFacts
}

/**
 * config.dump and spec.dump of an archive file (plain, gzip or zstd), read from its start only until both are found:
 * CRI-O writes them first, so a large archive is not read through. Podman writes the container's /dev/shm
 * (devshm-checkpoint.tar) before them, which is read through.
 */
export const readArchiveMetadata = (path: string) =>
  Effect.scoped(Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const completed: CollectedMetadata = new Map()
    const settled = yield* Deferred.make<void, ArchiveError>()
    const parser = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new Parser({
          brotli: false,
          zstd: false,
          onwarn: (code: string, message: string | Error) => {
            if (fatalTarWarnings.has(code)) {
              Deferred.unsafeDone(settled, Effect.fail(unreadableTar(message)))
            }
          },
          onReadEntry: collectMetadata(completed, () => {
            if (allMetadataCollected(completed)) Deferred.unsafeDone(settled, Effect.void)
          })
        })
      ),
      (parser) => Effect.sync(() => parser.abort(new Error("metadata read")))
    )
    parser.on("error", (cause: unknown) => Deferred.unsafeDone(settled, Effect.fail(unreadableTar(cause))))
    parser.on("end", () => Deferred.unsafeDone(settled, Effect.void))
    // node-tar takes an archive for zstd only when it starts with a frame, not with a skippable frame (as pzstd writes
    // it): zstd archives are decompressed here, in writes that end where frames end (see ZstdFrames).
    let zstd: Zlib.ZstdDecompress | undefined
    yield* Effect.addFinalizer(() => Effect.sync(() => zstd?.destroy()))
    // Each chunk the file stream yields is a buffer of its own: node-tar gets a view of it, not a copy.
    const writeTo = (stream: Writable | Parser) => (chunk: Uint8Array) => writeDrained(stream)(bufferView(chunk))
    const feedFor = (head: Uint8Array) => {
      if (sniffCompression(head) !== "zstd") {
        return { pieces: (chunk: Uint8Array) => [chunk], write: writeTo(parser), end: () => parser.end() }
      }
      const decompressor = zstd = Zlib.createZstdDecompress()
      decompressor.on("error", (cause) => {
        const message = `cannot decompress the zstd archive: ${cause.message}`
        Deferred.unsafeDone(settled, Effect.fail(new ArchiveError({ message, cause })))
      })
      decompressor.pipe(parser)
      return { pieces: splitAtFrameEnds(), write: writeTo(decompressor), end: () => decompressor.end() }
    }
    let feeding: ReturnType<typeof feedFor> | undefined
    const feed = fs.stream(path, { chunkSize: 1024 * 1024 }).pipe(
      Stream.mapError(readFailed),
      Stream.runForEach((chunk) => {
        feeding ??= feedFor(chunk)
        return Effect.forEach(feeding.pieces(chunk), feeding.write, { discard: true })
      }),
      Effect.zipRight(Effect.sync(() => feeding === undefined ? parser.end() : feeding.end()))
    )
    yield* Effect.raceFirst(Effect.zipRight(feed, Effect.never), Deferred.await(settled))
    return yield* parseMetadata(completed)
  }))
