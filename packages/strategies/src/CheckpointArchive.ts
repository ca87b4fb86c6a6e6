import { FileSystem } from "@effect/platform"
import { Data, Deferred, Effect, FiberId, Option, Stream } from "effect"
import { createHash } from "node:crypto"
import { Writable } from "node:stream"
import * as Zlib from "node:zlib"
import { Parser } from "tar"
import type { ReadEntry } from "tar"

export type Compression = "none" | "gzip" | "zstd"

/** Compression by magic number: gzip `1f 8b`, zstd `28 b5 2f fd`, anything else is taken as a plain tar. */
export const sniffCompression = (head: Uint8Array): Compression => {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return "gzip"
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return "zstd"
  return "none"
}

const tarMediaType = "application/vnd.oci.image.layer.v1.tar"

export const layerMediaType = (compression: Compression): string =>
  compression === "none" ? tarMediaType : `${tarMediaType}+${compression}`

export class ArchiveError extends Data.TaggedError("ArchiveError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** What one pass over a checkpoint archive tells: the layer descriptor and the metadata files. */
export interface ArchiveDescription {
  /** `sha256:<hex>` of the bytes as stored (the layer digest). */
  readonly digest: string
  readonly size: number
  readonly compression: Compression
  readonly mediaType: string
  /** `sha256:<hex>` of the uncompressed tar (`rootfs.diff_ids[0]`). */
  readonly diffId: string
  readonly configDump: Option.Option<Readonly<Record<string, unknown>>>
  readonly specDump: Option.Option<Readonly<Record<string, unknown>>>
}

const metadataFiles = ["config.dump", "spec.dump"] as const
type MetadataFile = (typeof metadataFiles)[number]
const maxMetadataSize = 16 * 1024 * 1024
const sniffLength = 4
const fatalTarWarnings = new Set(["TAR_BAD_ARCHIVE", "TAR_ENTRY_INVALID", "TAR_ABORT"])

const entryName = (path: string): string => path.replace(/^(\.\/)+/, "")

const isMetadataFile = (name: string): name is MetadataFile => (metadataFiles as ReadonlyArray<string>).includes(name)

const describeCause = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)

/**
 * A tar entry handler that keeps config.dump and spec.dump in `completed` and lets every other entry pass. The bytes
 * are copied: the archive reader reuses its buffers (see readArchive).
 */
