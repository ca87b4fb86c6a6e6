import type { ProfileResult, SizeResult } from "./Bench.ts"
import type { ConcurrencyResult, CounterResult, Round } from "./EndToEnd.ts"
import type { MachineFacts } from "./Machine.ts"
import type { PipelineId } from "./Pipelines.ts"
import { pipelineTitles } from "./Pipelines.ts"
import type { CpuBreakdown } from "./Profile.ts"
import type { BenchSettings } from "./Settings.ts"
import type { Sample, Summary } from "./Stats.ts"
import { formatMiB, formatRange, formatRatio, formatSeconds, maxOf, MiB, phaseSummary, summarize } from "./Stats.ts"
import { comparedDuration, overlapVerdict, shareWord, verdictThresholds } from "./Verdicts.ts"

export interface BenchReport {
  readonly command: string
  readonly startedAt: Date
  readonly durationSeconds: number
  readonly settings: BenchSettings
  readonly machine: MachineFacts
  readonly code: { readonly commit: string; readonly changedFiles: number }
  /** sha256 prefixes of the server bundle at each server start. */
  readonly bundles: ReadonlyArray<string>
  readonly loads: ReadonlyArray<number>
  readonly sizes: ReadonlyArray<SizeResult>
  readonly counter?: CounterResult
  readonly concurrency?: ConcurrencyResult
}

/** The performance issue's targets (the buildah speed-up and the encryption cost are earlier rounds'). */
export const targets = {
  maxRawRatio: 1.05,
  minBuildahSpeedup: 3.5,
  maxIdleRssMiB: 90,
  maxPeakRssMiB: 110,
  rssSizeMiB: 1024,
  maxFixedCostSeconds: 0.025,
  minConcurrentShare: 0.95,
  maxEncryptionRatio: 1.15,
  encryptionSizesMiB: [256, 1024]
} as const

const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) =>
  [
    `| ${header.join(" | ")} |`,
    `|${header.map((_, i) => (i === 0 ? "---" : "---:")).join("|")}|`,
    ...rows.map((row) => `| ${row.join(" | ")} |`)
  ].join("\n")

const times = (samples: ReadonlyArray<Sample>) => summarize(samples.map((sample) => sample.seconds))

const phaseNames = (samples: ReadonlyArray<Sample>) => [...new Set(samples.flatMap((s) => Object.keys(s.phases)))]

const phasesText = (samples: ReadonlyArray<Sample>, skip: ReadonlyArray<string> = []) =>
  phaseNames(samples)
    .filter((name) => !skip.includes(name))
    .map((name) => `${name} ${formatSeconds(phaseSummary(samples, name)!.median)}`)
    .join(" · ")

/** The medians that the targets and ratios are about, for one size. */
export const keyFigures = (size: SizeResult) => {
  const get = (id: PipelineId) => size.samples.get(id) ?? []
  const median = (id: PipelineId) => get(id).length === 0 ? Number.NaN : times(get(id)).median
  return {
    raw: median("raw"),
    library: median("library"),
    libraryEncrypted: median("libraryEncrypted"),
    push: median("push"),
    httpTotal: median("http"),
    httpBuildPush: phaseSummary(get("http"), "build/push")?.median ?? Number.NaN,
    httpKubelet: phaseSummary(get("http"), "kubelet")?.median ?? Number.NaN,
    buildah: median("buildah"),
    podman: median("podman"),
    podmanPush: phaseSummary(get("podman"), "push")?.median ?? Number.NaN,
    libraryPeakRss: maxOf(get("library").map((sample) => sample.peakRss))
  }
}

const shortMediaType = (mediaType: string) =>
  mediaType.replace(/^application\/vnd\.(oci\.image\.layer\.v1\.|docker\.image\.rootfs\.diff\.)/, "")

/** Largest layer that reached the registry, with its media type (`tar`, `tar+gzip`, ...). */
const pushedText = (samples: ReadonlyArray<Sample>) => {
  const bytes = maxOf(samples.map((sample) => sample.pushedBytes))
  const types = [
    ...new Set(samples.flatMap((sample) => sample.pushedMediaType === undefined ? [] : [sample.pushedMediaType]))
  ]
  if (bytes === undefined) return "–"
  return `${formatMiB(bytes)}${types.length === 0 ? "" : ` ${types.map(shortMediaType).join(", ")}`}`
}

/** Median CPU seconds of the pushing processes and of the registry during a run. */
const cpuText = (samples: ReadonlyArray<Sample>) => {
  const measured = samples.flatMap((sample) => sample.cpu === undefined ? [] : [sample.cpu])
  if (measured.length === 0) return "–"
  const client = summarize(measured.map((cpu) => cpu.client)).median
  const registry = summarize(measured.map((cpu) => cpu.registry)).median
  return `${client.toFixed(2)} · ${registry.toFixed(2)}`
}

