import type { V1Pod } from "@kubernetes/client-node"
import { Either } from "effect"
import { describe, expect, it } from "vitest"
import {
  encodePodRecord,
  originalLabelsAnnotation,
  parsePodRecord,
  recordPod,
  restoredFromLabel,
  restoredPod
} from "../src/domain/PodRecord.ts"

const deploymentPod: V1Pod = {
  apiVersion: "v1",
  kind: "Pod",
  metadata: {
    name: "web-7d9f-abcde",
    namespace: "shop",
    uid: "5c1e0a4e-0000-4000-8000-000000000001",
    resourceVersion: "123",
    creationTimestamp: new Date("2026-11-30T00:00:00Z"),
    generateName: "web-7d9f-",
    labels: { app: "web", "pod-template-hash": "7d9f" },
    annotations: {
      "kubectl.kubernetes.io/last-applied-configuration": "{\"secret\":\"in here\"}",
      "prometheus.io/scrape": "true"
    },
    ownerReferences: [{ apiVersion: "apps/v1", kind: "ReplicaSet", name: "web-7d9f", uid: "u", controller: true }]
  },
  spec: {
    nodeName: "node-a",
    priority: 0,
    serviceAccountName: "web",
    imagePullSecrets: [{ name: "pull" }],
    containers: [
      {
        name: "app",
        image: "registry.example.com/web:1",
        imagePullPolicy: "Always",
        env: [
          { name: "DB_PASSWORD", value: "hunter2" },
          { name: "API_TOKEN", valueFrom: { secretKeyRef: { name: "api", key: "token" } } }
        ],
        volumeMounts: [
          { name: "data", mountPath: "/data" },
          { name: "kube-api-access-x7k2p", mountPath: "/var/run/secrets/kubernetes.io/serviceaccount" }
        ]
      },
      { name: "sidecar", image: "registry.example.com/proxy:2", env: [{ name: "MODE", value: "strict" }] }
    ],
    volumes: [
      { name: "data", emptyDir: {} },
      { name: "kube-api-access-x7k2p", projected: { sources: [{ serviceAccountToken: { path: "token" } }] } }
    ],
    ephemeralContainers: [{ name: "debugger", image: "busybox" }]
  },
  status: { phase: "Running", podIP: "10.0.0.7" }
}

describe("the pod record of a checkpoint image", () => {
  const record = recordPod(deploymentPod, "app")

  it("keeps labels, annotations that matter and the spec, without what the cluster generates", () => {
    expect(record.metadata).toEqual({
      name: "web-7d9f-abcde",
      namespace: "shop",
      labels: { app: "web", "pod-template-hash": "7d9f" },
      annotations: { "prometheus.io/scrape": "true" },
      controller: { kind: "ReplicaSet", name: "web-7d9f" }
    })
    const spec = record.spec as Record<string, unknown>
    for (const generated of ["nodeName", "priority", "ephemeralContainers"]) expect(spec).not.toHaveProperty(generated)
    expect(spec.volumes).toEqual([{ name: "data", emptyDir: {} }])
    expect(record.spec.containers[0]).toMatchObject({
      name: "app",
      volumeMounts: [{ name: "data", mountPath: "/data" }],
      imagePullPolicy: "Always"
    })
    expect(spec.imagePullSecrets).toEqual([{ name: "pull" }])
    expect(encodePodRecord(record)).not.toMatch(/status|10\.0\.0\.7|5c1e0a4e|resourceVersion/)
  })

  it("writes no literal env value (nor the last-applied configuration): names are kept, references stay", () => {
    const text = encodePodRecord(record)
    expect(text).not.toContain("hunter2")
    expect(text).not.toContain("strict")
    expect(text).not.toContain("in here")
    expect(record.omittedEnv).toEqual(["app/DB_PASSWORD", "sidecar/MODE"])
    expect(record.spec.containers[0]!.env).toEqual([
      { name: "DB_PASSWORD" },
      { name: "API_TOKEN", valueFrom: { secretKeyRef: { name: "api", key: "token" } } }
    ])
  })

  it("reads back what it wrote, and names what is wrong with anything else", () => {
    expect(parsePodRecord(encodePodRecord(record))).toEqual(Either.right(record))
    const notJson = parsePodRecord("{")
    expect(Either.isLeft(notJson) && notJson.left).toMatch(/io\.checkpointer\.pod annotation is not a pod record/)
    const noContainers = parsePodRecord(JSON.stringify({ ...record, spec: { containers: [] } }))
    expect(Either.isLeft(noContainers) && noContainers.left).toContain("containers")
    expect(Either.isLeft(parsePodRecord(JSON.stringify({ ...record, version: 2 })))).toBe(true)
  })
})

