import * as k8s from "@kubernetes/client-node"
import * as apps from "kubernetes-models/apps/v1"
import * as rbac from "kubernetes-models/rbac.authorization.k8s.io/v1"
import * as core from "kubernetes-models/v1"
import { execFileSync } from "node:child_process"
import { readdirSync, readFileSync, statSync } from "node:fs"
import { describe, expect, it } from "vitest"
import { parse, parseAllDocuments } from "yaml"
import { projectRoot } from "./harness/CheckpointerProcess.ts"

/**
 * k8s-manifests against the Kubernetes OpenAPI schemas (kubernetes-models: the schemas of Kubernetes' own OpenAPI
 * document compiled to Ajv validators), fields unknown to Kubernetes (@kubernetes/client-node's generated models, as
 * `kubectl --validate=strict` would refuse them), and the kustomizations built by kustomize.
 */

const manifestsDir = `${projectRoot}/k8s-manifests`

interface Resource {
  readonly apiVersion: string
  readonly kind: string
  readonly metadata: { readonly name: string; readonly namespace?: string; readonly labels?: Record<string, string> }
  readonly [key: string]: unknown
}

type Model = new(data: unknown) => { validate(): void }
const models: Record<string, Record<string, unknown>> = {
  v1: core,
  "apps/v1": apps,
  "rbac.authorization.k8s.io/v1": rbac
}

/** Schema errors of one resource ("" when valid). */
const schemaErrors = (resource: Resource): string => {
  const model = models[resource.apiVersion]?.[resource.kind] as Model | undefined
  if (model === undefined) return `no schema for ${resource.apiVersion} ${resource.kind}`
  try {
    new model(resource).validate()
    return ""
  } catch (error) {
    const details = (error as { errors?: ReadonlyArray<{ instancePath: string; message?: string }> }).errors
    return details === undefined
      ? String(error)
      : details.map((detail) => `${detail.instancePath} ${detail.message ?? ""}`).join("; ")
  }
}

interface Attribute {
  readonly baseName: string
  readonly type: string
}
const scalarTypes = new Set(["string", "number", "boolean", "Date", "any", "object", "IntOrString"])

/** Paths of fields that the Kubernetes type `type` does not have, as strict validation reports them. */
const unknownFields = (value: unknown, type: string, path: string): ReadonlyArray<string> => {
  if (value === null || value === undefined || scalarTypes.has(type)) return []
  const array = /^Array<(.+)>$/.exec(type)
  if (array !== null) {
    return Array.isArray(value) ? value.flatMap((item, i) => unknownFields(item, array[1]!, `${path}[${i}]`)) : []
  }
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type)
  if (map !== null) {
    return Object.entries(value as object).flatMap(([key, item]) => unknownFields(item, map[1]!, `${path}.${key}`))
  }
  const model = (k8s as unknown as Record<string, { getAttributeTypeMap?: () => ReadonlyArray<Attribute> }>)[type]
  if (model?.getAttributeTypeMap === undefined) return [`${path}: no model ${type}`]
  const attributes = model.getAttributeTypeMap()
  return Object.entries(value as object).flatMap(([key, item]) => {
    const attribute = attributes.find((candidate) => candidate.baseName === key)
    return attribute === undefined ? [`${path}.${key}`] : unknownFields(item, attribute.type, `${path}.${key}`)
  })
}

const strictErrors = (resource: Resource) => unknownFields(resource, `V1${resource.kind}`, resource.kind)

const documentsOf = (text: string, origin: string): ReadonlyArray<Resource> =>
  parseAllDocuments(text).map((document) => {
    expect(document.errors, origin).toEqual([])
    return document.toJS() as Resource
  }).filter((resource) => resource !== null)

const yamlFiles = (dir: string): ReadonlyArray<string> =>
  readdirSync(dir).flatMap((name) => {
    const path = `${dir}/${name}`
    return statSync(path).isDirectory() ? yamlFiles(path) : name.endsWith(".yaml") ? [path] : []
  })

const kustomizationFiles = yamlFiles(manifestsDir).filter((path) => path.endsWith("/kustomization.yaml"))
const patchFiles = new Set(
  kustomizationFiles.flatMap((path) => {
    const patches = (parse(readFileSync(path, "utf8")) as { patches?: ReadonlyArray<{ path: string }> }).patches ?? []
    return patches.map((patch) => `${path.slice(0, path.lastIndexOf("/"))}/${patch.path}`)
  })
)
/** monitoring/ holds Prometheus Operator resources (no Kubernetes schema): test/Monitoring.test.ts checks them. */
const resourceFiles = yamlFiles(manifestsDir).filter((path) =>
  !path.endsWith("/kustomization.yaml") && !patchFiles.has(path) && !path.startsWith(`${manifestsDir}/monitoring/`)
)