/** This process's peak during a build, and (+) how far it rose above its RSS when the build began. */
const libraryPeak = (samples: ReadonlyArray<Sample>) => {
  const peak = maxOf(samples.map((sample) => sample.peakRss))
  const growth = maxOf(
    samples.map((sample) =>
      sample.peakRss === undefined || sample.startRss === undefined ? undefined : sample.peakRss - sample.startRss
    )
  )
  return peak === undefined ? "–" : `${formatMiB(peak)} (+${formatMiB(growth)})`
}

const sizeSection = (size: SizeResult) => {
  const k = keyFigures(size)
  const get = (id: PipelineId) => size.samples.get(id) ?? []
  const mibPerSecond = (value: number) => (size.archive.bytes / MiB / value).toFixed(0)
  const row = (
    name: string,
    summary: Summary,
    samples: ReadonlyArray<Sample>,
    options: {
      readonly skip?: ReadonlyArray<string>
      readonly peak?: string
      readonly pushed?: boolean
      readonly cpu?: boolean
    }
  ) => [
    name,
    formatSeconds(summary.median),
    formatRange(summary),
    formatRatio(summary.median / k.raw),
    mibPerSecond(summary.median),
    phasesText(samples, options.skip) || "–",
    options.pushed === false ? "–" : pushedText(samples),
    options.cpu === false ? "–" : cpuText(samples),
    options.peak ?? "–"
  ]
  const http = get("http")
  const podman = get("podman")
  const measured = (id: PipelineId, options: Parameters<typeof row>[3] = {}) =>
    get(id).length === 0 ? [] : [row(pipelineTitles[id], times(get(id)), get(id), options)]
  const archiveRows = [
    ...measured("raw"),
    ...measured("rawHashed"),
    ...measured("pass", { pushed: false }),
    ...measured("library", { peak: libraryPeak(get("library")) }),
    ...measured("libraryEncrypted", { peak: libraryPeak(get("libraryEncrypted")) }),
    ...measured("push"),
    row(
      "native builder, HTTP API: build/push phase (server log)",
      phaseSummary(http, "build/push") ?? times([]),
      http,
      { skip: ["build/push", "kubelet", "other"], peak: formatMiB(size.serverPeakRss) }
    ),
    ...measured("buildah"),
    row(
      "podman push of its checkpoint image (part of the last row below)",
      phaseSummary(podman, "push") ?? times([]),
      podman,
      { skip: ["push", "checkpoint --create-image"], cpu: false }
    )
  ]
  const endToEndRows = [
    [
      "native builder, HTTP API: POST round trip",
      formatSeconds(k.httpTotal),
      formatRange(times(http)),
      formatRatio(k.httpTotal / k.raw),
      formatRatio(1),
      phasesText(http),
      formatMiB(size.serverPeakRss)
    ],
    [
      pipelineTitles.podman,
      formatSeconds(k.podman),
      formatRange(times(podman)),
      formatRatio(k.podman / k.raw),
      formatRatio(k.podman / k.httpTotal),
      phasesText(podman),
      "–"
    ],
    [
      "kubelet checkpoint + buildah recipe (sum of the two medians)",
      formatSeconds(k.httpKubelet + k.buildah),
      "–",
      formatRatio((k.httpKubelet + k.buildah) / k.raw),
      formatRatio((k.httpKubelet + k.buildah) / k.httpTotal),
      `kubelet ${formatSeconds(k.httpKubelet)} · recipe ${formatSeconds(k.buildah)}`,
      "–"
    ]
  ]
  return [
    `### ${size.mib} MiB of memory: archive of ${formatMiB(size.archive.bytes)} MiB (${size.archive.bytes} bytes)`,
    "",
    "From the archive on disk to an image in the registry (same archive file for all but the HTTP row, whose",
    "archive is a fresh kubelet checkpoint of the same container):",
    "",
    table(
      [
        "pipeline",
        "median s",
        "min–max s",
        "× raw",
        "MiB/s",
        "phases (median s)",
        "pushed layer MiB",
        "CPU s: pusher · registry",
        "peak RSS MiB"
      ],
      archiveRows
    ),
    "",
    "From the running container to an image in the registry (CRIU checkpoint included):",
    "",
    table(
      ["pipeline", "median s", "min–max s", "× raw", "× native HTTP", "phases (median s)", "peak RSS MiB"],
      endToEndRows
    ),
    "",
    `Checkpointer server process: ${formatMiB(size.serverIdleRss)} MiB resident when idle, peak (VmHWM over its ` +
    `whole life: start, warm-up and every run of this size) ${formatMiB(size.serverPeakRss)} MiB. Library row: peak ` +
    "of this benchmark process during a build (VmHWM reset before each run) and, in parentheses, how far it rose " +
    "above the RSS it had when the build began; the process (harness, simulated cluster, tsx) held " +
    `${formatMiB(size.benchBaselineRss)} MiB before the first build.`,
    ""
  ].join("\n")
}

interface TargetRow {
  readonly target: string
  readonly size: string
  /** Ratio of the medians (what the verdict is about). */
  readonly measured: string
  /** The same ratio within each round (runs of one round ran back to back): median and min–max. */
  readonly paired: string
  readonly verdict: string
}

const verdict = (met: boolean, missedBy: string) => met ? "met" : `missed by ${missedBy}`

