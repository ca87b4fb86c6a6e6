import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { request } from "node:http"
import { connect } from "node:net"
import { startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { Stack } from "./harness/LocalStack.ts"
import { call, postCheckpoint } from "./HttpCalls.ts"

interface Raw {
  readonly method: string
  readonly path: string
  readonly body?: string | Buffer
  readonly headers?: Record<string, string>
}

/** Sends exactly this request line and body (no client-side normalization of `..` or escapes). */
const send = (base: string, raw: Raw) =>
  Effect.async<{ readonly status: number; readonly text: string }>((resume) => {
    const url = new URL(base)
    const outgoing = request(
      { host: url.hostname, port: url.port, method: raw.method, path: raw.path, headers: raw.headers ?? {} },
      (response) => {
        const chunks: Array<Buffer> = []
        response.on("data", (chunk: Buffer) => chunks.push(chunk))
        response.on("end", () =>
          resume(Effect.succeed({ status: response.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") })))
      }
    )
    outgoing.on("error", (error) =>
      resume(Effect.succeed({ status: 0, text: String(error) })))
    outgoing.end(raw.body)
  })

/** Writes `head` on a raw connection and never sends more; what came back, and whether the server closed it. */
const stall = (base: string, head: string) =>
  Effect.async<{ readonly received: string; readonly closedAfterMillis: number }>((resume) => {
    const url = new URL(base)
    const started = Date.now()
    let received = ""
    const socket = connect(Number(url.port), url.hostname, () => socket.write(head))
    socket.on("data", (chunk: Buffer) => (received += chunk.toString("utf8")))
    socket.on("error", () => undefined)
    socket.on("close", () => resume(Effect.succeed({ received, closedAfterMillis: Date.now() - started })))
    return Effect.sync(() => socket.destroy())
  })

const post = (path: string, body?: string | Buffer, headers?: Record<string, string>): Raw => ({
  method: "POST",
  path,
  ...(body === undefined ? {} : { body }),
  ...(headers === undefined ? {} : { headers })
})
const json = (body: string): Raw =>
  post("/checkpoint/default/bad-target/counter", body, { "content-type": "application/json" })
const identifier = (value: string): Raw => ({ method: "GET", path: `/checkpoint?checkpointIdentifier=${value}` })

const corpus: ReadonlyArray<readonly [string, Raw]> = [
  ["dot-dot container", post("/checkpoint/default/bad-target/..")],
  ["dot-dot in the middle", post("/checkpoint/default/../etc/passwd")],
  ["encoded dot-dot namespace", post("/checkpoint/%2e%2e/bad-target/counter")],
  ["encoded slash in pod", post("/checkpoint/default/bad%2Ftarget/counter")],
  ["encoded traversal in container", post("/checkpoint/default/bad-target/c%2F..%2F..%2Fetc")],
  ["backslash traversal", post("/checkpoint/default/bad-target/..%5C..%5Cetc")],
  ["extra segment", post("/checkpoint/default/bad-target/counter/extra")],
  ["empty namespace", post("/checkpoint//bad-target/counter")],
  ["empty pod", post("/checkpoint/default//counter")],
  ["empty container", post("/checkpoint/default/bad-target/")],
  ["64-character namespace", post(`/checkpoint/${"n".repeat(64)}/bad-target/counter`)],
  ["254-character pod", post(`/checkpoint/default/${"p".repeat(254)}/counter`)],
  ["64-character container", post(`/checkpoint/default/bad-target/${"c".repeat(64)}`)],
  ["4000-character segment", post(`/checkpoint/default/${"p".repeat(4000)}/counter`)],
  ["upper-case namespace", post("/checkpoint/Default/bad-target/counter")],
  ["underscore in pod", post("/checkpoint/default/bad_target/counter")],
  ["dot in namespace", post("/checkpoint/kube.system/bad-target/counter")],
  ["leading dash in container", post("/checkpoint/default/bad-target/-counter")],
  ["trailing dash in pod", post("/checkpoint/default/bad-target-/counter")],
  ["space in pod", post("/checkpoint/default/bad%20target/counter")],
  ["non-ASCII pod", post("/checkpoint/default/p%C3%B6d/counter")],
  ["emoji container", post("/checkpoint/default/bad-target/%F0%9F%98%80")],
  ["invalid UTF-8 in the path", post("/checkpoint/default/%FF%FE/counter")],
  ["truncated escape in the path", post("/checkpoint/default/bad-target/%E0%A4")],
  ["invalid UTF-8 body", post("/checkpoint/default/bad-target/counter", Buffer.from([0x7b, 0xff, 0xfe, 0x7d]))],
  [
    "form-encoded body",
    post("/checkpoint/default/bad-target/counter", "deletePod=true", {
      "content-type": "application/x-www-form-urlencoded"
    })
  ],
  [
    "XML body",
    post("/checkpoint/default/bad-target/counter", "<deletePod>true</deletePod>", {
      "content-type": "application/xml"
    })
  ],
  [
    "multipart body",
    post("/checkpoint/default/bad-target/counter", "--x\r\n\r\nasync\r\n--x--", {
      "content-type": "multipart/form-data; boundary=x"
    })
  ],
  ["truncated JSON", json("{\"deletePod\": tru")],
  ["deletePod as a string", json("{\"deletePod\": \"true\"}")],
  ["async as a number", json("{\"async\": 1}")],
  ["async null", json("{\"async\": null}")],
  ["array body", json("[true, false]")],
  ["number body", json("42")],
  ["string body", json("\"async\"")],
  ["nested object", json("{\"deletePod\": {\"value\": true}}")],
  ["65 KiB body", json(`{"deletePod": false, "pad": "${"x".repeat(65 * 1024)}"}`)],
  ["10 MiB body", json(`{"pad": "${"x".repeat(10 * 1024 * 1024)}"}`)],
  ["duplicate identifiers", identifier("node-a:0123456789abcdef&checkpointIdentifier=node-a:fedcba9876543210")],
  ["identifier with a slash", identifier("node-a/x:0123456789abcdef")],
  ["identifier with dot-dot", identifier("..:0123456789abcdef")],
  ["identifier traversal in the hex", identifier("node-a:../../etc/passwd")],
  ["identifier with an encoded slash", identifier("node-a%2F..%2F..:0123456789abcdef")],
  ["identifier without a colon", identifier("node-a0123456789abcdef")],
  ["identifier with 15 hex digits", identifier("node-a:0123456789abcde")],
  ["identifier with 17 hex digits", identifier("node-a:0123456789abcdef0")],
  ["identifier with upper-case hex", identifier("node-a:0123456789ABCDEF")],
  ["identifier without a node", identifier(":0123456789abcdef")],
  ["empty identifier", identifier("")],
  ["missing identifier", { method: "GET", path: "/checkpoint" }],
  ["PUT on a checkpoint path", { method: "PUT", path: "/checkpoint/default/bad-target/counter" }],
  ["DELETE on the results path", { method: "DELETE", path: "/checkpoint?checkpointIdentifier=node-a:0123456789abcdef" }]
]

describeE2E("a corpus of bad requests", () => {
  layer(Stack.layer({ registryAuth: "htpasswd" }), { excludeTestServices: true, timeout: "180 seconds" })((it) => {
    it.scoped(`all ${corpus.length} are answered 4xx, and the server goes on serving`, () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "bad-target", nodeName: "node-a" })
        expect(corpus.length).toBeGreaterThanOrEqual(40)
        const answers = yield* Effect.forEach(corpus, ([name, raw]) =>
          Effect.map(send(stack.checkpointer.url, raw), (answer) => ({ name, ...answer })))
        const wrong = answers.filter((answer) =>
          answer.status < 400 || answer.status >= 500
        )
        expect(wrong.map(({ name, status, text }) => `${name}: ${status} ${text.slice(0, 120)}`)).toEqual([])
        expect((yield* call(`${stack.checkpointer.url}/healthz`)).text).toBe("ok")
        const real = yield* postCheckpoint(stack.checkpointer.url, "default/bad-target/counter")
        expect(real.status, real.text).toBe(201)
        expect(stack.checkpointer.exitCode()).toBeNull()
      }), 120_000)

    it.scoped(
      "a client that stops sending gets 408 and its connection closed by the real process",
      () =>
        Effect.gen(function*() {
          const stack = yield* Stack
          const checkpointer = yield* stack.startAnotherCheckpointer({
            extra: { CHECKPOINTER_REQUEST_TIMEOUT: "3", CHECKPOINTER_HEADERS_TIMEOUT: "2" }
          })
          const kubeletCalls = Effect.map(stack.node.requests(), (requests) => requests.length)
          const callsBefore = yield* kubeletCalls
          const body = yield* Effect.fork(stall(
            checkpointer.url,
            "POST /checkpoint/default/bad-target/counter HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n" +
              "content-type: application/json\r\n\r\n5\r\n{\"asy\r\n"
          ))
          const headers = yield* Effect.fork(stall(checkpointer.url, "GET /healthz HTTP/1.1\r\nhost: x\r\n"))
          expect((yield* call(`${checkpointer.url}/healthz`)).text).toBe("ok")
          const [stalledBody, stalledHeaders] = [yield* body, yield* headers]
          expect(stalledBody.received).toMatch(/^HTTP\/1\.1 408 /)
          expect(stalledHeaders.received).toMatch(/^HTTP\/1\.1 408 /)
          expect(stalledBody.closedAfterMillis).toBeLessThan(20_000)
          expect(stalledHeaders.closedAfterMillis).toBeLessThan(20_000)
          expect((yield* call(`${checkpointer.url}/healthz`)).text).toBe("ok")
          expect(yield* kubeletCalls).toBe(callsBefore)
          expect(checkpointer.exitCode()).toBeNull()
        }),
      60_000
    )
  })
})