const hasCommand = (command: string) => {
  try {
    execFileSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
}
const kustomizeMissing = !hasCommand("kustomize")
if (kustomizeMissing && process.env.REQUIRE_E2E === "1") {
  throw new Error("REQUIRE_E2E=1 but kustomize is missing (scripts/setup.sh installs it)")
}

const build = (dir: string): ReadonlyArray<Resource> =>
  documentsOf(execFileSync("kustomize", ["build", `${manifestsDir}/${dir}`], { encoding: "utf8" }), dir)

/** Every name the code reads from its environment: the upper-case string literals of the packages' sources. */
const knownVariables = new Set(
  ["core", "strategies", "server"].flatMap((pkg) => {
    const dir = `${projectRoot}/packages/${pkg}/src`
    const sources = readdirSync(dir, { recursive: true, encoding: "utf8" }).filter((name) => name.endsWith(".ts"))
    return sources.flatMap((name) =>
      [...readFileSync(`${dir}/${name}`, "utf8").matchAll(/"([A-Z][A-Z0-9_]{3,})"/g)].map((match) => match[1]!)
    )
  })
)

const find = <T>(resources: ReadonlyArray<Resource>, kind: string, name?: string): T => {
  const found = resources.find((resource) =>
    resource.kind === kind && (name === undefined || resource.metadata.name === name)
  )
  expect(found, `${kind} ${name ?? ""}`).toBeDefined()
  return found as T
}

describe("k8s-manifests", () => {
  it("has the Go service's manifests, its RBAC and the kustomizations", () => {
    const relative = [...resourceFiles, ...kustomizationFiles].map((path) => path.slice(manifestsDir.length + 1))
    expect(relative).toEqual(expect.arrayContaining([
      "kustomization.yaml",
      "base/configmap.yaml",
      "base/daemonset.yaml",
      "base/service.yaml",
      "base/dockerconfig-secret.yaml",
      "base/kubelet-tls-secret.yaml",
      "rbac.yaml",
      "overlays/native/kustomization.yaml",
      "overlays/kaniko-fs/kustomization.yaml"
    ]))
  })

  it.each(resourceFiles.map((path) => [path.slice(manifestsDir.length + 1), path]))(
    "%s is valid against the Kubernetes schemas, without unknown fields",
    (_, path) => {
      const resources = documentsOf(readFileSync(path, "utf8"), path)
      expect(resources.length).toBeGreaterThan(0)
      for (const resource of resources) {
        expect(schemaErrors(resource), `${resource.kind} ${resource.metadata.name}`).toBe("")
        expect(strictErrors(resource), `${resource.kind} ${resource.metadata.name}`).toEqual([])
      }
    }
  )

  it("catches what the API server would refuse", () => {
    const daemonSet = documentsOf(readFileSync(`${manifestsDir}/base/daemonset.yaml`, "utf8"), "daemonset")[0]!
    const broken = JSON.parse(JSON.stringify(daemonSet))
    broken.spec.template.spec.containers[0].readinesProbe = broken.spec.template.spec.containers[0].readinessProbe
    expect(strictErrors(broken)).toEqual(["DaemonSet.spec.template.spec.containers[0].readinesProbe"])
    broken.spec.template.spec.containers[0].ports[0].containerPort = "3333"
    expect(schemaErrors(broken)).toContain("/spec/template/spec/containers/0/ports/0/containerPort")
  })

  it("overlays carry identical copies of the RBAC files (kustomize reads no file outside a kustomization)", () => {
    for (const overlay of ["native", "kaniko-fs"]) {
      for (const file of readdirSync(`${manifestsDir}/overlays/${overlay}`).filter((name) => name.startsWith("rbac"))) {
        const copy = `k8s-manifests/overlays/${overlay}/${file}`
        expect(readFileSync(`${projectRoot}/${copy}`, "utf8"), `cp k8s-manifests/${file} ${copy}`).toBe(
          readFileSync(`${manifestsDir}/${file}`, "utf8")
        )
      }
    }
  })

  describe.skipIf(kustomizeMissing)("built with kustomize", () => {
    const builds = { kaniko: ".", native: "overlays/native", "kaniko-fs": "overlays/kaniko-fs" } as const

    it.each(Object.entries(builds))("%s: every built resource is valid", (_, dir) => {
      for (const resource of build(dir)) {
        expect(schemaErrors(resource), `${resource.kind} ${resource.metadata.name}`).toBe("")
        expect(strictErrors(resource), `${resource.kind} ${resource.metadata.name}`).toEqual([])
        expect(resource.metadata.labels?.["app.kubernetes.io/name"], `${resource.kind} ${resource.metadata.name}`)
          .toBe("checkpointer")
      }
    })

    it.each(Object.entries(builds))(
      "%s: the DaemonSet runs on every node " +
        "as routing and the kubelet need",
      (_, dir) => {
        const resources = build(dir)
        const daemonSet = find<k8s.V1DaemonSet>(resources, "DaemonSet", "checkpointer")
        const pod = daemonSet.spec!.template.spec!
        const container = pod.containers[0]!
        const env = container.env ?? []
        const mounts = container.volumeMounts ?? []
        expect(daemonSet.spec!.selector.matchLabels).toEqual({ "app.kubernetes.io/name": "checkpointer" })
        expect(daemonSet.spec!.template.metadata!.labels!["app.kubernetes.io/name"]).toBe("checkpointer")
        expect(pod.tolerations).toEqual([{ operator: "Exists" }])
        const fieldOf = (name: string) => env.find((variable) => variable.name === name)?.valueFrom?.fieldRef?.fieldPath
        expect(fieldOf("CHECKPOINTER_NODE")).toBe("spec.nodeName")
        expect(fieldOf("CHECKPOINTER_NODE_IP")).toBe("status.hostIP")
        expect(container.readinessProbe!.httpGet).toEqual({ path: "/readyz", port: "http" })
        expect(container.livenessProbe!.httpGet).toEqual({ path: "/healthz", port: "http" })
        expect(container.ports).toEqual([{ name: "http", containerPort: 3333, protocol: "TCP" }])
        expect(container.resources!.requests).toMatchObject({ cpu: expect.any(String), memory: expect.any(String) })
        expect(container.resources!.limits!.memory).toEqual(expect.any(String))
        expect(container.image).toBe("registry.example.com/checkpointer:0.1.0")

        // Reading root-owned 0600 archives: uid 0 and no capability, nothing privileged.
        expect(container.securityContext).toMatchObject({
          runAsUser: 0,
          privileged: false,
          allowPrivilegeEscalation: false,
          readOnlyRootFilesystem: true,
          capabilities: { drop: ["ALL"] }
        })
        expect(container.securityContext!.capabilities!.add).toBeUndefined()
        expect(pod.hostNetwork ?? false).toBe(false)
        expect(pod.hostPID ?? false).toBe(false)

        // Every hostPath is mounted at its own path: paths the kubelet and Kaniko pods see are the same inside.
        const volumes = new Map((pod.volumes ?? []).map((volume) => [volume.name, volume]))
        for (const mount of mounts) {
          const hostPath = volumes.get(mount.name)?.hostPath?.path
          if (hostPath !== undefined) expect(mount.mountPath, mount.name).toBe(hostPath)
        }
        expect(mounts.map((mount) => mount.mountPath)).toContain("/var/lib/kubelet/checkpoints")

        // Settings: known variables only, the store on the node, the secrets in the same namespace.
        const config = find<k8s.V1ConfigMap>(resources, "ConfigMap", container.envFrom![0]!.configMapRef!.name).data!
        for (const name of [...Object.keys(config), ...env.map((variable) => variable.name)]) {
          expect(knownVariables.has(name), `${name} is read by Checkpointer`).toBe(true)
        }
        expect(mounts.map((mount) => mount.mountPath)).toContain(config.STORAGE_BASE_PATH)
        // The kubelet's checkpoint directory: the only place archives are read from, mounted from the node as it is.
        const checkpoints = mounts.find((mount) => mount.mountPath === config.KUBELET_CHECKPOINT_DIR)
        expect(checkpoints, "KUBELET_CHECKPOINT_DIR is mounted").toBeDefined()
        expect(volumes.get(checkpoints!.name)?.hostPath?.path).toBe(config.KUBELET_CHECKPOINT_DIR)
        const kubeletTls = volumes.get("kubelet-tls")!.secret!.secretName
        expect(find<k8s.V1Secret>(resources, "Secret", kubeletTls).type).toBe("kubernetes.io/tls")
        expect(find<k8s.V1Secret>(resources, "Secret", config.KANIKO_SECRET_NAME).type)
          .toBe("kubernetes.io/dockerconfigjson")
        for (const resource of resources.filter((r) => r.metadata.namespace !== undefined)) {
          expect(resource.metadata.namespace, `${resource.kind} ${resource.metadata.name}`).toBe("checkpointer")
        }
        expect(find(resources, "ServiceAccount", pod.serviceAccountName)).toBeDefined()

        const service = find<k8s.V1Service>(resources, "Service", "checkpoint-service")
        expect(service.spec!.selector).toEqual({ "app.kubernetes.io/name": "checkpointer" })
        expect(service.spec!.ports).toEqual([{ name: "http", protocol: "TCP", port: 80, targetPort: "http" }])
      }
    )

    it("the default install is the Go service's default kaniko builder with its RBAC", () => {
      const resources = build(".")
      expect(find<k8s.V1ConfigMap>(resources, "ConfigMap", "checkpointer-config").data!.CHECKPOINT_BUILDER)
        .toBeUndefined()
      expect(resources.filter((r) => r.kind === "Role").map((r) => r.metadata.name)).toEqual(["checkpointer-kaniko"])
      if (hasCommand("kubectl")) {
        // What `kubectl apply -k k8s-manifests` applies: kubectl's own kustomize gives the same resources.
        const kustomized = execFileSync("kubectl", ["kustomize", manifestsDir], { encoding: "utf8" })
        const viaKubectl = documentsOf(kustomized, "kubectl")
        expect(viaKubectl).toEqual(resources)
      }
    })

    it("the native overlay mounts the registry credentials and creates no pods", () => {
      const resources = build("overlays/native")
      const config = find<k8s.V1ConfigMap>(resources, "ConfigMap", "checkpointer-config").data!
      expect(config.CHECKPOINT_BUILDER).toBe("native")
      const pod = find<k8s.V1DaemonSet>(resources, "DaemonSet", "checkpointer").spec!.template.spec!
      const authFile = config.REGISTRY_AUTH_FILE!
      const mount = pod.containers[0]!.volumeMounts!.find((m) => authFile.startsWith(`${m.mountPath}/`))!
      const volume = pod.volumes!.find((v) => v.name === mount.name)!
      expect(volume.secret!.secretName).toBe(config.KANIKO_SECRET_NAME)
      expect(volume.secret!.items).toEqual([{ key: ".dockerconfigjson", path: authFile.split("/").at(-1) }])
      expect(resources.filter((r) => r.kind === "Role")).toEqual([])
    })

    it(
      "the TLS component serves HTTPS from a mounted Secret, probes with HTTPS, " +
        "and the Service answers on 443",
      () => {
        const resources = build("overlays/native-tls")
        for (const resource of resources) {
          expect(schemaErrors(resource), `${resource.kind} ${resource.metadata.name}`).toBe("")
          expect(strictErrors(resource), `${resource.kind} ${resource.metadata.name}`).toEqual([])
        }
        const config = find<k8s.V1ConfigMap>(resources, "ConfigMap", "checkpointer-config").data!
        const pod = find<k8s.V1DaemonSet>(resources, "DaemonSet", "checkpointer").spec!.template.spec!
        const container = pod.containers[0]!
        expect(container.readinessProbe!.httpGet).toEqual({ path: "/readyz", port: "http", scheme: "HTTPS" })
        expect(container.livenessProbe!.httpGet).toEqual({ path: "/healthz", port: "http", scheme: "HTTPS" })
        for (const name of ["CHECKPOINTER_TLS_CERT_FILE", "CHECKPOINTER_TLS_KEY_FILE", "CHECKPOINTER_TLS_CA_FILE"]) {
          const file = config[name]!
          const mount = container.volumeMounts!.find((m) => file.startsWith(`${m.mountPath}/`))!
          const secretName = pod.volumes!.find((v) => v.name === mount.name)!.secret!.secretName!
          const secret = find<k8s.V1Secret>(resources, "Secret", secretName)
          expect(Object.keys(secret.stringData ?? {}), name).toContain(file.slice(mount.mountPath.length + 1))
        }
        const service = find<k8s.V1Service>(resources, "Service", "checkpoint-service")
        expect(service.spec!.ports).toEqual([{ name: "https", protocol: "TCP", port: 443, targetPort: "http" }])
      }
    )

    it("the kaniko-fs overlay shares its build-context directory with the node and has no pod attach", () => {
      const resources = build("overlays/kaniko-fs")
      const config = find<k8s.V1ConfigMap>(resources, "ConfigMap", "checkpointer-config").data!
      expect(config.CHECKPOINT_BUILDER).toBe("kaniko-fs")
      const pod = find<k8s.V1DaemonSet>(resources, "DaemonSet", "checkpointer").spec!.template.spec!
      const volume = pod.volumes!.find((v) => v.hostPath?.path === config.KANIKO_BUILD_CTX_DIR)
      expect(volume).toBeDefined()
      expect(resources.filter((r) => r.kind === "Role").map((r) => r.metadata.name)).toEqual(["checkpointer-kaniko-fs"])
      expect(JSON.stringify(resources)).not.toContain("pods/attach")
    })
  })
})