/** Per-round series of a pipeline's time (or one of its phases); index i is round i. */
const series = (size: SizeResult, id: PipelineId, phase?: string) =>
  (size.samples.get(id) ?? []).map((sample) =>
    phase === undefined ? sample.seconds : sample.phases[phase] ?? Number.NaN
  )

const pairedText = (numerator: ReadonlyArray<number>, denominator: ReadonlyArray<number>) => {
  const ratios = numerator.flatMap((value, i) => denominator[i] === undefined ? [] : [value / denominator[i]!])
  if (ratios.length === 0) return "–"
  const summary = summarize(ratios)
  return `${formatRatio(summary.median)} (${summary.min.toFixed(2)}–${summary.max.toFixed(2)})`
}

export const targetRows = (sizes: ReadonlyArray<SizeResult>): ReadonlyArray<TargetRow> =>
  sizes.flatMap((size) => {
    const k = keyFigures(size)
    const label = `${size.mib} MiB`
    const raw = series(size, "raw")
    const library = series(size, "library")
    const httpBuildPush = series(size, "http", "build/push")
    const buildah = series(size, "buildah")
    const push = series(size, "push")
    const ratio = (target: string, value: number, values: ReadonlyArray<number>): TargetRow => ({
      target,
      size: label,
      measured: formatRatio(value / k.raw),
      paired: pairedText(values, raw),
      verdict: verdict(
        value / k.raw <= targets.maxRawRatio,
        `${((value / k.raw / targets.maxRawRatio - 1) * 100).toFixed(0)}%`
      )
    })
    const speedup = (target: string, native: number, values: ReadonlyArray<number>): TargetRow => ({
      target,
      size: label,
      measured: formatRatio(k.buildah / native),
      paired: pairedText(buildah, values),
      verdict: verdict(
        k.buildah / native >= targets.minBuildahSpeedup,
        `${((1 - k.buildah / native / targets.minBuildahSpeedup) * 100).toFixed(0)}%`
      )
    })
    const rows: Array<TargetRow> = [
      ratio(`native (library) ≤ ${targets.maxRawRatio}× raw upload`, k.library, library),
      ratio(`native (HTTP, build/push) ≤ ${targets.maxRawRatio}× raw upload`, k.httpBuildPush, httpBuildPush),
      speedup(`buildah recipe ≥ ${targets.minBuildahSpeedup}× native (library)`, k.library, library),
      speedup(
        `buildah recipe ≥ ${targets.minBuildahSpeedup}× native (HTTP, build/push)`,
        k.httpBuildPush,
        httpBuildPush
      ),
      ...(push.length === 0 ? [] : [
        ratio(`checkpointer-push ≤ ${targets.maxRawRatio}× raw upload`, k.push, push),
        speedup(`buildah recipe ≥ ${targets.minBuildahSpeedup}× checkpointer-push`, k.push, push)
      ])
    ]
    const encrypted = series(size, "libraryEncrypted")
    if ((targets.encryptionSizesMiB as ReadonlyArray<number>).includes(size.mib) && encrypted.length > 0) {
      const cost = k.libraryEncrypted / k.library
      rows.push({
        target: `native (library) encrypted ≤ ${targets.maxEncryptionRatio}× unencrypted`,
        size: label,
        measured: formatRatio(cost),
        paired: pairedText(encrypted, library),
        verdict: verdict(
          cost <= targets.maxEncryptionRatio,
          `${((cost / targets.maxEncryptionRatio - 1) * 100).toFixed(0)}%`
        )
      })
    }
    if (size.mib === targets.rssSizeMiB) {
      rows.push(
        footprintRow(
          `server idle RSS ≤ ${targets.maxIdleRssMiB} MiB`,
          label,
          size.serverIdleRss,
          targets.maxIdleRssMiB
        ),
        footprintRow(`server peak RSS ≤ ${targets.maxPeakRssMiB} MiB`, label, size.serverPeakRss, targets.maxPeakRssMiB)
      )
    }
    return rows
  })

const footprintRow = (target: string, size: string, bytes: number, maxMiB: number): TargetRow => ({
  target,
  size,
  measured: `${formatMiB(bytes)} MiB`,
  paired: "–",
  verdict: verdict(bytes / MiB <= maxMiB, `${(bytes / MiB - maxMiB).toFixed(0)} MiB`)
})

