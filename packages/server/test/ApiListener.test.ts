import { FileSystem, HttpServer } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Context, Duration, Effect, Layer, Option, Ref, Schedule } from "effect"
import { execFileSync } from "node:child_process"
import { request as httpsRequest } from "node:https"
import { connect as netConnect } from "node:net"
import type { Socket } from "node:net"
import { connect as tlsConnect } from "node:tls"
import type { ClientLimits } from "../src/http/ApiListener.ts"
import { listenerLayer } from "../src/http/ApiListener.ts"
import { AppLive } from "../src/http/HttpServer.ts"
import { makeCheckpointerTest, World } from "./TestLayers.ts"

const quick: ClientLimits = {
  requestTimeoutSeconds: 2,
  headersTimeoutSeconds: 1,
  keepAliveTimeoutSeconds: 1,
  maxConnections: 50
}

/** The whole API on a real port of 127.0.0.1 with these limits (and TLS), with the fake kubelet and builder. */
const serve = (limits: ClientLimits, tls?: { readonly certFile: string; readonly keyFile: string }) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(
      AppLive.pipe(
        Layer.provideMerge(listenerLayer(
          { port: 0, listenAddress: Option.some("127.0.0.1"), clientLimits: limits, tls: Option.fromNullable(tls) },
          Duration.millis(200)
        )),
        Layer.provideMerge(makeCheckpointerTest())
      )
    )
    const address = Context.get(context, HttpServer.HttpServer).address
    const world = Context.get(context, World)
    return { port: address._tag === "TcpAddress" ? address.port : 0, world }
  })

/** A raw connection: what it receives until the server closes it (or `limit` passes), after writing `data`. */
const rawExchange = (port: number, data: string, options?: { readonly socket?: Socket }) =>
  Effect.async<{ readonly received: string; readonly closed: boolean }>((resume) => {
    const socket = options?.socket ?? netConnect(port, "127.0.0.1")
    const chunks: Array<Buffer> = []
    socket.on("data", (chunk: Buffer) => chunks.push(chunk))
    socket.on("error", () => undefined)
    socket.on("close", () => resume(Effect.succeed({ received: Buffer.concat(chunks).toString(), closed: true })))
    socket.write(data)
    return Effect.sync(() => socket.destroy())
  }).pipe(Effect.timeout("20 seconds"))

const get = (port: number, path: string) =>
  Effect.promise(async () => {
    const response = await fetch(`http://127.0.0.1:${port}${path}`)
    return { status: response.status, text: await response.text() }
  })

describe("the API listener", () => {
  it.scopedLive("a body that never ends gets 408 and its connection closed; others are served meanwhile", () =>
    Effect.gen(function*() {
      const { port, world } = yield* serve(quick)
      const stalled = yield* Effect.fork(rawExchange(
        port,
        "POST /checkpoint/default/stalled/main HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n" +
          "content-type: application/json\r\n\r\n5\r\n{\"asy\r\n"
      ))
      expect(yield* get(port, "/healthz")).toEqual({ status: 200, text: "ok" })
      const answer = yield* stalled
      expect(answer.closed).toBe(true)
      expect(answer.received).toMatch(/^HTTP\/1\.1 408 /)
      expect((yield* Ref.get(world.kubeletCalls)).map(String)).not.toContain("default/stalled/main")
      expect(yield* get(port, "/healthz")).toEqual({ status: 200, text: "ok" })
    }))

  it.scopedLive("headers that never end get 408; an idle kept-alive connection is closed", () =>
    Effect.gen(function*() {
      const { port } = yield* serve(quick)
      const headers = yield* rawExchange(port, "GET /healthz HTTP/1.1\r\nhost: x\r\n")
      expect(headers.closed).toBe(true)
      expect(headers.received).toMatch(/^HTTP\/1\.1 408 /)
      const idle = yield* rawExchange(port, "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\n\r\n")
      expect(idle.received).toMatch(/^HTTP\/1\.1 200 /)
      expect(idle.received).toContain("keep-alive")
      expect(idle.closed).toBe(true)
    }))

  it.scopedLive("beyond CHECKPOINTER_MAX_CONNECTIONS a connection gets a plain-text 503 and is closed, unread", () =>
    Effect.gen(function*() {
      const patient = { ...quick, requestTimeoutSeconds: 60, headersTimeoutSeconds: 60, maxConnections: 2 }
      const { port, world } = yield* serve(patient)
      const held = yield* Effect.acquireRelease(
        Effect.forEach([1, 2], () =>
          Effect.async<Socket>((resume) => {
            const socket = netConnect(port, "127.0.0.1", () => resume(Effect.succeed(socket)))
            socket.on("error", () => undefined)
          })),
        (sockets) => Effect.sync(() => sockets.forEach((socket) => socket.destroy()))
      )
      for (const socket of held) socket.write("GET /healthz HTTP/1.1\r\nhost: x\r\n")
      const refused = yield* rawExchange(
        port,
        "POST /checkpoint/default/over-cap/main HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
      )
      expect(refused.received).toMatch(/^HTTP\/1\.1 503 /)
      expect(refused.received).toContain("too many connections: this Checkpointer serves at most 2 at once")
      expect(refused.closed).toBe(true)
      expect((yield* Ref.get(world.kubeletCalls)).map(String)).not.toContain("default/over-cap/main")
      for (const socket of held) socket.destroy()
      const served = yield* get(port, "/healthz").pipe(
        Effect.filterOrFail((answer) => answer.status === 200),
        Effect.retry(Schedule.spaced("100 millis")),
        Effect.timeout("20 seconds")
      )
      expect(served).toEqual({ status: 200, text: "ok" })
    }))
})

