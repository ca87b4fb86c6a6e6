import { Effect, Option } from "effect"
import type { IncomingMessage } from "node:http"
import { decodeSecretData } from "../PodRuntime.ts"
import { asRecord, asStringMap, readJson } from "./RequestBody.ts"
import type { Secret } from "./Resources.ts"
import { keyOf } from "./Resources.ts"
import type { Route } from "./Router.ts"
import { reply } from "./Router.ts"
import { alreadyExists, invalid, notFound } from "./Status.ts"
import type { Store } from "./Store.ts"
import { changed, nextMeta } from "./Store.ts"

export interface SecretInput {
  readonly namespace: string
  readonly name: string
  readonly type?: string
  /** plain-text values (stored base64-encoded, as `data`) */
  readonly stringData: Readonly<Record<string, string>>
}

const base64 = (text: string) => Buffer.from(text, "utf8").toString("base64")

const base64Values = (values: Readonly<Record<string, string>>) =>
  Object.fromEntries(Object.entries(values).map(([key, value]) => [key, base64(value)]))

/** Secrets: created by the harness or through the API, read by Kaniko pods, deleted through the API. */
export const makeSecrets = (store: Store) => {
  const create = (namespace: string, input: {
    readonly name: string
    readonly type: string
    readonly data: Readonly<Record<string, string>>
    readonly labels?: Readonly<Record<string, string>>
  }) =>
    store.change((current, at) => {
      if (current.secrets.has(keyOf(namespace, input.name))) {
        return Effect.fail(alreadyExists("secrets", input.name))
      }
      const [resourceVersion, metadata] = nextMeta(current, {
        name: input.name,
        ...(input.labels === undefined ? {} : { labels: input.labels })
      }, at)
      const secret: Secret = {
        apiVersion: "v1",
        kind: "Secret",
        metadata: { ...metadata, namespace },
        type: input.type,
        data: input.data
      }
      const secrets = new Map(current.secrets).set(keyOf(namespace, input.name), secret)
      return changed(secret, [], { ...current, resourceVersion, secrets })
    })

  const post = (namespace: string, request: IncomingMessage) =>
    Effect.gen(function*() {
      const body = yield* readJson(request)
      const metadata = asRecord(body["metadata"])
      const name = typeof metadata["name"] === "string" ? metadata["name"] : undefined
      if (name === undefined || name.length === 0) {
        return yield* invalid("Secret \"\" is invalid: metadata.name: Required value", { kind: "Secret" })
      }
      const labels = asStringMap(metadata["labels"])
      return yield* create(namespace, {
        name,
        type: typeof body["type"] === "string" ? body["type"] : "Opaque",
        data: { ...asStringMap(body["data"]), ...base64Values(asStringMap(body["stringData"]) ?? {}) },
        ...(labels === undefined ? {} : { labels })
      })
    })

  const remove = (namespace: string, name: string) =>
    store.change((current) => {
      const secret = current.secrets.get(keyOf(namespace, name))
      if (secret === undefined) return Effect.fail(notFound("secrets", name))
      const secrets = new Map(current.secrets)
      secrets.delete(keyOf(namespace, name))
      const deleted = {
        kind: "Status",
        apiVersion: "v1",
        metadata: {},
        status: "Success",
        details: { name, kind: "secrets", uid: secret.metadata.uid }
      }
      return changed(deleted, [], { ...current, resourceVersion: current.resourceVersion + 1, secrets })
    })

  const find = (namespace: string, name: string) =>
    Effect.map(store.state, (current) => Option.fromNullable(current.secrets.get(keyOf(namespace, name))))

  const get = (namespace: string, name: string) =>
    Effect.flatMap(
      find(namespace, name),
      Option.match({
        onNone: () => Effect.fail(notFound("secrets", name)),
        onSome: Effect.succeed
      })
    )

  const routes: ReadonlyArray<Route> = [
    {
      path: "api/v1/namespaces/*/secrets",
      methods: { POST: ({ incoming, params: [namespace] }) => Effect.map(post(namespace!, incoming), reply(201)) }
    },
    {
      path: "api/v1/namespaces/*/secrets/*",
      methods: {
        DELETE: ({ params: [namespace, name] }) => Effect.map(remove(namespace!, name!), reply(200)),
        GET: ({ params: [namespace, name] }) => Effect.map(get(namespace!, name!), reply(200))
      }
    }
  ]

  return {
    add: (secret: SecretInput) =>
      create(secret.namespace, {
        name: secret.name,
        type: secret.type ?? "Opaque",
        data: base64Values(secret.stringData)
      }),
    all: Effect.map(store.state, (current) => [...current.secrets.values()]),
    /** The decoded data of a secret, as a container that mounts it reads it. */
    decoded: (namespace: string, name: string) =>
      Effect.map(find(namespace, name), Option.map((secret) => decodeSecretData(secret.data))),
    routes
  } as const
}

export type Secrets = ReturnType<typeof makeSecrets>