/** The targets measured outside the per-size runs: the fixed cost per image and the concurrent checkpoints. */
export const endToEndTargetRows = (
  report: Pick<BenchReport, "counter" | "concurrency">
): ReadonlyArray<TargetRow> => {
  const rows: Array<TargetRow> = []
  const counterBuildPush = report.counter === undefined ? undefined : phaseSummary(report.counter.samples, "build/push")
  if (counterBuildPush !== undefined) {
    const archive = formatMiB(maxOf(report.counter!.samples.map((sample) => sample.pushedBytes)))
    const fixedCostRow = (how: string, summary: Summary): TargetRow => ({
      target: `fixed cost per image ≤ ${targets.maxFixedCostSeconds * 1000} ms (${how})`,
      size: `${archive} MiB`,
      measured: `${(summary.median * 1000).toFixed(0)} ms`,
      paired: `${(summary.min * 1000).toFixed(0)}–${(summary.max * 1000).toFixed(0)} ms`,
      verdict: verdict(
        summary.median <= targets.maxFixedCostSeconds,
        `${((summary.median - targets.maxFixedCostSeconds) * 1000).toFixed(0)} ms`
      )
    })
    rows.push(fixedCostRow("build/push of the counter", counterBuildPush))
    if (report.counter!.library.length > 0) {
      rows.push(fixedCostRow("the counter's archive through the library", summarize(report.counter!.library)))
    }
  }
  const c = report.concurrency
  if (c !== undefined) {
    const concurrentRow = (what: string, rounds: ReadonlyArray<Round>): TargetRow => {
      const share = medianThroughput(rounds) / medianThroughput(c.raw)
      return {
        target: `${c.containers} concurrent ${what} ≥ ${targets.minConcurrentShare}× the throughput of ` +
          `${c.containers} parallel raw uploads`,
        size: `${c.containers} × ${c.mibEach} MiB`,
        measured: formatRatio(share),
        paired: "–",
        verdict: verdict(
          share >= targets.minConcurrentShare,
          `${((1 - share / targets.minConcurrentShare) * 100).toFixed(0)}%`
        )
      }
    }
    rows.push(
      concurrentRow("native builds (library)", c.library),
      concurrentRow("checkpoints through the HTTP API (CRIU included)", c.http)
    )
  }
  return rows
}

const medianThroughput = (rounds: ReadonlyArray<Round>) =>
  summarize(rounds.map((round) => round.bytes / MiB / round.seconds)).median

/** The HTTP round against the same checkpoints done by hand: what the server adds to CRIU and the upload. */
export const byHandComparison = (c: ConcurrencyResult): ReadonlyArray<string> =>
  c.byHand.length === 0 ? [] : [
    `Through the HTTP API the ${c.containers} checkpoints ran at ` +
    `${formatRatio(medianThroughput(c.http) / medianThroughput(c.byHand))} the throughput of the same work done by ` +
    "hand (each container checkpointed through CRI-O as the kubelet asks, the archive's sha256 taken, then one curl " +
    "upload; \"per checkpoint\" is the checkpoint and the upload). Both include CRIU dumping " +
    `${formatMiB(c.archiveBytes)} MiB of memory; the raw uploads and the library builds start from archives made ` +
    "beforehand.",
    ""
  ]

const roundRow = (
  name: string,
  rounds: ReadonlyArray<Round>,
  rawThroughput: number,
  [first, second]: readonly [string, string] = ["kubelet", "build/push"]
) => {
  const wall = summarize(rounds.map((round) => round.seconds))
  const throughput = medianThroughput(rounds)
  return [
    name,
    formatSeconds(wall.median),
    formatRange(wall),
    throughput.toFixed(0),
    formatRatio(throughput / rawThroughput),
    rounds[0]?.kubelet.length === 0
      ? "–"
      : `${first} ${formatSeconds(summarize(rounds.flatMap((r) => r.kubelet)).median)} · ${second} ${
        formatSeconds(summarize(rounds.flatMap((r) => r.buildPush)).median)
      }`,
    roundPeak(rounds)
  ]
}

const roundPeak = (rounds: ReadonlyArray<Round>) => {
  const peak = maxOf(rounds.map((round) => round.peakRss))
  const growth = maxOf(
    rounds.map((round) =>
      round.peakRss === undefined || round.startRss === undefined ? undefined : round.peakRss - round.startRss
    )
  )
  if (peak === undefined) return "–"
  return growth === undefined ? formatMiB(peak) : `${formatMiB(peak)} (+${formatMiB(growth)})`
}

/** Where the library's push of the counter's archive spent its CPU, against its wall time. */
const libraryCpuSentence = ({ library, libraryCpu }: CounterResult) =>
  library.length === 0 ?
    "" :
    ` Pushed by the library, the same archive took ${formatSeconds(summarize(library).median)} s ` +
    `of wall time; this process computed for ${formatSeconds(summarize(libraryCpu.own).median)} s of it and the ` +
    `registry for ${formatSeconds(libraryCpu.registry)} s (the two may overlap).`

