#!/usr/bin/env bash
# The benchmark in one command: installs what it needs (scripts/setup.sh), then runs `pnpm bench`, which writes
# bench/RESULTS.md. Needs root (CRIU, podman). Settings come from BENCH_* variables (see bench/Settings.ts), e.g.
#   BENCH_SIZES=16 BENCH_RUNS=2 bash bench/run.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
export PATH="$root/.tools/node_modules/.bin:$PATH"
cd "$root"
BENCH_COMMAND="${BENCH_COMMAND:-bash bench/run.sh}" pnpm bench
