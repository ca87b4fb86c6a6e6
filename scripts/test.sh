#!/usr/bin/env bash
# Installs what the tests need (scripts/setup.sh) and runs the whole suite: typecheck, lint, unit and end-to-end tests.
# With REQUIRE_E2E=1 (CI), tests that need root, CRIU, podman or the registry fail instead of skipping.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
export PATH="$root/.tools/node_modules/.bin:$PATH"
cd "$root"
pnpm typecheck
pnpm lint
results=$(mktemp --suffix=.json)
status=0
pnpm exec vitest run --reporter=default --reporter=json --outputFile="$results" || status=$?
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + r.numTodoTests} skipped`)
' "$results" || true
rm -f "$results"
exit "$status"
