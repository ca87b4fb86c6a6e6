import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import { formatReference, parseImageReference } from "../src/OciRegistry.ts"

const parsed = (name: string) => Either.getOrThrow(parseImageReference(name))

describe("parseImageReference", () => {
  it("keeps an explicit host with a port, a nested path and the tag", () => {
    expect(parsed("127.0.0.1:5000/checkpoints/team/counter:0123456789abcdef")).toEqual({
      domain: "127.0.0.1:5000",
      apiHost: "127.0.0.1:5000",
      repository: "checkpoints/team/counter",
      tag: "0123456789abcdef"
    })
    expect(parsed("registry.example.com/app:v1.2")).toMatchObject({ domain: "registry.example.com", repository: "app" })
    expect(parsed("localhost/app:x")).toMatchObject({ domain: "localhost", repository: "app" })
    expect(parsed("localhost:5000/app")).toMatchObject({ domain: "localhost:5000", repository: "app", tag: "latest" })
    expect(parsed("[::1]:5000/app:t")).toMatchObject({ domain: "[::1]:5000", repository: "app", tag: "t" })
  })

  it("sends names without a host to Docker Hub, under library/ when they have a single component", () => {
    expect(parsed("busybox")).toEqual({
      domain: "docker.io",
      apiHost: "registry-1.docker.io",
      repository: "library/busybox",
      tag: "latest"
    })
    expect(parsed("pbaran555/checkpoint-base:1.0.0")).toMatchObject({
      domain: "docker.io",
      apiHost: "registry-1.docker.io",
      repository: "pbaran555/checkpoint-base",
      tag: "1.0.0"
    })
    expect(parsed("docker.io/busybox:1")).toMatchObject({
      repository: "library/busybox",
      apiHost: "registry-1.docker.io"
    })
    expect(parsed("index.docker.io/user/app:1")).toMatchObject({ domain: "docker.io", repository: "user/app" })
    expect(formatReference(parsed("busybox:1"))).toBe("docker.io/library/busybox:1")
  })

  it("treats the first component as a path unless it looks like a host", () => {
    expect(parsed("team/app:1")).toMatchObject({ domain: "docker.io", repository: "team/app" })
    expect(parsed("my-registry.local/a/b/c:1")).toMatchObject({ domain: "my-registry.local", repository: "a/b/c" })
  })

  it("accepts the separators docker accepts in path components", () => {
    expect(parsed("r.io/a_b/c__d/e.f/g--h:t_1.x-y").repository).toBe("a_b/c__d/e.f/g--h")
  })

  it("rejects what docker rejects", () => {
    const invalid = ["r.io/App:1", "r.io/a//b:1", "r.io/-a:1", "r.io/a:", "r.io/a:-x", "r.io/a_:1", "", "r.io/a@sha2:0"]
    for (const name of invalid) {
      expect(Either.isLeft(parseImageReference(name)), name).toBe(true)
    }
    expect(Either.isLeft(parseImageReference(`r.io/a:${"x".repeat(129)}`))).toBe(true)
    expect(Either.isLeft(parseImageReference(`r.io/${"a".repeat(260)}:1`))).toBe(true)
  })
})
