/**
 * Reads the per-phase timings of one checkpoint out of the server's readable (Logger.pretty) log:
 *
 *   [10:31:09.288] DEBUG (#32): checkpoint archive written
 *     identifier: node-a:f5badd199168cf7b
 *   [10:31:09.454] INFO (#32) build/push=164ms: pushed checkpoint image
 *     identifier: node-a:f5badd199168cf7b
 *     bytes: 256512
 *
 * The server runs with TZ=UTC so that the time of day in the header can be placed on the benchmark's clock.
 */
export interface LogEntry {
  /** Milliseconds since midnight UTC. */
  readonly timeOfDay: number
  readonly level: string
  /** Effect log spans: name -> milliseconds since the span began. */
  readonly spans: Readonly<Record<string, number>>
  readonly message: string
  readonly annotations: Readonly<Record<string, string>>
}

const header = /^\[(\d{2}):(\d{2}):(\d{2})\.(\d{3})\] (\w+) \(#\d+\)(.*?): (.*)$/
const annotation = /^\s+([\w.-]+): (.*)$/
const span = /([^\s=]+)=(\d+)ms/g
// eslint-disable-next-line no-control-regex
const ansi = /\u001b\[[0-9;]*m/g

export const parseLogs = (text: string): ReadonlyArray<LogEntry> => {
  const entries: Array<{ -readonly [K in keyof LogEntry]: LogEntry[K] }> = []
  for (const line of text.replace(ansi, "").split("\n")) {
    const head = header.exec(line)
    if (head !== null) {
      const [, hh, mm, ss, ms, level, spanText, message] = head
      entries.push({
        timeOfDay: ((Number(hh) * 60 + Number(mm)) * 60 + Number(ss)) * 1000 + Number(ms),
        level: level!,
        spans: Object.fromEntries([...spanText!.matchAll(span)].map((m) => [m[1]!, Number(m[2])])),
        message: message!,
        annotations: {}
      })
      continue
    }
    const pair = annotation.exec(line)
    const last = entries[entries.length - 1]
    if (pair !== null && last !== undefined) last.annotations = { ...last.annotations, [pair[1]!]: pair[2]! }
  }
  return entries
}

const day = 24 * 60 * 60 * 1000

/** The epoch milliseconds of a time of day (UTC) that happened shortly after `reference` (epoch ms). */
export const epochOf = (timeOfDay: number, reference: number): number => {
  const candidate = Math.floor(reference / day) * day + timeOfDay
  return candidate < reference - day / 2 ? candidate + day : candidate
}

export interface CheckpointTimings {
  /** Epoch ms at which the kubelet's archive was there (end of the kubelet phase). */
  readonly archiveWrittenAt: number
  /** The build/push span when the image was pushed, ms. */
  readonly buildPushMillis: number
  /** Layer bytes pushed. */
  readonly bytes: number
}

/** Timings of the checkpoint whose identifier ends with `:tag`, if the log holds both lines. */
export const checkpointTimings = (
  entries: ReadonlyArray<LogEntry>,
  tag: string,
  sentAt: number
): CheckpointTimings | undefined => {
  const mine = entries.filter((entry) => entry.annotations.identifier?.endsWith(`:${tag}`) === true)
  const written = mine.find((entry) => entry.message === "checkpoint archive written")
  const pushed = mine.find((entry) => entry.message === "pushed checkpoint image")
  const buildPush = pushed?.spans["build/push"]
  if (written === undefined || pushed === undefined || buildPush === undefined) return undefined
  return {
    archiveWrittenAt: epochOf(written.timeOfDay, sentAt),
    buildPushMillis: buildPush,
    bytes: Number(pushed.annotations.bytes ?? Number.NaN)
  }
}
