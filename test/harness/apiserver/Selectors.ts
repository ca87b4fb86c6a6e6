import { Effect } from "effect"
import type { Pod } from "./Resources.ts"
import type { ApiFailure } from "./Status.ts"
import { badRequest } from "./Status.ts"

type Requirement = (labels: Readonly<Record<string, string>>) => boolean

const splitTopLevel = (selector: string) => {
  const parts: Array<string> = []
  let depth = 0
  let current = ""
  for (const char of selector) {
    if (char === "(") depth++
    if (char === ")") depth--
    if (char === "," && depth === 0) {
      parts.push(current)
      current = ""
    } else {
      current += char
    }
  }
  parts.push(current)
  return parts.map((part) => part.trim()).filter((part) => part.length > 0)
}

/** Label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma-separated (AND). */
export const parseLabelSelector = (selector: string): Effect.Effect<Requirement, ApiFailure> =>
  Effect.forEach(splitTopLevel(selector), (part): Effect.Effect<Requirement, ApiFailure> => {
    const key = "([A-Za-z0-9][-A-Za-z0-9_./]*)"
    const value = "([-A-Za-z0-9_.]*)"
    let match = new RegExp(`^!\\s*${key}$`).exec(part)
    if (match) {
      const k = match[1]!
      return Effect.succeed((labels) => !(k in labels))
    }
    match = new RegExp(`^${key}\\s*(==|=|!=)\\s*${value}$`).exec(part)
    if (match) {
      const [, k, op, v] = match as unknown as [string, string, string, string]
      return Effect.succeed(op === "!=" ? (labels) => labels[k] !== v : (labels) => labels[k] === v)
    }
    match = new RegExp(`^${key}\\s+(in|notin)\\s*\\(([^)]*)\\)$`).exec(part)
    if (match) {
      const [, k, op, list] = match as unknown as [string, string, string, string]
      const values = list.split(",").map((v) => v.trim())
      return Effect.succeed(
        op === "in"
          ? (labels) => k in labels && values.includes(labels[k]!)
          : (labels) => !(k in labels) || !values.includes(labels[k]!)
      )
    }
    match = new RegExp(`^${key}$`).exec(part)
    if (match) {
      const k = match[1]!
      return Effect.succeed((labels) => k in labels)
    }
    return Effect.fail(badRequest(`unable to parse requirement: ${JSON.stringify(part)}`))
  }).pipe(Effect.map((requirements) => (labels) => requirements.every((matches) => matches(labels))))

const podFields: Record<string, (pod: Pod) => string> = {
  "metadata.name": (pod) => pod.metadata.name,
  "metadata.namespace": (pod) => pod.metadata.namespace,
  "spec.nodeName": (pod) => pod.spec.nodeName ?? "",
  "spec.restartPolicy": (pod) => String(pod.spec["restartPolicy"] ?? ""),
  "spec.schedulerName": (pod) => String(pod.spec["schedulerName"] ?? ""),
  "spec.serviceAccountName": (pod) => String(pod.spec["serviceAccountName"] ?? ""),
  "spec.hostNetwork": (pod) => String(pod.spec["hostNetwork"] ?? false),
  "status.phase": (pod) => pod.status.phase,
  "status.podIP": (pod) => pod.status.podIP ?? "",
  "status.nominatedNodeName": (pod) => String(pod.status["nominatedNodeName"] ?? "")
}

/** Pod field selectors: `field=value`, `field==value`, `field!=value`, comma-separated (AND). */
export const parsePodFieldSelector = (selector: string): Effect.Effect<(pod: Pod) => boolean, ApiFailure> =>
  Effect.forEach(splitTopLevel(selector), (part) => {
    const match = /^([A-Za-z.]+)\s*(==|=|!=)\s*(.*)$/.exec(part)
    if (!match) return Effect.fail(badRequest(`invalid selector: '${selector}'; can't understand '${part}'`))
    const [, field, op, value] = match as unknown as [string, string, string, string]
    const get = podFields[field]
    if (get === undefined) {
      return Effect.fail(badRequest(`field label not supported: ${field}`))
    }
    return Effect.succeed(op === "!=" ? (pod: Pod) => get(pod) !== value : (pod: Pod) => get(pod) === value)
  }).pipe(Effect.map((requirements) => (pod: Pod) => requirements.every((matches) => matches(pod))))

/** The pods a list or watch with these query parameters covers in `namespace` (undefined: all namespaces). */
export const podMatcher = (namespace: string | undefined, query: URLSearchParams) =>
  Effect.gen(function*() {
    const labels = yield* parseLabelSelector(query.get("labelSelector") ?? "")
    const fields = yield* parsePodFieldSelector(query.get("fieldSelector") ?? "")
    return (pod: Pod) =>
      (namespace === undefined || pod.metadata.namespace === namespace) && labels(pod.metadata.labels ?? {}) &&
      fields(pod)
  })
