import type { LinkPipeline, LinkSample, StartKind, StartSample } from "./LinkRuns.ts"
import type { HeapArchive } from "./LinkWorkload.ts"
import type { MachineFacts } from "./Machine.ts"
import type { Summary } from "./Stats.ts"
import { formatMiB, formatRatio, formatSeconds, MiB, summarize } from "./Stats.ts"

export interface LinkResult {
  readonly machine: MachineFacts
  readonly code: { readonly commit: string; readonly changedFiles: number }
  readonly runtime: string
  readonly settings: {
    readonly mib: number
    readonly runs: number
    readonly warmups: number
    readonly restoreRuns: number
  }
  readonly heap: { readonly records: string; readonly startSeconds: number }
  readonly archive: HeapArchive
  readonly links: ReadonlyArray<{
    readonly label: string
    readonly title: string
    /** The shaped rate; none for loopback. */
    readonly rateMbit?: number
    readonly samples: ReadonlyArray<LinkSample>
  }>
  readonly starts: ReadonlyArray<StartSample>
  readonly loads: ReadonlyArray<number>
  readonly date: string
}

/** The target of issue 16 item 3: at 1 Gbit/s, zstd build/push at most this times the raw upload of the archive. */
export const zstdTarget = 0.5

const pipelineTitles: Readonly<Record<LinkPipeline, string>> = {
  raw: "raw upload of the uncompressed archive (curl)",
  none: "native builder, library, `none`",
  gzip: "native builder, library, `gzip` (level 1)",
  zstd: "native builder, library, `zstd` (level 1, the default)",
  "zstd-3": "native builder, library, `zstd`, `CHECKPOINT_LAYER_COMPRESSION_LEVEL=3`",
  encrypted: "native builder, library, `none`, encrypted for 2 recipients (RSA 4096 + EC P-256)"
}

/** The target of issue 15: an encrypted push at most this times the unencrypted one. */
export const encryptionTarget = 1.15

const range = (summary: Summary, format: (value: number) => string) =>
  `${format(summary.median)} (${format(summary.min)}–${format(summary.max)})`

const of = (samples: ReadonlyArray<LinkSample>, pipeline: LinkPipeline) =>
  samples.filter((sample) => sample.pipeline === pipeline)

/** Per-round ratios of `pipeline`'s time to `reference`'s (default: the raw upload's) of the same round. */
export const ratiosToRaw = (
  samples: ReadonlyArray<LinkSample>,
  pipeline: LinkPipeline,
  reference: LinkPipeline = "raw"
): Summary => {
  const raw = new Map(of(samples, reference).map((sample) => [sample.round, sample.seconds]))
  return summarize(
    of(samples, pipeline).flatMap((sample) => {
      const reference = raw.get(sample.round)
      return reference === undefined ? [] : [sample.seconds / reference]
    })
  )
}

const median = (values: ReadonlyArray<number>) => summarize(values).median
const medianSeconds = (samples: ReadonlyArray<LinkSample>, pipeline: LinkPipeline) =>
  median(of(samples, pipeline).map((sample) => sample.seconds))
const mbit = (bytesPerSecond: number) => (bytesPerSecond * 8) / 1e6

const linkTable = (archiveBytes: number, samples: ReadonlyArray<LinkSample>) => [
  "| pipeline | wall s, median (min–max) | × raw upload, median of rounds (min–max) | pushed MiB | " +
  "compression ratio | archive MiB/s | CPU s (this process / curl) | registry CPU s |",
  "|---|---:|---:|---:|---:|---:|---:|---:|",
  ...(["raw", "none", "gzip", "zstd", "zstd-3", "encrypted"] as const).filter((pipeline) =>
    of(samples, pipeline).length > 0
  )
    .map((pipeline) => {
      const runs = of(samples, pipeline)
      const time = summarize(runs.map((sample) => sample.seconds))
      const pushed = median(runs.map((sample) => sample.pushedBytes))
      return `| ${pipelineTitles[pipeline]} | ${range(time, formatSeconds)} | ${
        pipeline === "raw" ? "1" : range(ratiosToRaw(samples, pipeline), formatRatio)
      } | ${formatMiB(pushed)} | ${formatRatio(archiveBytes / pushed)} | ${
        (archiveBytes / MiB / time.median).toFixed(0)
      } | ${median(runs.map((sample) => sample.cpu)).toFixed(2)} | ${
        median(runs.map((sample) => sample.registryCpu)).toFixed(2)
      } |`
    })
]

