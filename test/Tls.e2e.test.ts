import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Exit, Layer } from "effect"
import { createServer } from "node:net"
import type { Socket } from "node:net"
import { makePki } from "./harness/Certificates.ts"
import { startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import type { MultiNodeStack } from "./harness/LocalStack.ts"
import { startMultiNodeStack } from "./harness/LocalStack.ts"
import { call, callTls } from "./HttpCalls.ts"

interface TlsNodes {
  readonly stack: MultiNodeStack
  readonly ca: string
  readonly privateKey: string
}
class Nodes extends Context.Tag("test/TlsNodes")<Nodes, TlsNodes>() {}

const token = "token-tls-carol-9b1e77"

/**
 * Three nodes; node-a and node-b run Checkpointers that serve HTTPS only (one certificate for the name every peer
 * is checked against, checkpoint-service.kube-system.svc, and the node addresses), check callers, forward over HTTPS.
 * node-c has no Checkpointer.
 */
const NodesLive = Layer.scoped(
  Nodes,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "checkpointer-tls-" })
    const pki = yield* makePki(`${dir}/api-pki`)
    const issued = yield* pki.issue("checkpointer-api", {
      ips: ["127.0.0.2", "127.0.0.3", "127.0.0.4"],
      dns: ["checkpoint-service.kube-system.svc"]
    })
    const stack = yield* startMultiNodeStack({
      dir,
      nodes: ["node-a", "node-b", "node-c"],
      withoutCheckpointer: ["node-c"],
      extra: {
        AUTH_MODE: "kubernetes",
        CHECKPOINTER_TLS_CERT_FILE: issued.cert,
        CHECKPOINTER_TLS_KEY_FILE: issued.key,
        CHECKPOINTER_TLS_CA_FILE: pki.caFile
      }
    })
    yield* stack.cluster.apiServer.addUser({
      token,
      username: "carol",
      allow: [{ verb: "create", resource: "pods", subresource: "checkpoint", namespace: "default" }]
    })
    return { stack, ca: yield* fs.readFileString(pki.caFile), privateKey: yield* fs.readFileString(issued.key) }
  })
).pipe(Layer.provideMerge(NodeContext.layer))

const bearer = { authorization: `Bearer ${token}` }

/** A plain TCP listener standing in for a peer: everything it receives, then it closes the connection. */
const captureOn = (address: string, port: number) =>
  Effect.acquireRelease(
    Effect.async<{ readonly received: () => Buffer; readonly close: () => void }>((resume) => {
      const chunks: Array<Buffer> = []
      const server = createServer((socket: Socket) => {
        socket.on("data", (chunk: Buffer) => {
          chunks.push(chunk)
          socket.destroy()
        })
      })
      server.listen(port, address, () =>
        resume(Effect.succeed({
          received: () => Buffer.concat(chunks),
          close: () => server.close()
        })))
    }),
    (capture) => Effect.sync(capture.close)
  )

describeE2E("TLS: the API over HTTPS, forwarding between nodes over verified HTTPS", () => {
  layer(NodesLive, { excludeTestServices: true, timeout: "180 seconds" })((it) => {
    it.scoped("a request to A for a pod on B goes to B over HTTPS; no plain HTTP listener; no token in any log", () =>
      Effect.gen(function*() {
        const { ca, privateKey, stack } = yield* Nodes
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "tls-pod", nodeName: "node-b" })
        const a = stack.checkpointer("node-a").url
        expect(a).toMatch(/^https:/)
        const answer = yield* callTls(`${a}/checkpoint/default/tls-pod/counter`, ca, {
          method: "POST",
          headers: bearer
        })
        expect(answer.status, answer.text).toBe(201)
        expect(answer.text).not.toContain(token)
        const calls = yield* stack.cluster.node("node-b").requests()
        expect(calls.filter((request) => request.path === "/checkpoint/default/tls-pod/counter")).toHaveLength(1)
        const plain = yield* Effect.exit(call(`${a.replace("https:", "http:")}/healthz`))
        expect(Exit.isSuccess(plain) && plain.value.status === 200).toBe(false)
        const refused = yield* callTls(`${a}/checkpoint/default/tls-pod/counter`, ca, { method: "POST" })
        expect(refused.status).toBe(401)
        for (const node of ["node-a", "node-b"]) {
          const logs = stack.checkpointer(node).logs()
          expect(logs, node).not.toContain(token)
          expect(logs, node).not.toContain(privateKey.trim().split("\n")[1])
        }
      }))

    it.scoped(
      "a forwarded request never goes out in plain text: " +
        "a plain listener in a peer's place gets a TLS hello",
      () =>
        Effect.gen(function*() {
          const { ca, stack } = yield* Nodes
          const capture = yield* captureOn(stack.cluster.node("node-c").address, stack.port)
          yield* stack.cluster.apiServer.addPod({
            namespace: "kube-system",
            name: "checkpointer-node-c",
            nodeName: "node-c",
            podIP: stack.cluster.node("node-c").address,
            labels: { "app.kubernetes.io/name": "checkpointer" },
            containers: [{ name: "checkpointer" }]
          })
          yield* startCounterPod(stack.cluster, { namespace: "default", name: "tls-capture", nodeName: "node-c" })
          const a = stack.checkpointer("node-a").url
          const answer = yield* callTls(`${a}/checkpoint/default/tls-capture/counter`, ca, {
            method: "POST",
            headers: { ...bearer, "content-type": "application/json" },
            body: JSON.stringify({ async: true })
          })
          expect(answer.status, answer.text).toBe(502)
          expect(answer.text).toContain("the Checkpointer on node node-c (https://")
          const received = capture.received()
          expect(received.length).toBeGreaterThan(0)
          expect(received[0]).toBe(0x16)
          const text = received.toString("latin1")
          for (const plain of ["POST", "/checkpoint", token, "async", "authorization"]) {
            expect(text).not.toContain(plain)
          }
          expect(stack.checkpointer("node-a").logs()).not.toContain(token)
        })
    )
  })
})
