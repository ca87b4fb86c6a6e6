import { Effect } from "effect"
import { exec, failedTo } from "./Tools.ts"
import { ownerAlive } from "./Workload.ts"

/** A network namespace joined to the host by a veth pair whose both ends are shaped to `rateMbit`. */
export interface ShapedLink {
  readonly label: string
  readonly rateMbit: number
  readonly netns: string
  /** The host end (its egress carries pushes towards the namespace) and the namespace end. */
  readonly hostDevice: string
  readonly nsDevice: string
  readonly hostAddress: string
  readonly nsAddress: string
  /** `ip netns exec NETNS`: runs a command inside the namespace. */
  readonly commandPrefix: ReadonlyArray<string>
}

const namespacePrefix = "cplink-"

/**
 * Token bucket at `rateMbit` on `device`: a bucket of 4 ms at that rate (at least 64 KiB, so that a GSO packet of the
 * veth fits) and at most 20 ms of queue.
 */
const tbf = (rateMbit: number) => {
  const burstBytes = Math.max(64 * 1024, Math.ceil((rateMbit * 1e6 / 8) * 0.004))
  return ["tbf", "rate", `${rateMbit}mbit`, "burst", `${burstBytes}`, "latency", "20ms"]
}

const ip = (args: ReadonlyArray<string>) => exec("ip", args)

/**
 * Scoped: namespace `cplink-<pid>-<label>`, veth `lk<pid><index>h` (host) / `lk<pid><index>n` (namespace) on
 * 10.77.<index>.0/30, `tc tbf` at `rateMbit` on both ends' egress. Removed when the scope closes (deleting the
 * namespace deletes both ends of the pair and their qdiscs).
 */
export const makeShapedLink = Effect.fn("ShapedLink.make")(function*(
  label: string,
  index: number,
  rateMbit: number
) {
  const netns = `${namespacePrefix}${process.pid}-${label}`
  const hostDevice = `lk${process.pid}${index}h`
  const nsDevice = `lk${process.pid}${index}n`
  const subnet = `10.77.${(process.pid % 200) + index}`
  const hostAddress = `${subnet}.1`
  const nsAddress = `${subnet}.2`
  const commandPrefix = ["ip", "netns", "exec", netns] as const
  yield* Effect.acquireRelease(ip(["netns", "add", netns]), () => Effect.ignore(removeNamespace(netns)))
  yield* ip(["link", "add", hostDevice, "type", "veth", "peer", "name", nsDevice, "netns", netns])
  yield* ip(["addr", "add", `${hostAddress}/30`, "dev", hostDevice])
  yield* ip(["link", "set", hostDevice, "up"])
  yield* ip(["-n", netns, "addr", "add", `${nsAddress}/30`, "dev", nsDevice])
  yield* ip(["-n", netns, "link", "set", nsDevice, "up"])
  yield* ip(["-n", netns, "link", "set", "lo", "up"])
  yield* exec("tc", ["qdisc", "add", "dev", hostDevice, "root", ...tbf(rateMbit)])
  yield* exec("tc", ["-n", netns, "qdisc", "add", "dev", nsDevice, "root", ...tbf(rateMbit)])
  return { label, rateMbit, netns, hostDevice, nsDevice, hostAddress, nsAddress, commandPrefix } satisfies ShapedLink
}, Effect.mapError(failedTo("make a shaped link")))

/** Kills what still runs inside the namespace, then deletes it (and with it the veth pair and the qdiscs). */
const removeNamespace = (netns: string) =>
  Effect.gen(function*() {
    const pids = (yield* ip(["netns", "pids", netns])).stdout.split("\n").filter((line) => /^\d+$/.test(line.trim()))
    for (const pid of pids) yield* Effect.ignore(Effect.try(() => process.kill(Number(pid), "SIGKILL")))
    yield* ip(["netns", "delete", netns])
  })

/** Names carrying the pid of a run (`<prefix><pid>-...`) whose process is gone. */
export const orphanedNames = (names: ReadonlyArray<string>, prefix: string) =>
  names.filter((name) => {
    const pid = Number(new RegExp(`^${prefix}(\\d+)-`).exec(name)?.[1] ?? Number.NaN)
    return Number.isInteger(pid) && pid !== process.pid && !ownerAlive(pid)
  })

/** Removes the namespaces (with their processes and veth pairs) of earlier runs whose process is gone. */
export const sweepShapedLinks = Effect.gen(function*() {
  const listed = (yield* ip(["netns", "list"])).stdout.split("\n").map((line) => line.trim().split(/\s+/)[0] ?? "")
  const stale = orphanedNames(listed, namespacePrefix)
  yield* Effect.forEach(stale, removeNamespace, { discard: true })
  return stale.length
}).pipe(Effect.mapError(failedTo("remove shaped links of earlier runs")))
