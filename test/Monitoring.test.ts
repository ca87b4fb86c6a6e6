import { Metrics } from "@checkpointer/core"
import { Effect, Metric } from "effect"
import { execFileSync } from "node:child_process"
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { parse, stringify } from "yaml"
import { projectRoot } from "./harness/CheckpointerProcess.ts"

/**
 * k8s-manifests/monitoring: the alerting rules checked and unit-tested by promtool (Prometheus' own tool, from
 * Debian), the Grafana dashboard checked as a dashboard model, and every Checkpointer metric both use exists.
 */

const monitoring = `${projectRoot}/k8s-manifests/monitoring`
const rule = parse(readFileSync(`${monitoring}/prometheusrule.yaml`, "utf8")) as {
  readonly kind: string
  readonly spec: { readonly groups: ReadonlyArray<{ readonly rules: ReadonlyArray<{ readonly expr: string }> }> }
}
interface Panel {
  readonly id: number
  readonly type: string
  readonly title: string
  readonly datasource: { readonly uid: string }
  readonly gridPos: { readonly x: number; readonly y: number; readonly w: number; readonly h: number }
  readonly targets: ReadonlyArray<{ readonly refId: string; readonly expr: string }>
}
const dashboard = JSON.parse(readFileSync(`${monitoring}/grafana-dashboard.json`, "utf8")) as {
  readonly uid: string
  readonly title: string
  readonly schemaVersion: number
  readonly templating: { readonly list: ReadonlyArray<{ readonly name: string; readonly type: string }> }
  readonly panels: ReadonlyArray<Panel>
}

if (process.env.REQUIRE_E2E === "1") {
  expect(() => execFileSync("promtool", ["--version"], { stdio: "ignore" }), "scripts/setup.sh installs promtool")
    .not.toThrow()
}

const work = mkdtempSync(join(tmpdir(), "checkpointer-monitoring-"))
afterAll(() => rmSync(work, { recursive: true, force: true }))

const promtool = (...args: ReadonlyArray<string>) =>
  execFileSync("promtool", args, { cwd: work, encoding: "utf8", stdio: "pipe" })

/** A rules file in which every dashboard query is a recording rule, Grafana's variables given typical values. */
const dashboardQueriesAsRules = () => ({
  groups: [{
    name: "dashboard",
    rules: dashboard.panels.flatMap((panel) =>
      panel.targets.map((target) => ({
        record: `dashboard:panel_${panel.id}_${target.refId}`,
        expr: target.expr.replaceAll("$__rate_interval", "5m").replaceAll("$__range", "6h")
          .replaceAll("$pod", ".*")
      }))
    )
  }]
})

/** The metric names a PromQL expression reads (identifiers followed by a selector or a range, not functions). */
const metricsOf = (expr: string): ReadonlyArray<string> =>
  [...expr.replace(/"[^"]*"/g, "\"\"").matchAll(/\b([a-z_:][a-z0-9_:]*)\s*(?=[{[])/g)].map((match) => match[1]!)
    .filter((name) => !["by", "without", "on", "ignoring"].includes(name))

/** The names in Checkpointer's /metrics, each metric observed once (histograms with _bucket, _sum, _count). */
const exposed = Effect.runSync(Effect.gen(function*() {
  yield* Metric.update(Metrics.checkpointsTotal.pipe(Metric.tagged("outcome", "succeeded")), 1)
  yield* Metric.update(Metrics.phaseDuration.pipe(Metric.tagged("phase", "kubelet")), 1)
  yield* Metric.update(Metrics.pushedBytes.pipe(Metric.tagged("builder", "native")), 1024)
  const text = yield* Metrics.prometheusText
  return new Set([...text.matchAll(/^([a-z_:][a-z0-9_:]*)[{ ]/gm)].map((match) => match[1]!))
}))
/** Series that come from elsewhere: Prometheus' own and kube-state-metrics. */
const external = new Set(["up", "kube_daemonset_status_number_unavailable"])

describe("monitoring", () => {
  it("the alerting rules pass promtool's check and its unit tests (each alert fires or stays quiet as written)", () => {
    expect(rule.kind).toBe("PrometheusRule")
    writeFileSync(join(work, "checkpointer.rules.yaml"), stringify({ groups: rule.spec.groups }))
    copyFileSync(`${projectRoot}/test/alerts/checkpointer.promtool.yaml`, join(work, "alerts.test.yaml"))
    expect(promtool("check", "rules", "checkpointer.rules.yaml")).toContain("SUCCESS: 5 rules found")
    expect(promtool("test", "rules", "alerts.test.yaml")).toContain("SUCCESS")
  })

  it("promtool's unit tests fail when a rule changes (the check is not blind)", () => {
    const loosened = rule.spec.groups.map((group) => ({
      ...group,
      rules: group.rules.map((r) => ({ ...r, expr: r.expr.replace(") > 0.2", ") > 0.5") }))
    }))
    writeFileSync(join(work, "checkpointer.rules.yaml"), stringify({ groups: loosened }))
    copyFileSync(`${projectRoot}/test/alerts/checkpointer.promtool.yaml`, join(work, "alerts.test.yaml"))
    expect(() => promtool("test", "rules", "alerts.test.yaml")).toThrow()
  })

  it("the dashboard is an importable Grafana model whose queries are valid PromQL", () => {
    expect(dashboard).toMatchObject({ uid: "checkpointer", title: "Checkpointer" })
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36)
    const variables = new Map(dashboard.templating.list.map((variable) => [variable.name, variable.type]))
    expect(variables.get("datasource")).toBe("datasource")
    expect(new Set(dashboard.panels.map((panel) => panel.id)).size).toBe(dashboard.panels.length)
    const cells = new Set<string>()
    for (const panel of dashboard.panels) {
      expect(["timeseries", "stat", "bargauge", "table"], panel.title).toContain(panel.type)
      expect(panel.datasource.uid, panel.title).toBe("${datasource}")
      expect(panel.gridPos.x + panel.gridPos.w, panel.title).toBeLessThanOrEqual(24)
      for (let x = panel.gridPos.x; x < panel.gridPos.x + panel.gridPos.w; x++) {
        for (let y = panel.gridPos.y; y < panel.gridPos.y + panel.gridPos.h; y++) {
          expect(cells.has(`${x},${y}`), `${panel.title} overlaps another panel`).toBe(false)
          cells.add(`${x},${y}`)
        }
      }
      expect(panel.targets.length, panel.title).toBeGreaterThan(0)
      expect(new Set(panel.targets.map((target) => target.refId)).size).toBe(panel.targets.length)
    }
    writeFileSync(join(work, "dashboard.rules.yaml"), stringify(dashboardQueriesAsRules()))
    expect(promtool("check", "rules", "dashboard.rules.yaml")).toContain("SUCCESS")
  })

  it("every Checkpointer metric the rules and the dashboard read is one the server exposes", () => {
    const read = [
      ...rule.spec.groups.flatMap((group) => group.rules.map((r) => r.expr)),
      ...dashboard.panels.flatMap((panel) => panel.targets.map((target) => target.expr))
    ].flatMap(metricsOf).filter((name) => !external.has(name))
    expect(read).toContain("checkpoint_phase_duration_seconds_bucket")
    expect(new Set(read).size).toBeGreaterThanOrEqual(5)
    expect([...new Set(read)].filter((name) => !exposed.has(name))).toEqual([])
  })
})
