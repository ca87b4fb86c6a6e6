import { FileSystem } from "@effect/platform"
import { Duration, Effect } from "effect"
import type { LocalCluster } from "../test/harness/Cluster.ts"
import { runPod } from "../test/harness/Cluster.ts"
import { pollUntil } from "../test/harness/Process.ts"
import { MiB } from "./Stats.ts"
import { BenchError, exec, failedTo, seconds } from "./Tools.ts"
import { checkpointInto } from "./Workload.ts"

/** Host directory of real text the workload reads (Perl's modules and their documentation), mounted read-only. */
export const corpusDir = "/usr/share/perl"
export const heapContainer = "main"

const firstNames = "Olivia Liam Emma Noah Amelia Oliver Sophia Elijah Isabella Lucas Mia Mateo Charlotte Levi Ava " +
  "James Harper Benjamin Evelyn Henry Luna Theodore Camila Jack Gianna Sebastian Aria Leo Ella Ethan Nora Daniel " +
  "Mila Hana Yuki Arjun Priya Chen Wei Fatima Omar Lars Ingrid Pierre Amelie Giulia Marco Sofia Diego"
const lastNames = "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez " +
  "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark " +
  "Ramirez Lewis Robinson Walker Young Allen King Wright Scott Nguyen Hill Flores Green Muller Schmidt Rossi " +
  "Tanaka Sato Kim Park Singh Kumar Dubois Novak Jensen"
const tagWords = "admin beta billing churned enterprise europe free gold internal newsletter partner premium " +
  "silver support trial verified vip"

/**
 * busybox awk: every line of the corpus (quotes and backslashes dropped) kept as a string, then JSON-like customer
 * records built in batches of 20000 until the process's VmRSS reaches `target` KiB; then it writes /records and
 * /ready and counts seconds into /count (with `sleep 1` between), the process a checkpoint captures.
 */
const heapProgram = `BEGIN {
  srand(42)
  nf = split("${firstNames}", first, " ")
  nl = split("${lastNames}", last, " ")
  nt = split("${tagWords}", tag, " ")
  nd = split("example.com mail.example.org corp.example.net shop.example", dom, " ")
  lines = 0
}
{ gsub(/["\\\\]/, ""); if (length($0) > 0) text[lines++] = $0 }
END {
  n = 0
  while (1) {
    for (b = 0; b < 20000; b++) {
      f = first[int(rand() * nf) + 1]; l = last[int(rand() * nl) + 1]
      rec[n] = sprintf("{\\"id\\":%d,\\"customer\\":\\"C%08d\\",\\"name\\":\\"%s %s\\",\\"email\\":\\"%s.%s%d@%s\\"," \\
        "\\"createdAt\\":\\"20%02d-%02d-%02dT%02d:%02d:%02dZ\\",\\"active\\":%s,\\"balance\\":%.2f," \\
        "\\"tags\\":[\\"%s\\",\\"%s\\"],\\"note\\":\\"%s\\"}", \\
        n, int(rand() * 99999999), f, l, tolower(f), tolower(l), n % 1000, dom[int(rand() * nd) + 1], \\
        18 + int(rand() * 8), 1 + int(rand() * 12), 1 + int(rand() * 28), int(rand() * 24), int(rand() * 60), \\
        int(rand() * 60), rand() < 0.8 ? "true" : "false", rand() * 10000, tag[int(rand() * nt) + 1], \\
        tag[int(rand() * nt) + 1], text[int(rand() * lines)])
      n++
    }
    rss = 0
    while ((getline status < "/proc/self/status") > 0) if (status ~ /^VmRSS:/) { split(status, kb, " "); rss = kb[2] }
    close("/proc/self/status")
    if (rss + 0 >= target + 0) break
  }
  print n " records, " lines " text lines, VmRSS " rss " kB" > "/records"; close("/records")
  system("touch /ready")
  for (count = 1; ; count++) { print count > "/count"; close("/count"); system("sleep 1") }
}`

