import { describe, expect, it } from "@effect/vitest"
import { Either, Option } from "effect"
import { parseInvocation } from "../src/KubectlCheckpoint.ts"

describe("kubectl checkpoint arguments", () => {
  it("reads the pod, -c, -n and the flags", () => {
    const parsed = parseInvocation([
      "web-0",
      "-c",
      "app",
      "-n",
      "team",
      "--delete-pod",
      "--wait",
      "--url",
      "http://x:1"
    ], {})
    expect(parsed).toEqual(Either.right({
      command: "checkpoint",
      target: "web-0",
      container: Option.some("app"),
      namespace: Option.some("team"),
      deletePod: true,
      async: false,
      wait: true,
      url: "http://x:1",
      token: Option.none(),
      caFile: Option.none(),
      tlsServerName: Option.none(),
      migrate: false,
      to: Option.none(),
      name: Option.none()
    }))
  })

  it("reads restore (an identifier or an image) and --migrate with --to and --name", () => {
    const read = (args: ReadonlyArray<string>) =>
      Either.getOrThrow(
        Either.map(parseInvocation(args, {}), (parsed) =>
          parsed === "help"
            ? undefined
            : {
              command: parsed.command,
              target: parsed.target,
              migrate: parsed.migrate,
              to: parsed.to,
              name: parsed.name
            })
      )
    expect(read(["restore", "node-a:0123456789abcdef", "--to", "node-b", "--name", "copy"])).toEqual({
      command: "restore",
      target: "node-a:0123456789abcdef",
      migrate: false,
      to: Option.some("node-b"),
      name: Option.some("copy")
    })
    expect(read(["web-0", "--migrate", "--to", "node-b"])).toEqual({
      command: "checkpoint",
      target: "web-0",
      migrate: true,
      to: Option.some("node-b"),
      name: Option.none()
    })
    // A pod named "restore" is still a pod.
    expect(read(["restore"])).toMatchObject({ command: "checkpoint", target: "restore" })
  })

  it("refuses options that do not fit the command", () => {
    const refusal = (args: ReadonlyArray<string>) =>
      Either.match(parseInvocation(args, {}), { onLeft: (error) => error.message, onRight: () => "accepted" })
    expect(refusal(["restore", "img", "--migrate"])).toBe("--migrate cannot be used with restore")
    expect(refusal(["restore", "img", "-c", "main"])).toBe("-c cannot be used with restore")
    expect(refusal(["web-0", "--migrate", "--async"])).toBe("--async cannot be used with --migrate")
    expect(refusal(["web-0", "--to", "node-b"])).toBe("--to cannot be used without restore or --migrate")
  })

  it("takes the CA file from --ca-file, else CHECKPOINTER_CA_FILE, and --tls-server-name", () => {
    const tls = (args: ReadonlyArray<string>, env: Record<string, string>) =>
      Either.getOrThrow(
        Either.map(parseInvocation(["p", "--url", "https://x:1", ...args], env), (parsed) =>
          parsed === "help" ? undefined : { caFile: parsed.caFile, serverName: parsed.tlsServerName })
      )
    expect(tls(["--ca-file", "/ca.crt", "--tls-server-name", "checkpoint-service.checkpointer.svc"], {
      CHECKPOINTER_CA_FILE: "/env.crt"
    })).toEqual({ caFile: Option.some("/ca.crt"), serverName: Option.some("checkpoint-service.checkpointer.svc") })
    expect(tls([], { CHECKPOINTER_CA_FILE: "/env.crt" })).toEqual({
      caFile: Option.some("/env.crt"),
      serverName: Option.none()
    })
  })

  it("takes the URL from CHECKPOINTER_URL, else localhost:3333", () => {
    const url = (env: Record<string, string>) =>
      Either.getOrThrow(Either.map(parseInvocation(["p"], env), (parsed) => parsed === "help" ? "" : parsed.url))
    expect(url({ CHECKPOINTER_URL: "http://checkpointer:8000" })).toBe("http://checkpointer:8000")
    expect(url({})).toBe("http://localhost:3333")
  })

  it("takes the token from --token, else CHECKPOINTER_TOKEN", () => {
    const token = (args: ReadonlyArray<string>, env: Record<string, string>) =>
      Either.getOrThrow(
        Either.map(parseInvocation(["p", ...args], env), (parsed) => parsed === "help" ? undefined : parsed.token)
      )
    expect(token(["--token", "abc"], { CHECKPOINTER_TOKEN: "env" })).toEqual(Option.some("abc"))
    expect(token([], { CHECKPOINTER_TOKEN: "env" })).toEqual(Option.some("env"))
    expect(token([], {})).toEqual(Option.none())
  })

  it("refuses no pod, two pods and unknown options", () => {
    for (const args of [[], ["a", "b"], ["p", "--force"], ["p", "-c"]]) {
      expect(Either.isLeft(parseInvocation(args, {})), args.join(" ")).toBe(true)
    }
    expect(parseInvocation(["--help"], {})).toEqual(Either.right("help"))
  })
})
