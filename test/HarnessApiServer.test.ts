import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { CoreV1Api, KubeConfig } from "@kubernetes/client-node"
import { Context, Effect, Layer } from "effect"
import type { ApiServer } from "./harness/ApiServer.ts"
import { startApiServer } from "./harness/ApiServer.ts"
import { makePki } from "./harness/Certificates.ts"
import { callTls } from "./HttpCalls.ts"

class TestApiServer extends Context.Tag("HarnessApiServer.test/TestApiServer")<
  TestApiServer,
  { readonly api: ApiServer; readonly ca: string }
>() {}

const TestApiServerLive = Layer.scoped(
  TestApiServer,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpointer-apiserver-" })
    const pki = yield* makePki(`${dir}/pki`)
    const api = yield* startApiServer({ pki, dir: `${dir}/apiserver` })
    yield* api.addNode({ name: "node-a", address: "127.0.0.2" })
    return { api, ca: yield* fs.readFileString(api.caFile) }
  })
).pipe(Layer.provideMerge(NodeContext.layer))

/** A call with the server's bearer token (or none): its status and its body (parsed when JSON). */
interface CallOptions {
  readonly method?: string
  readonly body?: unknown
  /** false: send no bearer token */
  readonly token?: boolean
}

const request = (path: string, init: CallOptions = {}) =>
  Effect.gen(function*() {
    const { api, ca } = yield* TestApiServer
    const answer = yield* callTls(`${api.url}${path}`, ca, {
      method: init.method ?? "GET",
      headers: {
        ...(init.token === false ? {} : { authorization: `Bearer ${api.token}` }),
        ...(init.body === undefined ? {} : { "content-type": "application/json" })
      },
      ...(init.body === undefined ? {} : { body: JSON.stringify(init.body) })
    })
    const body = answer.contentType === "application/json" ? JSON.parse(answer.text) : answer.text
    return { status: answer.status, body }
  })

const podBody = (name: string) => ({ metadata: { name }, spec: { containers: [{ name: "main" }] } })

