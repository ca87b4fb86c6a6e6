import { describe, expect, it } from "@effect/vitest"
import { parseWwwAuthenticate } from "../src/registry/WwwAuthenticate.ts"

describe("parseWwwAuthenticate", () => {
  it("reads a distribution Bearer challenge", () => {
    const header = "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\"," +
      "scope=\"repository:samalba/my-app:pull,push\""
    expect(parseWwwAuthenticate(header)).toEqual([{
      scheme: "bearer",
      params: {
        realm: "https://auth.docker.io/token",
        service: "registry.docker.io",
        scope: "repository:samalba/my-app:pull,push"
      }
    }])
  })

  it("reads Basic, token values, spaces, escapes and several challenges in one header", () => {
    expect(parseWwwAuthenticate("Basic realm=\"Registry Realm\"")).toEqual([
      { scheme: "basic", params: { realm: "Registry Realm" } }
    ])
    const several = "Basic realm=\"a \\\"quoted\\\" realm\" , charset=UTF-8, " +
      "Bearer realm=\"https://t/x\", error=invalid_token"
    expect(parseWwwAuthenticate(several))
      .toEqual([
        { scheme: "basic", params: { realm: "a \"quoted\" realm", charset: "UTF-8" } },
        { scheme: "bearer", params: { realm: "https://t/x", error: "invalid_token" } }
      ])
    expect(parseWwwAuthenticate("Negotiate, Bearer realm=\"r\"")).toEqual([
      { scheme: "negotiate", params: {} },
      { scheme: "bearer", params: { realm: "r" } }
    ])
    expect(parseWwwAuthenticate("")).toEqual([])
  })
})