/** The pod: the workloads' busybox image running `heapProgram` over the corpus, mounted at /corpus. */
export const heapPodManifest = (options: {
  readonly name: string
  readonly image: string
  readonly nodeName: string
  readonly mib: number
  /** A checkpoint image: no command (the runtime restores the process), and its pull secret. */
  readonly restoreFrom?: { readonly pullSecret: string }
}) => ({
  metadata: { name: options.name },
  spec: {
    nodeName: options.nodeName,
    terminationGracePeriodSeconds: 0,
    ...(options.restoreFrom === undefined ? {} : { imagePullSecrets: [{ name: options.restoreFrom.pullSecret }] }),
    volumes: [{ name: "corpus", hostPath: { path: corpusDir } }],
    containers: [{
      name: heapContainer,
      image: options.image,
      ...(options.restoreFrom === undefined
        ? {
          command: [
            "sh",
            "-c",
            "find /corpus -type f \\( -name '*.pod' -o -name '*.pm' \\) -exec cat {} + | awk -v target=\"$1\" \"$0\"",
            heapProgram,
            String(options.mib * 1024)
          ]
        }
        : {}),
      volumeMounts: [{ name: "corpus", mountPath: "/corpus", readOnly: true }]
    }]
  }
})

/** Polls (bounded) until the heap is built: /ready exists; answers what /records says. */
export const waitForHeap = (cluster: LocalCluster, pod: string, timeout: Duration.DurationInput) =>
  pollUntil(
    Effect.either(cluster.agent.exec("default", pod, heapContainer, ["cat", "/records"])),
    (result) => result._tag === "Right",
    {
      every: Duration.millis(250),
      timeout,
      onTimeout: () => new BenchError({ message: `the heap of ${pod} was not built within the timeout` })
    }
  ).pipe(Effect.map((result) => (result._tag === "Right" ? result.right.trim() : "")))

/** Scoped: the heap pod, running, its heap built. Answers what it holds and how long building it took. */
export const runHeapPod = Effect.fn("LinkWorkload.runHeapPod")(function*(
  cluster: LocalCluster,
  pod: string,
  mib: number
) {
  const nodeName = cluster.nodes[0]!.nodeName
  const [startSeconds, records] = yield* seconds(Effect.gen(function*() {
    yield* runPod(
      cluster,
      "default",
      heapPodManifest({ name: pod, image: cluster.workloads.counterImage, nodeName, mib })
    )
    return yield* waitForHeap(cluster, pod, Duration.minutes(20))
  }))
  return { pod, container: heapContainer, mib, records, startSeconds } as const
}, Effect.mapError(failedTo("start the heap pod")))

export interface HeapArchive {
  readonly path: string
  readonly bytes: number
  readonly digest: string
  /** Sum of the checkpoint's pages-*.img (the memory CRIU dumped). */
  readonly pagesBytes: number
  readonly checkpointSeconds: number
}

/** Scoped: CRI-O's checkpoint of the heap pod into `path` (removed when the scope closes), its memory checked. */
export const makeHeapArchive = Effect.fn("LinkWorkload.makeHeapArchive")(function*(
  cluster: LocalCluster,
  pod: string,
  mib: number,
  path: string
) {
  const fs = yield* FileSystem.FileSystem
  const checkpointSeconds = yield* checkpointInto(cluster, pod, heapContainer, path)
  const bytes = Number((yield* fs.stat(path)).size)
  const listing = (yield* exec("tar", ["-tvf", path])).stdout.split("\n")
  const pagesBytes = listing
    .filter((line) => /pages-\d+\.img$/.test(line))
    .reduce((sum, line) => sum + Number(line.trim().split(/\s+/)[2]), 0)
  if (!(pagesBytes >= 0.85 * mib * MiB) || pagesBytes > 1.5 * mib * MiB + 64 * MiB) {
    return yield* new BenchError({
      message: `${path} holds ${pagesBytes} bytes of memory pages, expected about ${mib} MiB`
    })
  }
  const sum = yield* exec("sha256sum", [path])
  const digest = `sha256:${sum.stdout.trim().split(/\s+/)[0]}`
  return { path, bytes, digest, pagesBytes, checkpointSeconds } satisfies HeapArchive
}, Effect.mapError(failedTo("make the heap archive")))
