#!/usr/bin/env bash
# Installs what the demo needs (scripts/setup.sh) and runs it: a real registry, a real CRIU node, the simulated
# Kubernetes API server and Checkpointer (pnpm start); a counter is checkpointed over HTTP and restored from its image.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
export PATH="$root/.tools/node_modules/.bin:$PATH"
cd "$root"
pnpm --silent demo
