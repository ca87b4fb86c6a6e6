import { readdirSync, readFileSync } from "node:fs"
import { describe, expect, it } from "vitest"
import { parseAllDocuments } from "yaml"
import { projectRoot } from "./harness/CheckpointerProcess.ts"

/**
 * The RBAC in k8s-manifests against what the code calls: every Kubernetes call in core's Cluster.ts and in the
 * strategies' KanikoPods.ts, the methods of each that core, the server and each strategy use (found in the
 * sources), and the permission each call needs. A call added without its permission, or a permission no call needs,
 * fails here.
 */

const source = (path: string) => readFileSync(`${projectRoot}/${path}`, "utf8")

/** The permission each call of @kubernetes/client-node in those services needs: `resource[.group]:verb`. */
const permissionsOfCall: Readonly<Record<string, ReadonlyArray<string>>> = {
  "core.readNamespacedPod": ["pods:get"],
  "core.deleteNamespacedPod": ["pods:delete"],
  "core.listPodForAllNamespaces": ["pods:list"],
  "core.createNamespacedEvent": ["events:create"],
  "core.createNamespacedPod": ["pods:create"],
  "core.readNamespacedPodLog": ["pods/log:get"],
  "core.listNamespacedEvent": ["events:list"],
  "watcher.watch": ["pods:watch"],
  // The WebSocket upgrade is a GET, authorized as `get` before Kubernetes 1.31 and as `create` since.
  "attacher.attach": ["pods/attach:create", "pods/attach:get"],
  // AUTH_MODE=kubernetes: who the caller is, and whether the caller may do what it asks.
  "authentication.createTokenReview": ["tokenreviews.authentication.k8s.io:create"],
  "authorization.createSubjectAccessReview": ["subjectaccessreviews.authorization.k8s.io:create"]
}

/** The services that call the Kubernetes API: where each lives, and the name its users give it. */
const services = {
  cluster: { path: "packages/core/src/kubernetes/Cluster.ts", usedAs: "cluster" },
  kanikoPods: { path: "packages/strategies/src/kaniko/KanikoPods.ts", usedAs: "pods" }
} as const

type Service = keyof typeof services