layer(TestApiServerLive, { excludeTestServices: true, timeout: "60 seconds" })("harness API server", (it) => {
  it.scoped("unknown paths answer 404, unknown methods 405, a missing token 401; the log records each status", () =>
    Effect.gen(function*() {
      const { api } = yield* TestApiServer
      expect((yield* request("/version")).body).toMatchObject({ major: "1", minor: "33" })
      expect((yield* request("/version", { method: "POST" })).status).toBe(405)
      expect((yield* request("/apis/apps/v1/deployments")).status).toBe(404)
      expect((yield* request("/api/v1/namespaces/default/configmaps")).status).toBe(404)
      expect((yield* request("/api/v1/nodes/node-a", { method: "DELETE" })).status).toBe(405)
      expect((yield* request("/apis/authentication.k8s.io/v1/tokenreviews")).status).toBe(405)
      const unauthorized = yield* request("/api/v1/nodes", { token: false })
      expect(unauthorized).toMatchObject({ status: 401, body: { kind: "Status", reason: "Unauthorized", code: 401 } })
      const logged = (yield* api.requests()).filter((entry) => entry.path === "/api/v1/nodes")
      expect(logged.at(-1)).toMatchObject({ method: "GET", authorized: false, status: 401 })
    }))

  it.scoped("nodes are listed and read by name; an unknown one is NotFound", () =>
    Effect.gen(function*() {
      const list = yield* request("/api/v1/nodes")
      expect(list.body).toMatchObject({ kind: "NodeList", items: [{ metadata: { name: "node-a" } }] })
      expect(list.body.items[0].kind).toBeUndefined()
      const node = yield* request("/api/v1/nodes/node-a")
      expect(node.body).toMatchObject({ kind: "Node", metadata: { name: "node-a" } })
      const unknown = yield* request("/api/v1/nodes/node-z")
      expect(unknown.body).toMatchObject({ code: 404, message: "nodes \"node-z\" not found" })
    }))

  it.scoped("pods created through the API are scheduled, listed with selectors, and refused while a fault is set", () =>
    Effect.gen(function*() {
      const { api } = yield* TestApiServer
      const created = yield* request("/api/v1/namespaces/routes/pods", { method: "POST", body: podBody("first") })
      expect(created.status).toBe(201)
      expect(created.body).toMatchObject({ spec: { nodeName: "node-a" }, status: { phase: "Pending" } })
      const again = yield* request("/api/v1/namespaces/routes/pods", { method: "POST", body: podBody("first") })
      expect(again.body).toMatchObject({ code: 409, reason: "AlreadyExists" })
      const nameless = yield* request("/api/v1/namespaces/routes/pods", { method: "POST", body: { spec: {} } })
      expect(nameless.body).toMatchObject({ code: 422, message: "Pod \"\" is invalid: metadata.name: Required value" })
      const onWatchPath = yield* request("/api/v1/watch/namespaces/routes/pods", { method: "POST", body: {} })
      expect(onWatchPath.status).toBe(405)
      const selected = yield* request("/api/v1/namespaces/routes/pods?fieldSelector=metadata.name%3Dfirst")
      expect(selected.body.items.map((pod: { metadata: { name: string } }) => pod.metadata.name)).toEqual(["first"])
      expect((yield* request("/api/v1/pods?labelSelector=%3D%3D")).body).toMatchObject({ code: 400 })

      yield* api.setCreateFault({ code: 403, reason: "Forbidden", message: "pods is forbidden" })
      const refused = yield* request("/api/v1/namespaces/routes/pods", { method: "POST", body: podBody("second") })
      expect(refused.body).toMatchObject({ code: 403, reason: "Forbidden", message: "pods is forbidden" })
      yield* api.setCreateFault(null)
      expect((yield* request("/api/v1/namespaces/routes/pods", { method: "POST", body: podBody("second") })).status)
        .toBe(201)

      const deleted = yield* request("/api/v1/namespaces/routes/pods/first?gracePeriodSeconds=0", { method: "DELETE" })
      expect(deleted.body.metadata.deletionGracePeriodSeconds).toBe(0)
      expect((yield* request("/api/v1/namespaces/routes/pods/first")).status).toBe(404)
    }))

  it.scoped("secrets: created once, read, deleted; a nameless one is Invalid", () =>
    Effect.gen(function*() {
      const path = "/api/v1/namespaces/routes/secrets"
      const secret = { metadata: { name: "pull" }, stringData: { token: "abc" } }
      expect((yield* request(path, { method: "POST", body: secret })).body).toMatchObject({ data: { token: "YWJj" } })
      expect((yield* request(path, { method: "POST", body: secret })).body).toMatchObject({ code: 409 })
      expect((yield* request(path, { method: "POST", body: { metadata: {} } })).body).toMatchObject({ code: 422 })
      expect((yield* request(`${path}/pull`)).body).toMatchObject({ type: "Opaque", data: { token: "YWJj" } })
      expect((yield* request(`${path}/pull`, { method: "DELETE" })).body).toMatchObject({ status: "Success" })
      expect((yield* request(`${path}/pull`)).status).toBe(404)
    }))

  it.scoped("events: created and listed through @kubernetes/client-node, filtered by field, patched; validated", () =>
    Effect.gen(function*() {
      const { api } = yield* TestApiServer
      const config = new KubeConfig()
      config.loadFromFile(api.kubeconfigPath)
      const core = config.makeApiClient(CoreV1Api)
      const involvedObject = { kind: "Pod", namespace: "default", name: "counter", uid: "u-1" }
      const created = yield* Effect.promise(() =>
        core.createNamespacedEvent({
          namespace: "default",
          body: {
            metadata: { generateName: "counter." },
            involvedObject,
            reason: "Checkpointed",
            message: "image pushed",
            type: "Normal",
            count: 1
          }
        })
      )
      expect(created.metadata.name).toMatch(/^counter\.[0-9a-f]{6}$/)
      yield* Effect.promise(() =>
        core.createNamespacedEvent({
          namespace: "default",
          body: { metadata: { name: "other.1" }, involvedObject: { ...involvedObject, name: "other" }, reason: "X" }
        })
      )
      const listed = yield* Effect.promise(() =>
        core.listNamespacedEvent({ namespace: "default", fieldSelector: "involvedObject.name=counter" })
      )
      expect(listed.items.map((event) => [event.reason, event.message, event.type])).toEqual([
        ["Checkpointed", "image pushed", "Normal"]
      ])
      const path = `/api/v1/namespaces/default/events/${created.metadata.name}`
      const patched = yield* request(path, { method: "PATCH", body: { count: 2, message: "again" } })
      expect(patched.body).toMatchObject({ count: 2, message: "again", reason: "Checkpointed", involvedObject })
      expect((yield* api.kubernetesEvents()).length).toBe(2)
      const elsewhere = yield* request("/api/v1/namespaces/default/events", {
        method: "POST",
        body: { metadata: { name: "x" }, involvedObject: { ...involvedObject, namespace: "kube-system" } }
      })
      expect(elsewhere.status).toBe(422)
      const nameless = yield* request("/api/v1/namespaces/default/events", { method: "POST", body: { involvedObject } })
      expect(nameless.status).toBe(422)
      expect((yield* request("/api/v1/events?fieldSelector=reason%3DX")).body.items).toHaveLength(1)
    }))
})