const collectMetadata = (completed: Map<MetadataFile, string>, onCollected: () => void = () => {}) =>
(entry: ReadEntry) => {
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

/**
 * A single pass of inspection over the archive bytes: digest of the raw bytes, compression, digest of the
 * uncompressed tar and the small metadata files, all computed while the bytes flow by. Writes respect the
 * backpressure of the decompressor and the tar parser, so memory stays flat.
 */
const makeInspector = Effect.sync(() => {
  const rawHash = createHash("sha256")
  const diffHash = createHash("sha256")
  const completed = new Map<MetadataFile, string>()
  let size = 0
  let head: Buffer | undefined = Buffer.alloc(0)
  let compression: Compression = "none"
  let decompressor: Zlib.Gunzip | Zlib.ZstdDecompress | undefined
  let failure: ArchiveError | undefined

  const settled = Deferred.unsafeMake<void>(FiberId.none)
  const fail = (message: string, cause?: unknown) => {
    failure ??= new ArchiveError({ message, cause })
    Deferred.unsafeDone(settled, Effect.void)
  }

  const parser = new Parser({
    zstd: false,
    brotli: false,
    onwarn: (code: string, message: string | Error) => {
      if (fatalTarWarnings.has(code)) fail(`not a readable tar archive: ${describeCause(message)}`)
    },
    onReadEntry: collectMetadata(completed)
  })
  parser.on("error", (cause: unknown) => fail(`not a readable tar archive: ${describeCause(cause)}`, cause))

  const tar: Writable = new Writable({
    highWaterMark: 1024 * 1024,
    write(chunk: Buffer, _encoding, callback) {
      if (compression !== "none") diffHash.update(chunk)
      if (parser.write(chunk)) callback()
      else parser.once("drain", () => callback())
    },
    final(callback) {
      parser.end(() => callback())
    }
  })
  tar.on("finish", () => Deferred.unsafeDone(settled, Effect.void))

  const target = (): Writable => decompressor ?? tar

  const writeDown = (chunk: Buffer) =>
    Effect.suspend(() => {
      if (failure !== undefined) return Effect.void
      const stream = target()
      if (stream.write(chunk)) return Effect.void
      const drained = Effect.async<void>((resume) => {
        const onDrain = () => resume(Effect.void)
        stream.once("drain", onDrain)
        return Effect.sync(() => stream.off("drain", onDrain))
      })
      return Effect.race(drained, Deferred.await(settled))
    })

  const start = (bytes: Buffer) => {
    compression = sniffCompression(bytes)
    if (compression !== "none") {
      decompressor = compression === "gzip" ? Zlib.createGunzip() : Zlib.createZstdDecompress()
      decompressor.on("error", (cause) => fail(`cannot decompress the ${compression} archive: ${cause.message}`, cause))
      decompressor.pipe(tar)
    }
  }

  const failed = Effect.suspend(() => failure === undefined ? Effect.void : Effect.fail(failure))

  const write = (chunk: Uint8Array) =>
    Effect.suspend(() => {
      const bytes = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)
      rawHash.update(bytes)
      size += bytes.length
      if (head !== undefined) {
        head = Buffer.concat([head, bytes])
        if (head.length < sniffLength) return Effect.void
        const first = head
        head = undefined
        start(first)
        return Effect.zipRight(writeDown(first), failed)
      }
      return Effect.zipRight(writeDown(bytes), failed)
    })

  const finish = Effect.gen(function*() {
    if (head !== undefined) {
      const first = head
      head = undefined
      start(first)
      if (first.length > 0) yield* writeDown(first)
    }
    yield* failed
    target().end()
    yield* Deferred.await(settled)
    yield* failed
    const digest = `sha256:${rawHash.digest("hex")}`
    const readDump = (name: MetadataFile) => {
      const text = completed.get(name)
      return text === undefined ? Effect.succeedNone : Effect.asSome(parseJsonObject(name, text))
    }
    return {
      digest,
      size,
      compression,
      mediaType: layerMediaType(compression),
      diffId: compression === "none" ? digest : `sha256:${diffHash.digest("hex")}`,
      configDump: yield* readDump("config.dump"),
      specDump: yield* readDump("spec.dump")
    } satisfies ArchiveDescription
  })

  const dispose = Effect.sync(() => {
    decompressor?.destroy()
    tar.destroy()
    parser.abort(new Error("inspection stopped"))
  })

  return { write, finish, dispose } as const
})

/**
 * Lets the archive bytes through unchanged while describing them. `description` completes when the last byte
 * has passed (or fails if the bytes cannot be read or are not a tar archive, in which case the stream fails too).
 */
export const inspectWhileStreaming = <E>(bytes: Stream.Stream<Uint8Array, E>) =>
  Effect.gen(function*() {
    const description = yield* Deferred.make<ArchiveDescription, ArchiveError>()
    const stream = Stream.unwrapScoped(
      Effect.acquireRelease(makeInspector, (inspector) => inspector.dispose).pipe(
        Effect.map((inspector) =>
          bytes.pipe(
            Stream.mapError((cause) =>
              new ArchiveError({ message: `read failed: ${describeCause(cause)}`, cause })
            ),
            Stream.tap(inspector.write),
            Stream.concat(Stream.execute(Effect.flatMap(inspector.finish, (done) =>
              Deferred.succeed(description, done)))),
            Stream.tapError((error) => Deferred.fail(description, error))
          )
        )
      )
    )
    const readFailure: Effect.Effect<Option.Option<ArchiveError>> = Effect.flatMap(
      Deferred.poll(description),
      Option.match({
        onNone: () => Effect.succeedNone,
        onSome: (outcome) => Effect.match(outcome, { onFailure: Option.some, onSuccess: () => Option.none() })
      })
    )
    return { stream, description: Deferred.await(description), readFailure } as const
  })