/** Calls on the API clients, the Watch and the Attach that a service makes from its kubeconfig. */
const clientCallPattern = (service: Service) => {
  const text = source(services[service].path)
  const clients = [...text.matchAll(/const (\w+) = (?:kubeConfig\.makeApiClient\(|new (?:Watch|Attach)\(kubeConfig)/g)]
    .map((match) => match[1]!)
  expect(clients.length).toBeGreaterThan(0)
  return new RegExp(`\\b((?:${clients.join("|")})\\.\\w+)\\(`, "g")
}

/** The bodies of the `const name = ...` declarations inside a service (4 spaces deep). */
const serviceDeclarations = (service: Service): ReadonlyMap<string, string> => {
  const text = source(services[service].path)
  const parts = text.split(/\n(?= {4}const \w+ = )/)
  const declarations = new Map<string, string>()
  for (const part of parts.slice(1)) {
    const name = /^ {4}const (\w+) = /.exec(part)![1]!
    declarations.set(name, part.split(/\n {4}return \{/)[0]!)
  }
  return declarations
}

/** The client calls a service's method makes, through the helpers it uses. */
const callsOf = (
  service: Service,
  declarations: ReadonlyMap<string, string>,
  name: string,
  seen = new Set<string>()
): Set<string> => {
  const calls = new Set<string>()
  if (seen.has(name)) return calls
  seen.add(name)
  const body = declarations.get(name) ?? ""
  for (const match of body.matchAll(clientCallPattern(service))) calls.add(match[1]!)
  for (const other of declarations.keys()) {
    if (other !== name && new RegExp(`\\b${other}\\(`).test(body)) {
      for (const call of callsOf(service, declarations, other, seen)) calls.add(call)
    }
  }
  return calls
}

const methodsUsedIn = (service: Service, paths: ReadonlyArray<string>) =>
  new Set(
    paths.flatMap((path) =>
      [...source(path).matchAll(new RegExp(`\\b${services[service].usedAs}\\.(\\w+)\\(`, "g"))].map((match) =>
        match[1]!
      )
    )
  )

/** Where the orchestration and the API (the server's caller authentication) use those services. */
const corePaths = ["core", "server"].flatMap((pkg) =>
  readdirSync(`${projectRoot}/packages/${pkg}/src`, { recursive: true, encoding: "utf8" })
    .filter((file) => file.endsWith(".ts") && !file.endsWith("/Cluster.ts"))
    .map((file) => `packages/${pkg}/src/${file}`)
)

type Scope = "cluster" | "namespace"

/** Permissions as `scope:resource:verb`: the core's are needed in every namespace, the builders' in Checkpointer's. */
const required = (builder: "native" | "kaniko" | "kaniko-fs") => {
  const permissions = (service: Service, methods: ReadonlySet<string>, scope: Scope) =>
    [...methods].flatMap((method) =>
      [...callsOf(service, serviceDeclarations(service), method)].flatMap((call) =>
        (permissionsOfCall[call] ?? [`unknown call ${call}`]).map((permission) => `${scope}:${permission}`)
      )
    )
  const strategies = "packages/strategies/src"
  const builderFiles = builder === "native"
    ? []
    : [
      `${strategies}/kaniko/KanikoBuilder.ts`,
      `${strategies}/kaniko/${builder === "kaniko" ? "Kaniko" : "KanikoFs"}ImageBuilder.ts`
    ]
  const base = new Set([
    ...permissions("cluster", methodsUsedIn("cluster", corePaths), "cluster")
  ])
  const builderOnly = permissions("kanikoPods", methodsUsedIn("kanikoPods", builderFiles), "namespace")
    .filter((permission) => !base.has(permission.replace(/^namespace:/, "cluster:")))
  return new Set([...base, ...builderOnly])
}

interface Rule {
  readonly apiGroups: ReadonlyArray<string>
  readonly resources: ReadonlyArray<string>
  readonly verbs: ReadonlyArray<string>
}

interface Manifest {
  readonly kind: string
  readonly metadata: { readonly name: string; readonly namespace?: string }
  readonly rules?: ReadonlyArray<Rule>
  readonly roleRef?: { readonly kind: string; readonly name: string }
  readonly subjects?: ReadonlyArray<{ readonly kind: string; readonly name: string; readonly namespace?: string }>
}

const manifests = (file: string): ReadonlyArray<Manifest> =>
  parseAllDocuments(source(`k8s-manifests/${file}`)).map((document) => {
    expect(document.errors, file).toEqual([])
    return document.toJS() as Manifest
  })

/** What the `checkpointer` service account is granted by these files, as `scope:resource:verb` (duplicates kept). */
const granted = (files: ReadonlyArray<string>) => {
  const all = files.flatMap(manifests)
  const account = all.find((manifest) => manifest.kind === "ServiceAccount")
  expect(account?.metadata).toEqual({ name: "checkpointer", namespace: "checkpointer", labels: expect.anything() })
  const permissions: Array<string> = []
  for (const binding of all.filter((manifest) => manifest.kind.endsWith("Binding"))) {
    expect(binding.subjects).toEqual([{ kind: "ServiceAccount", name: "checkpointer", namespace: "checkpointer" }])
    const role = all.find((manifest) =>
      manifest.kind === binding.roleRef?.kind && manifest.metadata.name === binding.roleRef.name
    )
    expect(role, `${binding.kind} ${binding.metadata.name} refers to a role in these files`).toBeDefined()
    const scope: Scope = binding.kind === "ClusterRoleBinding" ? "cluster" : "namespace"
    if (scope === "namespace") {
      expect(binding.metadata.namespace).toBe("checkpointer")
      expect(role!.metadata.namespace).toBe("checkpointer")
    }
    for (const rule of role!.rules ?? []) {
      for (const group of rule.apiGroups) {
        for (const resource of rule.resources) {
          const qualified = group === "" ? resource : `${resource}.${group}`
          for (const verb of rule.verbs) permissions.push(`${scope}:${qualified}:${verb}`)
        }
      }
    }
  }
  return permissions
}

const rbacFiles = {
  native: ["rbac.yaml"],
  kaniko: ["rbac.yaml", "rbac-kaniko.yaml"],
  "kaniko-fs": ["rbac.yaml", "rbac-kaniko-fs.yaml"]
}

describe("RBAC in k8s-manifests", () => {
  it("knows the permission of every Kubernetes call in Cluster.ts and KanikoPods.ts", () => {
    const calls = new Set(
      (Object.keys(services) as ReadonlyArray<Service>).flatMap((service) =>
        [...source(services[service].path).matchAll(clientCallPattern(service))].map((match) => match[1]!)
      )
    )
    expect([...calls].sort()).toEqual(Object.keys(permissionsOfCall).sort())
  })

  it.each(["native", "kaniko", "kaniko-fs"] as const)("grants %s exactly what it calls", (builder) => {
    const permissions = granted(rbacFiles[builder])
    expect(permissions.length, `no permission granted twice: ${permissions.join(", ")}`).toBe(new Set(permissions).size)
    expect(new Set(permissions)).toEqual(required(builder))
  })

  it("grants pods/attach for kaniko only, nothing on secrets or nodes, creates only pods, events and reviews", () => {
    expect(granted(rbacFiles.kaniko).filter((permission) => permission.includes("pods/attach"))).toEqual([
      "namespace:pods/attach:create",
      "namespace:pods/attach:get"
    ])
    for (const files of Object.values(rbacFiles)) {
      expect(granted(files).filter((permission) => /secrets|nodes/.test(permission))).toEqual([])
    }
    expect(granted(rbacFiles["kaniko-fs"]).some((permission) => permission.includes("pods/attach"))).toBe(false)
    expect(granted(rbacFiles.native).filter((permission) => permission.endsWith(":create"))).toEqual([
      "cluster:pods:create",
      "cluster:events:create",
      "cluster:tokenreviews.authentication.k8s.io:create",
      "cluster:subjectaccessreviews.authorization.k8s.io:create"
    ])
  })
})