const startKinds: ReadonlyArray<StartKind> = ["restore none", "restore zstd", "cold start"]

/** bench/LINK.md: settings, the tables, and the verdicts computed from them. */
export const linkReport = (result: LinkResult): string => {
  const { archive, machine } = result
  const linkOf = (label: string) => result.links.find((link) => link.label === label)
  const gigabit = linkOf("1g")?.samples ?? []
  const zstdAtGigabit = ratiosToRaw(gigabit, "zstd")
  const targetMet = zstdAtGigabit.median <= zstdTarget
  const allSamples = result.links.flatMap((link) => link.samples)
  const pushedOf = (pipeline: LinkPipeline) => median(of(allSamples, pipeline).map((sample) => sample.pushedBytes))
  const loads = summarize(result.loads)

  // Where compression stops paying. Where the link is not the limit (loopback, and links on which the compressed
  // layer needs well under the measured time), archive bytes / wall time of a compressed build is what compression
  // (with hashing and the upload of the smaller layer) gets through per second. Over a link of B bytes/s an
  // uncompressed push takes at least archive / B, a compressed one at least archive / throughput: they cross at
  // B = throughput (below it compression wins, above it loses).
  const unlimited = result.links.filter((link) => link.rateMbit === undefined || link.rateMbit >= 1000)
  const crossing = (pipeline: "gzip" | "zstd" | "zstd-3") => {
    const runs = unlimited.flatMap((link) => of(link.samples, pipeline))
    const throughputs = summarize(runs.map((sample) => archive.bytes / sample.seconds))
    const uncompressed = summarize(
      unlimited.flatMap((link) => of(link.samples, "none")).map((sample) => archive.bytes / sample.seconds)
    )
    const cpuThroughput = archive.bytes / median(runs.map((sample) => sample.cpu))
    const wins = result.links.filter((link) =>
      medianSeconds(link.samples, pipeline) < medianSeconds(link.samples, "none")
    ).map((link) => link.label)
    return { pipeline, throughputs, uncompressed, cpuThroughput, wins }
  }
  const crossings = [crossing("zstd"), crossing("zstd-3"), crossing("gzip")]

  const startTable = startKinds.map((kind) => {
    const runs = result.starts.filter((sample) => sample.kind === kind)
    const running = summarize(runs.map((sample) => sample.runningSeconds))
    const ready = summarize(runs.flatMap((sample) => sample.readySeconds === undefined ? [] : [sample.readySeconds]))
    const pulled = kind === "restore none" ? pushedOf("none") : kind === "restore zstd" ? pushedOf("zstd") : Number.NaN
    return `| ${kind} | ${running.count} | ${range(running, formatSeconds)} | ${
      ready.count === 0 ? "= running (memory restored)" : range(ready, formatSeconds)
    } | ${Number.isNaN(pulled) ? "– (image cached)" : formatMiB(pulled)} |`
  })
  const startMedian = (kind: StartKind) =>
    median(result.starts.filter((sample) => sample.kind === kind).map((sample) => sample.runningSeconds))
  const coldReady = median(result.starts.flatMap((sample) => sample.readySeconds ?? []))
  const zstdOverNone = startMedian("restore zstd") / startMedian("restore none")

  return [
    "# Compression over shaped links, and restores",
    "",
    `Written by \`pnpm bench:link\` (bench/link.ts) on ${result.date}, commit ${result.code.commit}` +
    `${result.code.changedFiles > 0 ? ` (+${result.code.changedFiles} changed files under packages/)` : ""}; ` +
    `${machine.cpus} CPUs (${machine.cpuModel}), ${
      (machine.memoryBytes / 2 ** 30).toFixed(0)
    } GiB, ${machine.kernel}; ` +
    `runtime ${result.runtime}; ${machine.versions.map(([name, version]) => `${name} ${version}`).join(", ")}.`,
    "",
    `Shared machine: one-minute load average ${loads.min.toFixed(1)}–${loads.max.toFixed(1)} ` +
    `(median ${loads.median.toFixed(1)}) at the start of each phase; on ${machine.cpus} CPUs every figure below ` +
    "includes waiting for a CPU, compression (which needs one) more than uploads.",
    "",
    `Settings: LINK_MIB=${result.settings.mib}, LINK_RUNS=${result.settings.runs}, ` +
    `LINK_WARMUP=${result.settings.warmups}, LINK_RESTORE_RUNS=${result.settings.restoreRuns}.`,
    "",
    "## Workload",
    "",
    "A pod on the harness's CRI-O runs the workloads' busybox image: `find /corpus ... -exec cat` of every `.pm` and " +
    "`.pod` file of the host's /usr/share/perl (mounted read-only with hostPath) into busybox `awk`, which keeps " +
    "every non-empty line (quotes and backslashes dropped) in an array, then builds JSON-like customer records " +
    "(`{\"id\":7,\"customer\":\"C40881490\",\"name\":\"Liam Jones\",\"email\":\"liam.jones7@example.com\"," +
    "\"createdAt\":\"2021-05-01T13:34:30Z\",\"active\":false,\"balance\":5052.15,\"tags\":[\"churned\",\"vip\"]," +
    "\"note\":\"<a random line of that text>\"}`: names from 50 first and 53 last names, random ids, dates, " +
    "amounts and tags) in batches of 20000 until its VmRSS reaches LINK_MIB; then it counts seconds into a file. " +
    `It held: ${result.heap.records} (built in ${result.heap.startSeconds.toFixed(1)} s).`,
    "",
    `Its CRI-O checkpoint (\`cluster.agent.checkpoint\`, what the kubelet asks for): ${formatMiB(archive.bytes)} MiB ` +
    `(${archive.bytes} bytes), of which ${formatMiB(archive.pagesBytes)} MiB memory pages (pages-*.img), ` +
    `taken in ${formatSeconds(archive.checkpointSeconds)} s.`,
    "",
    "## Build/push over each link",
    "",
    "The native builder as a library (`NativeImageBuilder.layerWith({ compression })`, the builder " +
    "`CHECKPOINT_LAYER_COMPRESSION` selects) and a raw curl upload of the uncompressed archive (digest known " +
    "beforehand, one PUT) into a docker-registry (TLS, htpasswd; emptied before every run) on loopback, and into " +
    "one running inside a network namespace joined to the host by a veth pair with `tc qdisc ... tbf` at the " +
    "link's rate on both ends (the host end's egress is the push direction). Rounds interleaved (each runs every " +
    "pipeline once, in a rotated order) after the warm-ups; ratios are medians of per-round ratios. The simulated " +
    "kubelet's pod bookkeeping, which runs in the benchmark's process next to the library builds, is paused " +
    "meanwhile (`NodeAgent.whileQuiet`).",
    "",
    ...result.links.flatMap((link) => [`### ${link.title}`, "", ...linkTable(archive.bytes, link.samples), ""]),
    "## Verdicts",
    "",
    `- Target "at 1 Gbit/s, zstd build/push ≤ ${zstdTarget}× the raw upload of the uncompressed archive": ` +
    (gigabit.length === 0
      ? "not measured."
      : `**${targetMet ? "met" : "missed"}**: ${formatRatio(zstdAtGigabit.median)} ` +
        `(${formatRatio(zstdAtGigabit.min)}–${formatRatio(zstdAtGigabit.max)}), with a compression ratio of ` +
        `${formatRatio(archive.bytes / pushedOf("zstd"))}.`),
    ...result.links.flatMap((link) => {
      if (link.rateMbit === undefined) return []
      const raw = mbit(archive.bytes / medianSeconds(link.samples, "raw"))
      return [
        `- ${link.title}: the raw upload moved ${raw.toFixed(0)} Mbit/s of archive, ` +
        `${((raw / link.rateMbit) * 100).toFixed(0)}% of the link's rate` +
        (raw / link.rateMbit < 0.7 ? " (the link was not the limit here: CPU was)." : ".")
      ]
    }),
    ...crossings.map(({ cpuThroughput, pipeline, throughputs, uncompressed, wins }) =>
      `- Where ${pipeline} stops paying: where the link was not the limit (${
        unlimited.map((link) => link.label).join(", ")
      }; ${throughputs.count} runs) a ${pipeline} build/push got through ${
        mbit(throughputs.median).toFixed(0)
      } Mbit/s of archive (${mbit(throughputs.min).toFixed(0)}–${mbit(throughputs.max).toFixed(0)}; ` +
      `uncompressed ${mbit(uncompressed.median).toFixed(0)} Mbit/s), so it beats the uncompressed push on links ` +
      `slower than about **${mbit(throughputs.median).toFixed(0)} Mbit/s** and loses on faster ones (on this ` +
      "machine, at this load). With a CPU to itself (archive bytes / CPU seconds of this process during the build; " +
      `the registry's not counted) it would get through ${mbit(cpuThroughput).toFixed(0)} Mbit/s. ` +
      `Measured: ${pipeline} faster than \`none\` on ${wins.length === 0 ? "no link" : wins.join(", ")}.`
    ),
    ...result.links.flatMap((link) => {
      const cost = ratiosToRaw(link.samples, "encrypted", "none")
      return cost.count === 0 ? [] : [
        `- Encryption's cost on ${link.title}: the encrypted push takes ${formatRatio(cost.median)} ` +
        `(${formatRatio(cost.min)}–${formatRatio(cost.max)}) the time of the unencrypted one ` +
        `(target ≤ ${encryptionTarget}×: **${cost.median <= encryptionTarget ? "met" : "missed"}** on this link).`
      ]
    }),
    "- curl's CPU seconds on the shaped links (much higher at 100 Mbit/s than on loopback for the same bytes) are " +
    "curl's own, not explained here; they take part in no verdict.",
    "",
    "## Restore",
    "",
    ...(result.starts.length === 0 ? ["No restores measured (LINK_RESTORE_RUNS=0).", ""] : [
      "Time from \"restore requested\" (the pod is created in the API server, its image the checkpoint image) to " +
      "\"process running\" (the pod Running with its container running as CRI-O reports it after CRIU's restore; " +
      "CRI-O says `restored: true` for every restore counted), on the harness's node agent playing the kubelet. The " +
      "image (the same archive built by the native builder uncompressed and with zstd) is pulled from the loopback " +
      "registry every time: it is removed from CRI-O's storage after each start. The cold start is the same pod " +
      "from the workload's own (cached) busybox image; it runs at once but has to build its heap again.",
      "",
      "| start | runs | pod running after s, median (min–max) | heap ready after s | image layer pulled, MiB |",
      "|---|---:|---:|---:|---:|",
      ...startTable,
      "",
      `A zstd image restores in ${formatRatio(zstdOverNone)} the time of the uncompressed one ` +
      `(${formatSeconds(startMedian("restore zstd"))} s against ${formatSeconds(startMedian("restore none"))} s, ` +
      `loopback pull); a cold start runs after ${formatSeconds(startMedian("cold start"))} s but has its data ` +
      `back only after ${formatSeconds(coldReady)} s. Not measured, computed: over a 100 Mbit/s link the pull ` +
      `alone would take at least ${formatSeconds(pushedOf("none") / 12.5e6)} s uncompressed and ` +
      `${formatSeconds(pushedOf("zstd") / 12.5e6)} s with zstd (layer bytes / 12.5 MB/s), at 1 Gbit/s ` +
      `${formatSeconds(pushedOf("none") / 125e6)} s and ${formatSeconds(pushedOf("zstd") / 125e6)} s.`,
      ""
    ])
  ].join("\n")
}