const hasOpenssl = (() => {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
})()

/** A CA and a certificate for 127.0.0.1 signed by it, made with openssl, written over `name`.crt/.key in `dir`. */
const issue = (dir: string, name: string, cn: string) =>
  Effect.sync(() => {
    const run = (...args: ReadonlyArray<string>) => execFileSync("openssl", args, { cwd: dir, stdio: "ignore" })
    const curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    try {
      execFileSync("test", ["-f", `${dir}/ca.crt`])
    } catch {
      run("req", "-x509", ...curve, "-days", "1", "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.crt")
    }
    execFileSync("sh", ["-c", `printf 'subjectAltName=IP:127.0.0.1\\n' > ${dir}/san.ext`])
    run("req", ...curve, "-subj", `/CN=${cn}`, "-keyout", "next.key", "-out", "next.csr")
    run(
      "x509",
      "-req",
      "-in",
      "next.csr",
      "-CA",
      "ca.crt",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-days",
      "1",
      "-extfile",
      "san.ext",
      "-out",
      "next.crt"
    )
    // Replaced as a mounted Secret is: each file at once.
    execFileSync("mv", [`${dir}/next.key`, `${dir}/${name}.key`])
    execFileSync("mv", [`${dir}/next.crt`, `${dir}/${name}.crt`])
  })

/** The common name of the certificate a new TLS connection to the port is shown (verified with the CA). */
const servedName = (port: number, ca: string) =>
  Effect.async<string, Error>((resume) => {
    const socket = tlsConnect({ port, host: "127.0.0.1", ca }, () => {
      const cn = socket.getPeerCertificate().subject.CN
      socket.destroy()
      resume(Effect.succeed(Array.isArray(cn) ? cn.join(",") : String(cn)))
    })
    socket.on("error", (error) => resume(Effect.fail(error)))
  })

const httpsGet = (port: number, path: string, ca: string) =>
  Effect.async<{ readonly status: number; readonly text: string }, Error>((resume) => {
    const request = httpsRequest({ host: "127.0.0.1", port, path, ca }, (response) => {
      const chunks: Array<Buffer> = []
      response.on("data", (chunk: Buffer) => chunks.push(chunk))
      response.on(
        "end",
        () => resume(Effect.succeed({ status: response.statusCode ?? 0, text: Buffer.concat(chunks).toString() }))
      )
    })
    request.on("error", (error) => resume(Effect.fail(error)))
    request.end()
  })

describe.skipIf(!hasOpenssl)("the API listener over TLS", () => {
  it.scopedLive("serves HTTPS only, and a rotated certificate is used for new connections", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "api-tls-" })
      yield* issue(dir, "tls", "checkpointer-one")
      const ca = yield* fs.readFileString(`${dir}/ca.crt`)
      const { port } = yield* serve(quick, { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` })
      expect(yield* httpsGet(port, "/healthz", ca)).toEqual({ status: 200, text: "ok" })
      const plain = yield* rawExchange(port, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
      expect(plain.received).not.toContain("200")
      expect(yield* servedName(port, ca)).toBe("checkpointer-one")
      yield* issue(dir, "tls", "checkpointer-two")
      const rotated = yield* servedName(port, ca).pipe(
        Effect.filterOrFail((name) => name === "checkpointer-two"),
        Effect.retry(Schedule.spaced("100 millis")),
        Effect.timeout("20 seconds")
      )
      expect(rotated).toBe("checkpointer-two")
      expect(yield* httpsGet(port, "/healthz", ca)).toEqual({ status: 200, text: "ok" })
    }).pipe(Effect.provide(NodeContext.layer)))
})
