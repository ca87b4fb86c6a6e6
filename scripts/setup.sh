#!/usr/bin/env bash
# Installs everything Checkpointer's demo, tests and benchmarks need on a fresh Debian bookworm machine.
# Safe to run again: every step checks before it acts.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_debian_packages() {
  local wanted=(criu podman buildah skopeo docker-registry runc busybox-static apache2-utils openssl curl ca-certificates)
  local missing=()
  for pkg in "${wanted[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if criu --version 2>/dev/null | grep -q 'Version: 3\.'; then missing+=(criu); fi
  # kubectl runs the kubectl-checkpoint plugin in the tests; kustomize builds k8s-manifests (both from trixie).
  for tool in kubectl kustomize; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && { log "Debian packages present"; return; }
  log "installing Debian packages: ${missing[*]}"
  if [ ! -f /etc/apt/sources.list.d/trixie.sources ]; then
    as_root tee /etc/apt/sources.list.d/trixie.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    as_root tee /etc/apt/preferences.d/trixie >/dev/null <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
  fi
  as_root apt-get update -qq
  # runc stays on bookworm's 1.1.5 (crun does not work on this kernel's hybrid cgroups); the CRIU set comes from trixie.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc/bookworm busybox-static apache2-utils openssl curl ca-certificates
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t trixie criu podman buildah skopeo docker-registry \
    kubectl kustomize
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades runc/bookworm
}

install_node() {
  if [ -x .tools/node_modules/.bin/node ] && .tools/node_modules/.bin/node --version | grep -q '^v24\.' \
    && [ -x .tools/node_modules/.bin/pnpm ]; then
    log "Node $(.tools/node_modules/.bin/node --version) and pnpm present"
    return
  fi
  log "installing Node 24 and pnpm 10 into .tools"
  npm install --silent --no-audit --no-fund --prefix .tools node@24 pnpm@10.34.9
}

install_node_modules() {
  export PATH="$root/.tools/node_modules/.bin:$PATH"
  log "pnpm install"
  pnpm install --frozen-lockfile --reporter=silent 2>/dev/null || pnpm install --reporter=silent
}

if [ "${SKIP_DEBIAN:-}" != 1 ]; then install_debian_packages; fi
install_node
if [ -f package.json ]; then install_node_modules; fi
log "ready"