describe("the pod a restore creates", () => {
  const target = { image: "registry.example.com/checkpoints:0123456789abcdef", restoredFrom: "0123456789abcdef" }

  it("runs the checkpoint image in place of the checkpointed container's, if not present, where it is asked to", () => {
    const pod = restoredPod(recordPod(deploymentPod, "app"), {
      ...target,
      name: "web-restored",
      namespace: "quarantine",
      node: "node-b",
      env: { "app/DB_PASSWORD": "from-the-live-pod" }
    })
    expect(pod.metadata).toMatchObject({ name: "web-restored", namespace: "quarantine" })
    expect(pod.metadata!.ownerReferences).toBeUndefined()
    expect(pod.spec!.nodeName).toBe("node-b")
    expect(pod.spec!.containers[0]).toMatchObject({
      name: "app",
      image: target.image,
      imagePullPolicy: "IfNotPresent",
      env: [{ name: "DB_PASSWORD", value: "from-the-live-pod" }, expect.objectContaining({ name: "API_TOKEN" })]
    })
    expect(pod.spec!.containers[1]).toMatchObject({ name: "sidecar", image: "registry.example.com/proxy:2" })
    expect(pod.metadata!.annotations).toMatchObject({ "checkpointer.io/restored-image": target.image })
  })

  it("leaves the scheduler to choose the node unless one is given", () => {
    const pod = restoredPod(recordPod(deploymentPod, "app"), { ...target, name: "x", namespace: "shop" })
    expect(pod.spec!.nodeName).toBeUndefined()
  })

  it("drops the labels a Deployment's ReplicaSet, a StatefulSet or a Job selects its pods by", () => {
    const pod = restoredPod(recordPod(deploymentPod, "app"), { ...target, name: "x", namespace: "shop" })
    expect(pod.metadata!.labels).toEqual({ app: "web", [restoredFromLabel]: "0123456789abcdef" })
    const job = restoredPod(
      recordPod({
        ...deploymentPod,
        metadata: {
          ...deploymentPod.metadata,
          labels: { app: "batch", "batch.kubernetes.io/controller-uid": "u", "job-name": "nightly" },
          ownerReferences: [{ apiVersion: "batch/v1", kind: "Job", name: "nightly", uid: "u", controller: true }]
        }
      }, "app"),
      { ...target, name: "x", namespace: "shop" }
    )
    expect(job.metadata!.labels).toEqual({ app: "batch", [restoredFromLabel]: "0123456789abcdef" })
  })

  it("keeps no label of a pod whose controller selects by the pod's own labels (DaemonSet, bare ReplicaSet)", () => {
    for (const [kind, labels] of [["DaemonSet", { app: "agent" }], ["ReplicaSet", { app: "plain" }]] as const) {
      const pod = restoredPod(
        recordPod({
          ...deploymentPod,
          metadata: {
            ...deploymentPod.metadata,
            labels,
            ownerReferences: [{ apiVersion: "apps/v1", kind, name: "owner", uid: "u", controller: true }]
          }
        }, "app"),
        { ...target, name: "x", namespace: "shop" }
      )
      expect(pod.metadata!.labels, kind).toEqual({ [restoredFromLabel]: "0123456789abcdef" })
      expect(JSON.parse(pod.metadata!.annotations![originalLabelsAnnotation]!), kind).toEqual(labels)
    }
  })
})
