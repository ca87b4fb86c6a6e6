import {
  CheckpointerApi,
  CheckpointIdentifier,
  ContainerRef,
  ImageBuildError,
  PendingRecord,
  ResultStore
} from "@checkpointer/core"
import { FileSystem, HttpApiClient, HttpClient, HttpClientRequest } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Queue, Ref, Schema } from "effect"
import { onOwnServer, recordingReads, World } from "./TestLayers.ts"

const post = (path: string, body?: string, contentType = "application/json") =>
  Effect.gen(function*() {
    const client = yield* HttpClient.HttpClient
    const request = HttpClientRequest.post(path)
    const response = yield* client.execute(
      body === undefined ? request : HttpClientRequest.bodyText(request, body, contentType)
    )
    return { status: response.status, text: yield* response.text, type: response.headers["content-type"] }
  })

const get = (path: string) =>
  Effect.gen(function*() {
    const response = yield* (yield* HttpClient.HttpClient).get(path)
    return { status: response.status, text: yield* response.text, type: response.headers["content-type"] }
  })

const hex16 = /^[0-9a-f]{16}$/

const decodeContainer = Schema.decodeUnknownSync(ContainerRef)

describe("checkpoint API", () => {
  it.live("a sync checkpoint answers 201 with the image name and removes the archive", () =>
    Effect.gen(function*() {
      const world = yield* World
      const response = yield* post("/checkpoint/default/counter/main")
      expect(response.status).toBe(201)
      const body = JSON.parse(response.text)
      expect(body.containerIdentifier).toEqual({ namespace: "default", pod: "counter", container: "main" })
      const [prefix, tag] = body.containerImageName.split(/:(?=[^:]+$)/)
      expect(prefix).toBe("registry.test/checkpoints")
      expect(tag).toMatch(hex16)
      expect(body.containerImageDigest).toMatch(/^sha256:[0-9a-f]{64}$/)
      expect(body.endTimestamp).toBeGreaterThanOrEqual(body.beginTimestamp)
      const archives = yield* Ref.get(world.archives)
      const fs = yield* FileSystem.FileSystem
      for (const archive of archives) expect(yield* fs.exists(archive)).toBe(false)
    }).pipe(onOwnServer()))

  it.live("an async checkpoint answers 202 with <node>:<hex> and GET returns the same result", () =>
    Effect.gen(function*() {
      const accepted = yield* post("/checkpoint/default/counter/main", JSON.stringify({ async: true }))
      expect(accepted.status).toBe(202)
      const { checkpointIdentifier } = JSON.parse(accepted.text)
      expect(checkpointIdentifier).toMatch(/^node-a:[0-9a-f]{16}$/)
      const result = yield* get(`/checkpoint?checkpointIdentifier=${checkpointIdentifier}`)
      expect(result.status).toBe(200)
      const body = JSON.parse(result.text)
      expect(body.containerImageName).toBe(`registry.test/checkpoints:${checkpointIdentifier.split(":")[1]}`)
    }).pipe(onOwnServer()))

  it.live("GET waits while the checkpoint is still running", () =>
    Effect.gen(function*() {
      const reads = yield* Queue.unbounded<string>()
      yield* Effect.gen(function*() {
        const world = yield* World
        const release = yield* Deferred.make<void>()
        yield* Ref.set(world.buildBehaviour, () => Deferred.await(release))
        const accepted = yield* post("/checkpoint/default/counter/main", JSON.stringify({ async: true }))
        const { checkpointIdentifier } = JSON.parse(accepted.text)
        const waiting = yield* Effect.fork(get(`/checkpoint?checkpointIdentifier=${checkpointIdentifier}`))
        // The handler looks the record up just before it asks for the result: the GET has arrived.
        expect(yield* Queue.take(reads)).toBe(checkpointIdentifier)
        expect(yield* Fiber.poll(waiting)).toEqual(expect.objectContaining({ _tag: "None" }))
        yield* Deferred.succeed(release, undefined)
        const result = yield* Fiber.join(waiting)
        // Had it not waited, it would have found the pending record ("interrupted by restart", 500).
        expect(result.status).toBe(200)
      }).pipe(onOwnServer({ store: recordingReads(reads) }))
    }))

  it.live("the body is read as JSON whatever its content type, as curl --data sends it", () =>
    Effect.gen(function*() {
      const world = yield* World
      const form = "application/x-www-form-urlencoded"
      const accepted = yield* post("/checkpoint/default/counter/main", "{\"deletePod\": true, \"async\": true}", form)
      expect(accepted.status, accepted.text).toBe(202)
      const { checkpointIdentifier } = JSON.parse(accepted.text)
      expect((yield* get(`/checkpoint?checkpointIdentifier=${checkpointIdentifier}`)).status).toBe(200)
      expect(yield* Ref.get(world.deletedPods)).toEqual(["default/counter"])
      const rejected = yield* post("/checkpoint/default/counter/main", "deletePod=true", form)
      expect(rejected.status).toBe(400)
      expect(rejected.text).toContain("not valid JSON")
    }).pipe(onOwnServer()))

  it.live("deletePod=true deletes the pod after the push", () =>
    Effect.gen(function*() {
      const world = yield* World
      const response = yield* post("/checkpoint/team-a/counter-2/main", JSON.stringify({ deletePod: true }))
      expect(response.status).toBe(201)
      expect(yield* Ref.get(world.deletedPods)).toContain("team-a/counter-2")
    }).pipe(onOwnServer()))

  it.live("a failed pod deletion answers 500 naming the phase", () =>
    Effect.gen(function*() {
      const response = yield* post("/checkpoint/default/undeletable/main", JSON.stringify({ deletePod: true }))
      expect(response.status).toBe(500)
      expect(response.text).toContain("phase \"delete pod\"")
    }).pipe(onOwnServer()))

  it.live("an unknown container answers 404 in plain text", () =>
    Effect.gen(function*() {
      const world = yield* World
      yield* Ref.set(world.missingContainers, new Set(["ghost"]))
      const response = yield* post("/checkpoint/default/counter/ghost")
      expect(response.status).toBe(404)
      expect(response.type).toContain("text/plain")
      expect(response.text).toBe("container default/counter/ghost not found on node node-a")
    }).pipe(onOwnServer()))

  it.live("a failed build answers 500 naming the phase, records the failure and removes the archive", () =>
    Effect.gen(function*() {
      const world = yield* World
      yield* Ref.set(
        world.buildBehaviour,
        () =>
          Effect.fail(new ImageBuildError({ step: "push", message: "registry refused credentials (401 UNAUTHORIZED)" }))
      )
      const response = yield* post("/checkpoint/default/counter/main")
      expect(response.status).toBe(500)
      expect(response.type).toContain("text/plain")
      expect(response.text).toBe(
        "checkpoint failed in phase \"build/push\": push: registry refused credentials (401 UNAUTHORIZED)"
      )
      const accepted = yield* post("/checkpoint/default/counter/main", JSON.stringify({ async: true }))
      const { checkpointIdentifier } = JSON.parse(accepted.text)
      const result = yield* get(`/checkpoint?checkpointIdentifier=${checkpointIdentifier}`)
      expect(result.status).toBe(500)
      expect(result.text).toContain("registry refused credentials")
      const fs = yield* FileSystem.FileSystem
      for (const archive of yield* Ref.get(world.archives)) expect(yield* fs.exists(archive)).toBe(false)
    }).pipe(onOwnServer()))

  describe("bad input answers 400 in plain text", () => {
    const cases: ReadonlyArray<[string, string, string | undefined, string]> = [
      ["malformed JSON", "/checkpoint/default/counter/main", "{deletePod: true", "not valid JSON"],
      ["wrong type", "/checkpoint/default/counter/main", "{\"deletePod\": \"yes\"}", "deletePod"],
      ["not an object", "/checkpoint/default/counter/main", "[true]", "expected"],
      ["upper-case namespace", "/checkpoint/Default/counter/main", undefined, "invalid namespace"],
      ["underscore in pod", "/checkpoint/default/my_pod/main", undefined, "invalid pod"],
      ["overlong container", `/checkpoint/default/counter/${"c".repeat(64)}`, undefined, "invalid container"],
      ["overlong pod", `/checkpoint/default/${"p".repeat(254)}/main`, undefined, "invalid pod"]
    ]
    for (const [name, path, body, reason] of cases) {
      it.live(name, () =>
        Effect.gen(function*() {
          const response = yield* post(path, body)
          expect(response.status).toBe(400)
          expect(response.type).toContain("text/plain")
          expect(response.text).toContain(reason)
        }).pipe(onOwnServer()))
    }
    it.live("malformed identifier", () =>
      Effect.gen(function*() {
        for (const identifier of ["nocolon", "node-a:xyz", "node-a:0123456789abcdeg", "../etc:0123456789abcdef", ""]) {
          const response = yield* get(`/checkpoint?checkpointIdentifier=${encodeURIComponent(identifier)}`)
          expect(response.status, identifier).toBe(400)
          expect(response.text).toContain("checkpointIdentifier")
        }
        const missing = yield* get("/checkpoint")
        expect(missing.status).toBe(400)
      }).pipe(onOwnServer()))
  })

  it.live("a checkpoint left pending by a restart answers 500 'interrupted by restart'", () =>
    Effect.gen(function*() {
      const store = yield* ResultStore
      const container = decodeContainer({ namespace: "default", pod: "counter", container: "main" })
      const identifier = CheckpointIdentifier.make("node-a:aaaaaaaaaaaaaaaa")
      yield* store.put(identifier, new PendingRecord({ container, beginTimestamp: 1 }))
      const response = yield* get("/checkpoint?checkpointIdentifier=node-a:aaaaaaaaaaaaaaaa")
      expect(response.status).toBe(500)
      expect(response.text).toContain("interrupted by restart")
    }).pipe(onOwnServer()))

  it.live("an unknown identifier answers 404", () =>
    Effect.gen(function*() {
      const response = yield* get("/checkpoint?checkpointIdentifier=node-a:0123456789abcdef")
      expect(response.status).toBe(404)
      expect(response.text).toContain("node-a:0123456789abcdef")
    }).pipe(onOwnServer()))

  it.live("the typed client derived from the contract checkpoints and polls", () =>
    Effect.gen(function*() {
      const client = yield* HttpApiClient.make(CheckpointerApi)
      const accepted = yield* client.checkpoint.checkpoint({
        path: decodeContainer({ namespace: "default", pod: "counter", container: "main" }),
        payload: { async: true, deletePod: false }
      })
      expect("checkpointIdentifier" in accepted).toBe(true)
      if (!("checkpointIdentifier" in accepted)) return
      const result = yield* client.checkpoint.result({
        urlParams: { checkpointIdentifier: accepted.checkpointIdentifier }
      })
      expect("containerImageName" in result && result.containerImageName).toMatch(
        /^registry\.test\/checkpoints:[0-9a-f]{16}$/
      )
      const failure = yield* client.checkpoint.result({
        urlParams: { checkpointIdentifier: CheckpointIdentifier.make("node-a:ffffffffffffffff") }
      }).pipe(Effect.flip)
      expect(failure._tag).toBe("CheckpointNotFound")
    }).pipe(onOwnServer()))
})
