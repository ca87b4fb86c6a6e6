import { kubernetesReason, reasonOf, transportReason } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"

const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:9"), { code: "ECONNREFUSED" })

describe("Reason", () => {
  it.effect("reasonOf: a platform error's reason and description, an error's message, or the value", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const missing = yield* Effect.flip(fs.readFileString("/nonexistent/file"))
      expect(reasonOf(missing)).toMatch(/^NotFound: .*ENOENT/)
      expect(reasonOf(new Error("boom"))).toBe("boom")
      expect(reasonOf({ message: "an ErrorEvent" })).toBe("an ErrorEvent")
      expect(reasonOf("plain")).toBe("plain")
    }).pipe(Effect.provide(NodeContext.layer)))

  it("transportReason: the innermost cause with its code, or the error's own reason", () => {
    const wrapped = new Error("Transport error (POST https://10.0.0.2:10250/checkpoint)", {
      cause: new TypeError("fetch failed", { cause: refused })
    })
    expect(transportReason(wrapped)).toBe("connect ECONNREFUSED 127.0.0.1:9 (ECONNREFUSED)")
    expect(transportReason(new Error("no cause"))).toBe("no cause")
  })

  it("kubernetesReason: a Status body's message, else the first line and the network reason", () => {
    expect(kubernetesReason({ code: 403, body: JSON.stringify({ message: "pods is forbidden" }) })).toBe(
      "pods is forbidden"
    )
    expect(kubernetesReason(new TypeError("fetch failed\nat somewhere", { cause: refused }))).toBe(
      "fetch failed: connect ECONNREFUSED 127.0.0.1:9 (ECONNREFUSED)"
    )
  })
})
