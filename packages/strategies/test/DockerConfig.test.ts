import { describe, expect, it } from "@effect/vitest"
import { Effect, Option, Redacted } from "effect"
import { credentialsFor, normalizeAuthKey, parseAuthConfig } from "../src/registry/DockerConfig.ts"
import type { Credentials } from "../src/registry/DockerConfig.ts"

describe("docker config auth file", () => {
  it("normalizes keys like the docker CLI", () => {
    expect(normalizeAuthKey("https://index.docker.io/v1/")).toBe("index.docker.io")
    expect(normalizeAuthKey("http://Registry.Example.com:5000/v2/")).toBe("registry.example.com:5000")
    expect(normalizeAuthKey("127.0.0.1:5000")).toBe("127.0.0.1:5000")
  })

  it.effect("finds credentials from `auth` or `username`/`password`, Docker Hub under its v1 key", () =>
    Effect.gen(function*() {
      const config = yield* parseAuthConfig(JSON.stringify({
        auths: {
          "https://index.docker.io/v1/": { auth: Buffer.from("hubuser:hub:pass").toString("base64") },
          "127.0.0.1:5000": { username: "local", password: "secret" },
          "https://quay.io": { auth: "" },
          "broken.example": "nonsense"
        }
      }))
      const hub = credentialsFor(config, "docker.io")
      const plain = (credentials: Option.Option<Credentials>) =>
        Option.map(credentials, (c) => [c.username, Redacted.value(c.password)])
      expect(plain(hub)).toEqual(Option.some(["hubuser", "hub:pass"]))
      expect(Option.isSome(credentialsFor(config, "registry-1.docker.io"))).toBe(true)
      const local = credentialsFor(config, "127.0.0.1:5000")
      expect(plain(local)).toEqual(Option.some(["local", "secret"]))
      expect(Option.isNone(credentialsFor(config, "127.0.0.1:5001"))).toBe(true)
      expect(Option.isNone(credentialsFor(config, "quay.io"))).toBe(true)
      expect(String(hub)).not.toContain("hub:pass")
    }))

  it.effect("reports a malformed file without quoting it", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(parseAuthConfig("{\"auths\": {\"h\": {\"password\": \"s3cret\""))
      expect(error.message).toBe("the registry auth file is not valid JSON")
      expect(error.message).not.toContain("s3cret")
    }))

  it.effect("a file without auths has no credentials; one that is not a JSON object is refused", () =>
    Effect.gen(function*() {
      expect((yield* parseAuthConfig("{}")).size).toBe(0)
      expect((yield* parseAuthConfig("{\"auths\": {\"h\": null}}")).size).toBe(0)
      for (const text of ["42", "null", "\"auths\""]) {
        const error = yield* Effect.flip(parseAuthConfig(text))
        expect(error.message).toBe("the registry auth file is not a docker config JSON object")
      }
    }))
})
