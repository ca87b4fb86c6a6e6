import { ImageRemover } from "@checkpointer/core"
import type { ImageRemovalError } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Either, Layer, Option } from "effect"
import { randomBytes } from "node:crypto"
import { describeE2E } from "../../../test/harness/E2E.ts"
import { startRegistry } from "../../../test/harness/Registry.ts"
import type { TestRegistry } from "../../../test/harness/Registry.ts"
import { configMediaType, manifestMediaType } from "../src/native/NativeImageBuilder.ts"
import { makeSession, parseImageReference } from "../src/registry/OciRegistry.ts"
import { credentialsOf, registryHttpClient } from "../src/registry/RegistryHttp.ts"
import * as RegistryImageRemover from "../src/registry/RegistryImageRemover.ts"

class Registries extends Context.Tag("test/RetentionRegistries")<Registries, {
  /** Token authentication (the delete scope is asked for), deletes enabled. */
  readonly deleting: TestRegistry
  /** htpasswd, deletes disabled (distribution answers 405 UNSUPPORTED). */
  readonly keeping: TestRegistry
}>() {}

const RegistriesLive = Layer.scoped(
  Registries,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "image-remover-" })
    const [deleting, keeping] = yield* Effect.all([
      startRegistry({ dir: `${dir}/deleting`, auth: "token", deleteEnabled: true }),
      startRegistry({ dir: `${dir}/keeping`, auth: "htpasswd", deleteEnabled: false })
    ], { concurrency: 2 })
    return { deleting, keeping }
  })
).pipe(Layer.provide(NodeContext.layer))

const encode = (value: unknown) => new TextEncoder().encode(JSON.stringify(value))

/** Pushes a small image (one config, one layer) as `name`; its manifest digest. */
const pushImage = (registry: TestRegistry, name: string) =>
  Effect.gen(function*() {
    const reference = Either.getOrThrow(parseImageReference(name))
    const access = { authFile: Option.some(registry.authFile), caFile: Option.some(registry.caFile), insecure: false }
    const http = yield* registryHttpClient(access, "retention-test")
    const credentials = yield* credentialsOf(access, reference)
    const session = yield* makeSession({ http, reference, credentials, insecure: false })
    const layer = yield* session.pushBlob(randomBytes(64), "application/vnd.oci.image.layer.v1.tar")
    const config = yield* session.pushBlob(encode({ architecture: "amd64", os: "linux" }), configMediaType)
    return yield* session.putManifest(
      encode({ schemaVersion: 2, mediaType: manifestMediaType, config, layers: [layer] }),
      manifestMediaType
    )
  }).pipe(Effect.scoped)

const removerFor = (registry: TestRegistry) =>
  RegistryImageRemover.layerWith({
    authFile: Option.some(registry.authFile),
    caFile: Option.some(registry.caFile),
    insecure: false
  }).pipe(Layer.provide(NodeContext.layer), Layer.orDie)

const remove = (registry: TestRegistry, image: { readonly name: string; readonly digest?: string }) =>
  Effect.flatMap(ImageRemover, (remover) => remover.remove(image)).pipe(Effect.provide(removerFor(registry)))

const repository = "checkpoints/retention"
const newTag = () => randomBytes(8).toString("hex")

describeE2E("RegistryImageRemover against a real registry", () => {
  layer(RegistriesLive, { timeout: "120 seconds", excludeTestServices: true })((it) => {
    it.effect("deletes the pushed manifest by digest (token auth, delete scope); a second time it is gone", () =>
      Effect.gen(function*() {
        const { deleting } = yield* Registries
        const tag = newTag()
        const name = `${deleting.host}/${repository}:${tag}`
        const digest = yield* pushImage(deleting, name)
        const kept = `${deleting.host}/${repository}:${newTag()}`
        yield* pushImage(deleting, kept)

        expect(yield* remove(deleting, { name, digest })).toBe("deleted")
        expect(yield* Effect.either(deleting.manifest(repository, digest))).toMatchObject({ _tag: "Left" })
        const tags = yield* deleting.tags(repository)
        expect(tags).not.toContain(tag)
        expect(tags).toContain(kept.split(":").at(-1))
        expect(yield* remove(deleting, { name, digest })).toBe("already gone")
        expect(deleting.logs()).toMatch(/scope=repository:checkpoints\/retention:pull,delete/)
      }).pipe(Effect.provide(NodeContext.layer)))

    it.effect("leaves a tag alone that names another manifest than the one pushed", () =>
      Effect.gen(function*() {
        const { deleting } = yield* Registries
        const tag = newTag()
        const name = `${deleting.host}/${repository}:${tag}`
        const ours = yield* pushImage(deleting, name)
        const theirs = yield* pushImage(deleting, name)
        expect(theirs).not.toBe(ours)

        expect(yield* remove(deleting, { name, digest: ours })).toBe("retagged")
        expect((yield* deleting.manifest(repository, tag)).digest).toBe(theirs)
      }).pipe(Effect.provide(NodeContext.layer)))

    it.effect("reports a registry that does not delete as unsupported, and the image stays", () =>
      Effect.gen(function*() {
        const { keeping } = yield* Registries
        const tag = newTag()
        const name = `${keeping.host}/${repository}:${tag}`
        const digest = yield* pushImage(keeping, name)

        const error: ImageRemovalError = yield* Effect.flip(remove(keeping, { name, digest }))
        expect(error.unsupported).toBe(true)
        expect(error.message).toBe(
          `cannot delete ${name}: manifest delete failed: ` +
            "registry answered 405 UNSUPPORTED: The operation is unsupported."
        )
        expect(error.message).not.toContain(keeping.password)
        expect((yield* keeping.manifest(repository, tag)).digest).toBe(digest)
      }).pipe(Effect.provide(NodeContext.layer)))
  })
})
