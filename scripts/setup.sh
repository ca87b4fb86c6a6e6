#!/usr/bin/env bash
# Installs everything Checkpointer's demo, tests and benchmarks need on a fresh Debian bookworm machine.
# Safe to run again: every step checks before it acts.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# A Debian suite as an apt source pinned at PRIORITY (below bookworm's 500: only what is asked for with -t comes from
# it); a source already there is left as it is.
add_debian_suite() {
  local suite=$1 priority=$2
  [ -f "/etc/apt/sources.list.d/$suite.sources" ] && return 0
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
    "$suite" /usr/share/keyrings/debian-archive-keyring.gpg | as_root tee "/etc/apt/sources.list.d/$suite.sources" >/dev/null
  printf 'Package: *\nPin: release n=%s\nPin-Priority: %s\n' "$suite" "$priority" |
    as_root tee "/etc/apt/preferences.d/$suite" >/dev/null
}

install_debian_packages() {
  # buildah only for the benchmark's buildah recipe (a peer compared side by side), never in the tests.
  local wanted=(criu podman buildah skopeo docker-registry runc conmon busybox-static apache2-utils openssl curl ca-certificates)
  local missing=()
  for pkg in "${wanted[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if criu --version 2>/dev/null | grep -q 'Version: 3\.'; then missing+=(criu); fi
  # kubectl runs the kubectl-checkpoint plugin in the tests; kustomize builds k8s-manifests; promtool checks and unit-tests
  # the alerting rules (all from trixie).
  for tool in kubectl kustomize promtool; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  # CRI-O 1.36 needs libseccomp 2.6 (trixie) and links Debian's libsqlite3.
  dpkg --compare-versions "$(dpkg-query -W -f='${Version}' libseccomp2 2>/dev/null || echo 0)" ge 2.6 || missing+=(libseccomp2)
  dpkg -s libsqlite3-0 >/dev/null 2>&1 || missing+=(libsqlite3-0)
  [ ${#missing[@]} -eq 0 ] && { log "Debian packages present"; return; }
  log "installing Debian packages: ${missing[*]}"
  add_debian_suite trixie 100
  as_root apt-get update -qq
  # runc stays on bookworm's 1.1.5 (crun does not work on this kernel's hybrid cgroups); the CRIU set comes from trixie.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc/bookworm busybox-static apache2-utils openssl curl ca-certificates
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t trixie criu podman buildah skopeo docker-registry \
    conmon libseccomp2 libsqlite3-0 kubectl kustomize promtool
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades runc/bookworm
}

# CRI-O, crictl and pinns: built binaries from ../shared/runtimes when that folder exists, otherwise CRI-O's static
# release bundle (it carries crio, crictl and pinns for linux/amd64 and arm64).
install_container_runtimes() {
  local dest="$root/.tools/runtimes" shared="$root/../shared/runtimes" version=v1.36.3
  if [ -x "$shared/install.sh" ]; then
    bash "$shared/install.sh" "$dest" >/dev/null
    log "CRI-O 1.33/1.36, crictl and pinns in $dest/bin (from ../shared/runtimes)"
  elif [ ! -x "$dest/bin/crio-1.36.3" ]; then
    local arch; arch=$(dpkg --print-architecture)
    log "downloading CRI-O $version (static bundle)"
    mkdir -p "$dest/bin" && local tmp; tmp=$(mktemp -d)
    curl -fsSL "https://storage.googleapis.com/cri-o/artifacts/cri-o.$arch.$version.tar.gz" | tar -xz -C "$tmp"
    install -m 0755 "$tmp/cri-o/bin/crio" "$dest/bin/crio-1.36.3"
    install -m 0755 "$tmp/cri-o/bin/crictl" "$tmp/cri-o/bin/pinns" "$dest/bin/"
    rm -rf "$tmp"
  fi
  # containerd 2.1 (restore through CRI create) is in Debian forky, pinned low like trixie.
  if ! containerd --version 2>/dev/null | grep -q ' v\?2\.1\.'; then
    add_debian_suite forky 50
    as_root apt-get update -qq
    log "installing containerd 2.1 from Debian forky"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t forky containerd
  fi
  # The Kaniko executor image (the maintained fork, pinned) for the harness's CRI-O, through podman's storage.
  local kaniko=ghcr.io/osscontainertools/kaniko:v1.28.3
  if ! PODMAN_IGNORE_CGROUPSV1_WARNING=1 podman image exists "$kaniko"; then
    if [ -f "$shared/kaniko-executor-v1.28.3.oci.tar" ]; then
      skopeo copy --quiet "oci-archive:$shared/kaniko-executor-v1.28.3.oci.tar" "containers-storage:$kaniko"
    else
      PODMAN_IGNORE_CGROUPSV1_WARNING=1 podman pull --quiet "$kaniko" >/dev/null
    fi
    log "Kaniko executor image $kaniko loaded"
  fi
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

if [ "${SKIP_DEBIAN:-}" != 1 ]; then install_debian_packages; install_container_runtimes; fi
install_node
if [ -f package.json ]; then install_node_modules; fi
log "ready"