/**
 * The archive's bytes, read into a small ring of reused buffers. Fresh buffers per chunk would be freed only when
 * V8 next collects garbage, which lets RSS grow by tens of MiB during a large push. Reuse is safe because every
 * consumer is done with a chunk long before its buffer comes round again: hashing is synchronous, the tar parser and
 * the decompressor are written with backpressure, metadata entries are copied, and the HTTP body waits for the
 * socket's drain after each chunk (a chunk is larger than the socket's high-water mark).
 */
export const readArchive = (path: string, options: { readonly chunkSize: number; readonly buffers: number }) =>
  Stream.unwrapScoped(Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const file = yield* fs.open(path, { flag: "r" })
    const ring = Array.from({ length: options.buffers }, () => Buffer.allocUnsafeSlow(options.chunkSize))
    let turn = 0
    return Stream.repeatEffectOption(Effect.gen(function*() {
      const buffer = ring[turn++ % ring.length]!
      const bytesRead = Number(yield* Effect.mapError(file.read(buffer), Option.some))
      if (bytesRead === 0) return yield* Effect.fail(Option.none())
      return buffer.subarray(0, bytesRead)
    }))
  }))

/** Describes an archive file in one pass without sending it anywhere (used by tests and tools). */
export const describeArchive = <E>(bytes: Stream.Stream<Uint8Array, E>) =>
  Effect.flatMap(
    inspectWhileStreaming(bytes),
    ({ description, stream }) => Effect.zipRight(Stream.runDrain(stream), description)
  )

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

export const checkpointFacts = (description: Pick<ArchiveDescription, "configDump" | "specDump">): CheckpointFacts => {
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
 * CRI-O and Podman write them first, so a large archive is not read through.
 */
export const readArchiveMetadata = (path: string) =>
  Effect.scoped(Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const completed = new Map<MetadataFile, string>()
    const settled = yield* Deferred.make<void, ArchiveError>()
    const parser = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new Parser({
          brotli: false,
          onwarn: (code: string, message: string | Error) => {
            if (fatalTarWarnings.has(code)) {
              Deferred.unsafeDone(
                settled,
                Effect.fail(new ArchiveError({ message: `not a readable tar archive: ${describeCause(message)}` }))
              )
            }
          },
          onReadEntry: collectMetadata(completed, () => {
            if (completed.size === metadataFiles.length) Deferred.unsafeDone(settled, Effect.void)
          })
        })
      ),
      (parser) => Effect.sync(() => parser.abort(new Error("metadata read")))
    )
    parser.on("error", (cause: unknown) =>
      Deferred.unsafeDone(
        settled,
        Effect.fail(new ArchiveError({ message: `not a readable tar archive: ${describeCause(cause)}`, cause }))
      ))
    parser.on("end", () => Deferred.unsafeDone(settled, Effect.void))
    const write = (chunk: Uint8Array) =>
      Effect.async<void>((resume) => {
        if (parser.write(Buffer.from(chunk))) return resume(Effect.void)
        const onDrain = () => resume(Effect.void)
        parser.once("drain", onDrain)
        return Effect.sync(() => parser.off("drain", onDrain))
      })
    const feed = fs.stream(path, { chunkSize: 256 * 1024 }).pipe(
      Stream.mapError((cause) => new ArchiveError({ message: `read failed: ${describeCause(cause)}`, cause })),
      Stream.runForEach(write),
      Effect.zipRight(Effect.sync(() => parser.end()))
    )
    yield* Effect.raceFirst(Effect.zipRight(feed, Effect.never), Deferred.await(settled))
    const readDump = (name: MetadataFile) => {
      const text = completed.get(name)
      return text === undefined ? Effect.succeedNone : Effect.asSome(parseJsonObject(name, text))
    }
    return { configDump: yield* readDump("config.dump"), specDump: yield* readDump("spec.dump") }
  }))
