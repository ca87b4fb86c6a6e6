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
      pod: "web-0",
      container: Option.some("app"),
      namespace: Option.some("team"),
      deletePod: true,
      async: false,
      wait: true,
      url: "http://x:1",
      token: Option.none(),
      caFile: Option.none(),
      tlsServerName: Option.none()
    }))
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
