import { Config } from "effect"

/** What `pnpm bench` measures, from BENCH_* variables (small values are for development on a busy machine). */
export interface BenchSettings {
  /** MiB of memory the benchmark containers hold (one archive per size). */
  readonly sizes: ReadonlyArray<number>
  /** Measured runs per pipeline and size. */
  readonly runs: number
  /** Unmeasured runs per pipeline and size before the measured ones. */
  readonly warmups: number
  /** Parallel checkpoints in the end-to-end concurrency test (0 skips it). */
  readonly concurrency: number
  /** MiB held by each container of the concurrency test. */
  readonly concurrentMiB: number
  /** Also run the end-to-end part (counter split, concurrency). */
  readonly endToEnd: boolean
  /** After the largest size, profile extra native builds (library and `node --cpu-prof` server); default on. */
  readonly profile: boolean
  /** The Markdown report to write. */
  readonly out: string
  /** Scratch space (archives, registry storage, server storage); a subdirectory per run, removed at the end. */
  readonly workDir: string
}

const positive = (name: string, fallback: number) =>
  Config.withDefault(
    Config.integer(name).pipe(Config.validate({ message: `${name} must be >= 0`, validation: (n) => n >= 0 })),
    fallback
  )

export const settings: Config.Config<BenchSettings> = Config.all({
  sizes: Config.withDefault(
    Config.array(Config.integer(), "BENCH_SIZES").pipe(
      Config.validate({ message: "BENCH_SIZES: sizes in MiB, > 0", validation: (all) => all.every((n) => n > 0) })
    ),
    [16, 256, 1024]
  ),
  runs: Config.withDefault(
    Config.integer("BENCH_RUNS").pipe(
      Config.validate({ message: "BENCH_RUNS must be >= 1", validation: (n) => n >= 1 })
    ),
    5
  ),
  warmups: positive("BENCH_WARMUP", 1),
  concurrency: positive("BENCH_CONCURRENCY", 8),
  concurrentMiB: positive("BENCH_CONCURRENT_MIB", 64),
  endToEnd: Config.withDefault(Config.boolean("BENCH_E2E"), true),
  profile: Config.withDefault(Config.boolean("BENCH_PROFILE"), true),
  out: Config.withDefault(Config.string("BENCH_OUT"), "bench/RESULTS.md"),
  workDir: Config.withDefault(Config.string("BENCH_WORK_DIR"), "bench/.work")
})
