import { FileSystem } from "@effect/platform"
import { expect, layer } from "@effect/vitest"
import { Effect, Option } from "effect"
import { freePort } from "./harness/CheckpointerProcess.ts"
import { startCounterPod } from "./harness/Cluster.ts"
import { describeE2E } from "./harness/E2E.ts"
import { Stack } from "./harness/LocalStack.ts"
import { getResult } from "./HttpCalls.ts"
import { hasKubectl, kubectlCheckpoint, kubectlCheckpointOnTerminal } from "./KubectlPlugin.ts"

describeE2E("kubectl checkpoint against the local stack", () => {
  layer(Stack.layer({ registryAuth: "htpasswd" }), { excludeTestServices: true, timeout: "180 seconds" })((it) => {
    it.effect("runs as a kubectl plugin", () =>
      Effect.gen(function*() {
        if (process.env.REQUIRE_E2E === "1") expect(hasKubectl, "kubectl is installed by scripts/setup.sh").toBe(true)
        const help = yield* kubectlCheckpoint(["--help"], {})
        expect(help.code).toBe(0)
        expect(help.stdout).toContain("kubectl checkpoint POD [-c CONTAINER] [-n NAMESPACE]")
        const wrong = yield* kubectlCheckpoint(["--frobnicate"], {})
        expect(wrong.code).toBe(2)
        expect(wrong.stderr).toContain("error: Unknown option '--frobnicate'")
      }))

    it.scoped("picks the pod's only container, waits, and prints the image name", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const env = { KUBECONFIG: stack.cluster.apiServer.kubeconfigPath }
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "ops-kc-sync", nodeName: "node-a" })
        const sync = yield* kubectlCheckpoint(["ops-kc-sync", "--url", stack.checkpointer.url], env)
        expect(sync.code, sync.stderr).toBe(0)
        const prefix = `${stack.registry.host}/checkpoints/counter:`
        expect(sync.stdout.trim().startsWith(prefix)).toBe(true)
        expect(sync.stdout.trim()).toMatch(/:[0-9a-f]{16}$/)
        expect(sync.stderr).toContain("checkpointed default/ops-kc-sync/counter in ")
      }))

    it.scoped("--wait --delete-pod in the kubeconfig context's namespace shows progress on a terminal", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const fs = yield* FileSystem.FileSystem
        const kubeconfig = `${stack.dir}/ops-team.kubeconfig`
        const original = yield* fs.readFileString(stack.cluster.apiServer.kubeconfigPath)
        expect(original).toContain("namespace: default")
        yield* fs.writeFileString(kubeconfig, original.replace("namespace: default", "namespace: ops-team"))
        yield* startCounterPod(stack.cluster, { namespace: "ops-team", name: "ops-kc-wait", nodeName: "node-a" })
        const { code, output } = yield* kubectlCheckpointOnTerminal(
          ["ops-kc-wait", "--wait", "--delete-pod", "--url", stack.checkpointer.url],
          { KUBECONFIG: kubeconfig }
        )
        expect(code, output).toBe(0)
        expect(output).toMatch(/checkpoint node-a:[0-9a-f]{16} of ops-team\/ops-kc-wait\/counter started/)
        expect(output).toMatch(/[|/\\-] waiting for node-a:[0-9a-f]{16} \d+s/)
        expect(output).toContain("checkpointed ops-team/ops-kc-wait/counter in ")
        expect(output).toContain(", pod deleted")
        expect(output).toContain(`${stack.registry.host}/checkpoints/counter:`)
        expect(Option.isNone(yield* stack.cluster.apiServer.findPod("ops-team", "ops-kc-wait"))).toBe(true)
      }))

    it.scoped("--async prints the identifier; -c and the default-container annotation choose among containers", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const env = { KUBECONFIG: stack.cluster.apiServer.kubeconfigPath }
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "ops-kc-async", nodeName: "node-a" })
        const accepted = yield* kubectlCheckpoint(
          ["ops-kc-async", "-n", "default", "--async", "--url", stack.checkpointer.url],
          env
        )
        expect(accepted.code, accepted.stderr).toBe(0)
        const identifier = accepted.stdout.trim()
        expect(identifier).toMatch(/^node-a:[0-9a-f]{16}$/)
        expect((yield* getResult(stack.checkpointer.url, identifier)).status).toBe(200)

        yield* stack.cluster.apiServer.addPod({
          namespace: "default",
          name: "ops-kc-two",
          nodeName: "node-a",
          containers: [{ name: "app" }, { name: "sidecar" }]
        })
        const ambiguous = yield* kubectlCheckpoint(["ops-kc-two", "--url", stack.checkpointer.url], env)
        expect(ambiguous.code).toBe(1)
        expect(ambiguous.stderr).toContain(
          "error: pod default/ops-kc-two has 2 containers (app, sidecar): choose one with -c"
        )
        const chosen = yield* kubectlCheckpoint(["ops-kc-two", "-c", "sidecar", "--url", stack.checkpointer.url], env)
        expect(chosen.code).toBe(1)
        expect(chosen.stderr).toContain("default/ops-kc-two/sidecar")

        yield* stack.cluster.apiServer.addPod({
          namespace: "default",
          name: "ops-kc-annotated",
          nodeName: "node-a",
          annotations: { "kubectl.kubernetes.io/default-container": "counter" },
          containers: [{ name: "sidecar" }, { name: "counter" }]
        })
        const annotated = yield* kubectlCheckpoint(
          ["ops-kc-annotated", "--async", "--url", stack.checkpointer.url],
          env
        )
        expect(annotated.stderr).toContain("checkpoint of default/ops-kc-annotated/counter started")
      }))

    it.scoped("sends the kubeconfig user's token to a Checkpointer that checks callers (AUTH_MODE=kubernetes)", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const fs = yield* FileSystem.FileSystem
        const api = stack.cluster.apiServer
        yield* api.addUser({
          token: "ops-carol-token-5e1f",
          username: "ops-carol",
          allow: [{ verb: "create", resource: "pods", subresource: "checkpoint", namespace: "default" }]
        })
        yield* startCounterPod(stack.cluster, { namespace: "default", name: "ops-kc-auth", nodeName: "node-a" })
        const checking = yield* stack.startAnotherCheckpointer({ extra: { AUTH_MODE: "kubernetes" } })
        const kubeconfig = `${stack.dir}/ops-carol.kubeconfig`
        const original = yield* fs.readFileString(api.kubeconfigPath)
        yield* fs.writeFileString(kubeconfig, original.replace(/token: \S+/, "token: ops-carol-token-5e1f"))
        const env = { KUBECONFIG: kubeconfig }

        const allowed = yield* kubectlCheckpoint(["ops-kc-auth", "-c", "counter", "--url", checking.url], env)
        expect(allowed.code, allowed.stderr).toBe(0)
        expect(allowed.stdout).toContain(`${stack.registry.host}/checkpoints/counter:`)

        const denied = yield* kubectlCheckpoint(
          ["ops-kc-auth", "-c", "counter", "--delete-pod", "--url", checking.url],
          env
        )
        expect(denied.code).toBe(1)
        expect(denied.stderr).toMatch(/^error: .*ops-carol/)

        const unknown = yield* kubectlCheckpoint(["ops-kc-auth", "-c", "counter", "--url", checking.url], {
          ...env,
          CHECKPOINTER_TOKEN: "ops-nobody"
        })
        expect(unknown.code).toBe(1)
        expect(unknown.stderr).toMatch(/^error: /)
        expect(Option.isSome(yield* api.findPod("default", "ops-kc-auth"))).toBe(true)
      }))

    it.effect("exits 1 with the server's message, or saying why Checkpointer could not be asked", () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const env = { KUBECONFIG: stack.cluster.apiServer.kubeconfigPath }
        const noPod = yield* kubectlCheckpoint(["ops-kc-none", "--url", stack.checkpointer.url], env)
        expect(noPod.code).toBe(1)
        expect(noPod.stderr.trim()).toBe("error: pod default/ops-kc-none not found")

        const notFound = yield* kubectlCheckpoint(
          ["ops-kc-none", "-c", "counter", "--url", stack.checkpointer.url],
          env
        )
        expect(notFound.code).toBe(1)
        expect(notFound.stderr).toMatch(/^error: .*default\/ops-kc-none\/counter/)
        expect(notFound.stdout).toBe("")

        const port = yield* freePort("127.0.0.1")
        const unreachable = yield* kubectlCheckpoint(["ops-kc-none", "-c", "counter"], {
          ...env,
          CHECKPOINTER_URL: `http://127.0.0.1:${port}`
        })
        expect(unreachable.code).toBe(1)
        expect(unreachable.stderr)
          .toContain(`no answer from http://127.0.0.1:${port}/checkpoint/default/ops-kc-none/counter`)
        expect(unreachable.stderr).toContain("is Checkpointer reachable at")
      }))
  })
})