const endToEndSection = (report: BenchReport) => {
  const lines: Array<string> = ["## End to end", ""]
  if (report.counter !== undefined) {
    const samples = report.counter.samples
    const phaseRow = (name: string, summary: Summary | undefined) =>
      summary === undefined ? [name, "–", "–"] : [name, formatSeconds(summary.median), formatRange(summary)]
    lines.push(
      "### Sync checkpoint of a small counter container through the HTTP API",
      "",
      table(["", "median s", "min–max s"], [
        phaseRow("POST /checkpoint round trip", times(samples)),
        phaseRow("kubelet (CRIU checkpoint via the kubelet endpoint)", phaseSummary(samples, "kubelet")),
        phaseRow("build/push (native builder, server log span)", phaseSummary(samples, "build/push")),
        phaseRow("other (HTTP, orchestration, result store, archive removal)", phaseSummary(samples, "other"))
      ]),
      "",
      `Archive (layer) size: ${formatMiB(maxOf(samples.map((sample) => sample.pushedBytes)))} MiB.`,
      ""
    )
    const { library, libraryCpu, raw, registry } = report.counter
    const millis = (value: number) => `${(value * 1000).toFixed(1)} ms`
    if (library.length > 0 && raw.length > 0) {
      lines.push(
        "The same container's archive, checkpointed once more, pushed back to back (registry emptied before each):",
        "",
        table(["", "median s", "min–max s"], [
          [
            "native builder, library (this process)",
            formatSeconds(summarize(library).median),
            formatRange(summarize(library))
          ],
          [
            "raw upload (curl, HTTP/1.1: POST, one PUT with the digest; a process, a TLS connection each; " +
            "no config, manifest)",
            formatSeconds(summarize(raw).median),
            formatRange(summarize(raw))
          ]
        ]),
        "",
        `CPU per library push: this process ${millis(summarize(libraryCpu.own).median)} (median; all its threads, ` +
          `process.cpuUsage), the registry ${millis(libraryCpu.registry)} (mean of the ${library.length} pushes, ` +
          "from /proc in 10 ms ticks).",
        ""
      )
    }
    lines.push(
      `The registry alone (${registry.requests} requests of each kind, one after the other over one kept-alive ` +
        `connection, medians): \`GET /v2/\` without credentials (401) ${millis(registry.unauthenticated)}, with them ` +
        `${millis(registry.authenticated)}; opening an upload (\`POST .../blobs/uploads/\`) ` +
        `${millis(registry.uploadStart)}. A native push waits for four answers in turn (the uploads' opening, the ` +
        "layer's PATCH, the closing PUTs, the manifest's PUT), three when the layer ends within 1 MiB (it goes up in " +
        "its closing PUT); the raw upload for two.",
      ""
    )
  }
  const c = report.concurrency
  if (c !== undefined) {
    const rawThroughput = medianThroughput(c.raw)
    const largest = report.sizes[report.sizes.length - 1]
    const single = largest === undefined ? undefined : keyFigures(largest).raw
    lines.push(
      `### ${c.containers} concurrent checkpoints of containers holding ${c.mibEach} MiB each`,
      "",
      `${c.containers} archives, ${formatMiB(c.archiveBytes)} MiB in all. Wall time from the first request to the ` +
        "last answer.",
      "",
      table(
        ["pipeline", "median s", "min–max s", "MiB/s", "× raw MiB/s", "per checkpoint (median s)", "peak RSS MiB"],
        [
          roundRow(`raw upload, ${c.containers} curl in parallel`, c.raw, rawThroughput),
          roundRow(`native builder, library, ${c.containers} builds in parallel`, c.library, rawThroughput),
          roundRow(
            `native builder, HTTP API, ${c.containers} sync POSTs in parallel (CRIU included)`,
            c.http,
            rawThroughput
          ),
          roundRow(
            `by hand, ${c.containers} in parallel: CRI-O checkpoint, sha256sum, raw upload (CRIU included)`,
            c.byHand,
            rawThroughput,
            ["checkpoint", "upload"]
          )
        ]
      ),
      "",
      ...byHandComparison(c),
      `Server: ${formatMiB(c.serverIdleRss)} MiB resident when idle, peak ${formatMiB(c.serverPeakRss)} MiB.` +
        (single === undefined || largest === undefined
          ? ""
          : ` For comparison, one raw upload of the ${largest.mib} MiB archive alone ran at ` +
            `${(largest.archive.bytes / MiB / single).toFixed(0)} MiB/s.`),
      ""
    )
  }
  return lines.join("\n")
}

const jsCategories = (category: string) =>
  ["Effect", "undici", "tar parser", "Checkpointer", "Node.js internals", "bundle JS", "other JS"].some((word) =>
    category.includes(word)
  )

/** Self time in the categories that `test` picks, µs. */
const categoryMicros = (breakdown: CpuBreakdown, test: (category: string) => boolean) =>
  [...breakdown.byCategory.entries()]
    .filter(([category]) => test(category))
    .reduce((sum, [, micros]) => sum + micros, 0)

const isSha256 = (category: string) => category.startsWith("sha256")

const profileShares = (breakdown: CpuBreakdown) => {
  const pick = (test: (category: string) => boolean) =>
    categoryMicros(breakdown, test) / Math.max(1, breakdown.windowMicros) * 100
  return {
    idle: pick((c) => c.startsWith("idle")),
    sha256: pick(isSha256),
    gc: pick((c) => c.startsWith("garbage")),
    js: pick(jsCategories),
    native: pick((c) => c.startsWith("native code") || c.startsWith("other native") || c.startsWith("file reads"))
  }
}

const overlap = (cpu: { readonly client: number; readonly registry: number }, wall: number) =>
  (cpu.client + cpu.registry) / wall

const signed = (value: number) => `${value < 0 ? "−" : "+"} ${formatSeconds(Math.abs(value))}`

const overlapsText = (curl: number, library: number) =>
  overlapVerdict(curl) === overlapVerdict(library)
    ? `curl and the library build both ${overlapVerdict(curl)}`
    : `curl ${overlapVerdict(curl)}, the library build ${overlapVerdict(library)}`

/** What the profile says of the library build's CPU beyond curl's. */
const extraCpuText = (extraSeconds: number, profile: ProfileResult | undefined) => {
  if (!(extraSeconds > 0)) return "The library build used no more CPU than curl."
  const lead = `The library build used ${formatSeconds(extraSeconds)} s more CPU than curl`
  if (profile === undefined || profile.library.windows === 0) return `${lead}.`
  const sha256 = categoryMicros(profile.library, isSha256) / 1e6 / profile.library.windows
  return `${lead}; its profile has ${formatSeconds(sha256)} s of sha256 per build, which curl did not compute: ` +
    `${shareWord(sha256, extraSeconds)} the difference.`
}

/** The numbers behind the targets for the largest size, in words. */
const analysisSection = (report: BenchReport) => {
  const size = report.sizes[report.sizes.length - 1]
  if (size === undefined) return ""
  const k = keyFigures(size)
  const median = (id: PipelineId) => times(size.samples.get(id) ?? []).median
  const pass = median("pass")
  const rawHashed = median("rawHashed")
  const overlapped = Math.max(pass, k.raw)
  const loads = summarize(report.loads)
  const lines = [
    `### Reading the targets (${size.mib} MiB archive)`,
    "",
    "- The raw upload sends the archive once with its digest known beforehand (sha256sum took " +
    `${formatSeconds(size.archive.sha256Seconds)} s, not counted): ${formatSeconds(k.raw)} s. Computing the digest ` +
    `first and then uploading, as a monolithic PUT needs, takes ${formatSeconds(rawHashed)} s ` +
    `(${formatRatio(rawHashed / k.raw)} raw).`,
    "- The native builder reads the archive once and hashes it while it uploads. Its pass alone (read, sha256, tar " +
    `inspection, no network) takes ${formatSeconds(pass)} s; the library build takes ${formatSeconds(k.library)} s = ` +
    `raw ${signed(k.library - k.raw)} s, the HTTP build/push phase ${formatSeconds(k.httpBuildPush)} s = raw ` +
    `${signed(k.httpBuildPush - k.raw)} s. Fully overlapped, a build would take the longer of the pass and the raw ` +
    `upload, ${formatSeconds(overlapped)} s; the library build is ${comparedDuration(k.library, overlapped)} that.`,
    "- The buildah recipe extracts the archive into a working container (add), writes it back as a new layer " +
    `(commit) and gzips it on push: ${formatSeconds(k.buildah)} s, ${comparedDuration(k.buildah, k.library)} the ` +
    `library build and ${comparedDuration(k.buildah, k.httpBuildPush)} the HTTP build/push.`
  ]
  const cpu = (id: PipelineId) => {
    const measured = (size.samples.get(id) ?? []).flatMap((sample) => sample.cpu === undefined ? [] : [sample.cpu])
    return {
      client: summarize(measured.map((c) => c.client)).median,
      registry: summarize(measured.map((c) => c.registry)).median
    }
  }
  const [rawCpu, libraryCpu, httpCpu] = [cpu("raw"), cpu("library"), cpu("http")]
  const [rawOverlap, libraryOverlap] = [overlap(rawCpu, k.raw), overlap(libraryCpu, k.library)]
  lines.push(
    `- CPU per run: curl ${formatSeconds(rawCpu.client)} s, the library build ` +
      `${formatSeconds(libraryCpu.client)} s (${formatRatio(libraryCpu.client / rawCpu.client)} curl's), the server ` +
      `${formatSeconds(httpCpu.client)} s for a whole request; docker-registry ${formatSeconds(rawCpu.registry)} s, ` +
      `${formatSeconds(libraryCpu.registry)} s and ${formatSeconds(httpCpu.registry)} s. ` +
      extraCpuText(libraryCpu.client - rawCpu.client, size.profile),
    `- Overlap, (pusher CPU + registry CPU) / wall time: curl ${rawOverlap.toFixed(2)}, library ` +
      `${libraryOverlap.toFixed(2)}. At or below ${verdictThresholds.maxTurnTakingOverlap} the two sides take turns ` +
      `instead of working at the same time: ${overlapsText(rawOverlap, libraryOverlap)}.`
  )
  if (size.profile !== undefined) {
    const library = profileShares(size.profile.library)
    const server = profileShares(size.profile.server)
    const describe = (shares: ReturnType<typeof profileShares>) =>
      `idle ${shares.idle.toFixed(0)}%, sha256 ${shares.sha256.toFixed(0)}%, JS (Effect streams, undici, tar, Node ` +
      `streams) ${shares.js.toFixed(0)}%, native code outside JS (TLS, syscalls) ${shares.native.toFixed(0)}%, GC ` +
      `${shares.gc.toFixed(0)}%`
    lines.push(
      `- CPU profile of the builder's main thread during builds (section at the end): library ${describe(library)}; ` +
        `server ${describe(server)}. Idle is time spent waiting for the socket to drain, i.e. for the registry.`
    )
  }
  const smallest = report.sizes[0]
  const counterBuildPush = report.counter === undefined ? undefined : phaseSummary(report.counter.samples, "build/push")
  if (smallest !== undefined && smallest !== size && counterBuildPush !== undefined) {
    const small = keyFigures(smallest)
    const fixedShare = counterBuildPush.median / small.httpBuildPush
    const counterArchive = formatMiB(maxOf(report.counter!.samples.map((sample) => sample.pushedBytes)))
    lines.push(
      `- Fixed cost per image: the build/push of the counter's ${counterArchive} MiB archive takes ` +
        `${formatSeconds(counterBuildPush.median)} s (the uploads' opening, the layer and config blob, the ` +
        "manifest; the session of the run before is reused: no ping, no new login), " +
        `${(fixedShare * 100).toFixed(0)}% of the HTTP build/push at ${smallest.mib} MiB ` +
        `(${formatSeconds(small.httpBuildPush)} s against ${formatSeconds(small.raw)} s for the raw layer upload): ` +
        (fixedShare >= verdictThresholds.fixedCostWeighs
          ? "it weighs on that size's ratio."
          : "too little to move that size's ratio.") +
        libraryCpuSentence(report.counter!)
    )
  }
  const cpus = report.machine.cpus
  lines.push(
    `- ${cpus} CPUs: the registry (TLS, sha256, file writes) and the client share them, with each other ` +
      `and with other work (one-minute load average during the runs: median ${loads.median.toFixed(1)}, max ` +
      `${loads.max.toFixed(1)}). ` +
      (loads.median >= cpus
        ? "The median load reached the number of CPUs: CPU time a client spends beyond curl's (hashing, JS " +
          "streaming) turned into wall time."
        : "The median load stayed below the number of CPUs.") +
      " The per-round ratios in the targets table show how far single rounds spread.",
    ""
  )
  return lines.join("\n")
}

const perRun = (breakdown: CpuBreakdown, micros: number | undefined) =>
  micros === undefined || breakdown.windows === 0 ? "–" : formatSeconds(micros / 1e6 / breakdown.windows)

const share = (breakdown: CpuBreakdown, micros: number | undefined) =>
  micros === undefined || breakdown.windowMicros === 0
    ? "–"
    : `${((micros / breakdown.windowMicros) * 100).toFixed(1)}%`

const topFunctions = (breakdown: CpuBreakdown, count: number) =>
  [...breakdown.byFunction.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .map(([name, micros]) => [`\`${name}\``, perRun(breakdown, micros), share(breakdown, micros)])

const profileSection = (mib: number, profile: ProfileResult) => {
  const { library, server } = profile
  const categories = [...new Set([...library.byCategory.keys(), ...server.byCategory.keys()])].sort((a, b) =>
    (library.byCategory.get(b) ?? 0) - (library.byCategory.get(a) ?? 0)
  )
  return [
    `## Where the native builder's time goes (CPU profiles, ${mib} MiB archive)`,
    "",
    `${profile.runs} extra builds after the measured runs (not counted above): through the library under this`,
    "process's inspector (whole builds), and through a second server started with `node --cpu-prof` (samples",
    "inside the build/push phases only). Self time per build and share of the build's wall time; the main thread is",
    "the only thread that runs JS, hashing and TLS.",
    "",
    table(
      ["category", "library s/build", "library %", "server s/build", "server %"],
      categories.map((category) => [
        category,
        perRun(library, library.byCategory.get(category)),
        share(library, library.byCategory.get(category)),
        perRun(server, server.byCategory.get(category)),
        share(server, server.byCategory.get(category))
      ])
    ),
    "",
    "Heaviest functions (self time), library builds:",
    "",
    table(["function", "s/build", "%"], topFunctions(library, 12)),
    "",
    "Heaviest functions (self time), server (minified bundle):",
    "",
    table(["function", "s/build", "%"], topFunctions(server, 8)),
    ""
  ].join("\n")
}

const methodSection = (report: BenchReport) => {
  const pipelines = report.sizes[0]?.pipelines ?? []
  return [
    "## How it was measured",
    "",
    "- Archives: a busybox container fills its /dev/shm (tmpfs, charged to the container's memory) with random bytes;",
    "  `podman container checkpoint --leave-running --compress=none --export` writes the archive uncompressed, as",
    "  CRI-O does for the kubelet. Podman stores the container's /dev/shm as `devshm-checkpoint.tar` inside the",
    "  archive (next to the CRIU images); its size is checked.",
    "- Registry: one real `docker-registry` (CNCF distribution) on loopback with TLS (a generated CA, trusted by every",
    "  client) and htpasswd Basic auth, from the test harness. Its storage is deleted before every run (warm-ups",
    "  included), so each push lands in an empty registry; the registry and the Checkpointer server stay up",
    "  between runs, warm as in production.",
    "- Node: the test harness's real CRI-O node with the simulated kubelet's pod bookkeeping, which runs in this",
    "  process (a `crictl ps` every 300 ms, status, log and memory reads for each pod: about 0.3 CPU of this",
    "  process's main thread with 8 pods). It is paused during every measured run and warm-up, so that the library",
    "  rows time the library, not the harness; checkpoints through the kubelet endpoint work as before.",
    `- ${report.settings.warmups} warm-up run(s), then ${report.settings.runs} measured runs per pipeline and size.`,
    "  Runs are interleaved round by round (each round starts with a different pipeline), so load from other work",
    "  on the machine falls on all pipelines alike. Medians and min–max; \"× raw\" divides a median by the raw",
    "  upload's.",
    "- Peak RSS: VmHWM from /proc. The server is a fresh process per size (started as `pnpm start` runs it); its",
    "  VmHWM covers its whole life. For the library, this process's VmHWM is reset (`/proc/self/clear_refs`) before",
    "  each build.",
    "- Kubelet time of the HTTP rows: from sending the POST to the server's \"checkpoint archive written\" log line",
    "  (the server runs with TZ=UTC, log times have millisecond resolution); build/push is the server's own",
    "  `build/push` log span; \"other\" is the rest of the round trip.",
    "- CPU (\"pusher · registry\"): CPU seconds used during a run (median) by the processes doing the work, read",
    "  from /proc: curl, sha256sum, buildah, podman and the programs they wait for (ended children of this process);",
    "  this process for the library and the archive pass; the server process for the HTTP rows (whole request); and",
    "  the docker-registry process. Unlike wall time it hardly depends on other load on the machine.",
    "",
    "What each pipeline times:",
    "",
    ...pipelines.map((pipeline) => `- ${pipeline.title}: ${pipeline.timed}.`),
    ""
  ].join("\n")
}

/** Whether other work ran beside the benchmark, from the median load. */
const loadVerdict = (median: number) =>
  median > verdictThresholds.ownLoad
    ? `above the benchmark's own load of about ${verdictThresholds.ownLoad}: other work was running`
    : `within the benchmark's own load of about ${verdictThresholds.ownLoad}`

export const renderReport = (report: BenchReport): string => {
  const { machine, settings } = report
  const loads = summarize(report.loads)
  const archives = table(
    ["memory held", "archive bytes", "/dev/shm in archive", "podman checkpoint --export s", "sha256sum s"],
    report.sizes.map((size) => [
      `${size.mib} MiB`,
      String(size.archive.bytes),
      String(size.archive.memoryBytes),
      formatSeconds(size.archive.checkpointSeconds),
      formatSeconds(size.archive.sha256Seconds)
    ])
  )
  const targetTable = table(
    ["target", "size", "ratio of medians", "same ratio per round: median (min–max)", "verdict"],
    [...targetRows(report.sizes), ...endToEndTargetRows(report)].map((row) => [
      row.target,
      row.size,
      row.measured,
      row.paired,
      row.verdict
    ])
  )
  return [
    "# Benchmark results",
    "",
    `Generated by \`${report.command}\` on ${report.startedAt.toISOString()}; the run took ` +
    `${(report.durationSeconds / 60).toFixed(1)} minutes. Sizes ${settings.sizes.join(", ")} MiB, ${settings.runs} ` +
    `runs after ${settings.warmups} warm-up(s)${
      settings.endToEnd ? `, ${settings.concurrency} × ${settings.concurrentMiB} MiB concurrent` : ""
    }.`,
    "",
    "## Machine",
    "",
    `- ${machine.cpus} CPUs (${machine.cpuModel}), ${(machine.memoryBytes / 1024 / MiB).toFixed(1)} GiB memory, ` +
    machine.kernel,
    `- One-minute load average before the runs: median ${loads.median.toFixed(2)}, min ${loads.min.toFixed(2)}, ` +
    `max ${loads.max.toFixed(2)}: ${loadVerdict(loads.median)}.`,
    "",
    "## Versions",
    "",
    table(["component", "version"], machine.versions.map(([name, version]) => [name, version])),
    "",
    `Code: commit ${report.code.commit}` +
    (report.code.changedFiles === 0
      ? ", no uncommitted changes under packages/."
      : `, with ${report.code.changedFiles} uncommitted file(s) under packages/ (the bundle and the library are ` +
        "built from the working tree).") +
    ` Server bundle (dist/server/main.mjs, built by \`pnpm bench\`) sha256 ${report.bundles.join(", ")}` +
    (report.bundles.length > 1 ? ": it was rebuilt during the run (another job ran scripts/build.mjs)." : "."),
    "",
    methodSection(report),
    "## Archives",
    "",
    archives,
    "",
    "## Targets",
    "",
    targetTable,
    "",
    analysisSection(report),
    "## Results per size",
    "",
    ...report.sizes.map(sizeSection),
    settings.endToEnd ? endToEndSection(report) : "",
    ...report.sizes.flatMap((size) => size.profile === undefined ? [] : [profileSection(size.mib, size.profile)])
  ].join("\n")
}
