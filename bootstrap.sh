#!/usr/bin/env bash
# containai-ops bootstrap: install what the toolkit and its tests need on a fresh Debian/Ubuntu machine
# (as root), then run the main job against a disposable lab host, or the whole test suite.
#
#   ./bootstrap.sh demo    install, bring up a lab host, run `inv doctor` and `inv update --dry-run` on it
#   ./bootstrap.sh test    install, start the lab engine, build the lab images, run every test tier
#   ./bootstrap.sh deps    install only (apt packages, .venv with the toolkit and its test extras)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
VENV="$HERE/.venv"
APT_PACKAGES=(
  docker.io debootstrap busybox-static openssh-server openssh-client systemd
  dpkg-dev fakeroot binutils xz-utils lintian git make tmux strace python3-venv python3-pip ca-certificates
)

log() { printf '==> %s\n' "$*"; }
die() { printf 'bootstrap: %s\n' "$*" >&2; exit 1; }

deps() {
  [ "$(id -u)" -eq 0 ] || die "run as root (the lab starts a private dockerd and systemd hosts)"
  command -v apt-get >/dev/null || die "apt-get not found: a Debian or Ubuntu machine is required"
  log "apt packages: ${APT_PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  log "installing containai-ops and its test extras into .venv"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e ".[test]"
}

lab_ready() {
  "$VENV/bin/inv" lab.engine
  "$VENV/bin/inv" lab.image
}

demo() {
  deps
  lab_ready
  local lima_home="/var/lib/cai-lab/demo-lima"
  "$VENV/bin/inv" lab.up --name demo --lima-home "$lima_home"
  export INVOKE_CAI_LIMA_HOME="$lima_home"
  log "inv doctor --target lima:demo"
  "$VENV/bin/inv" doctor --target lima:demo || true
  if "$VENV/bin/inv" --list | grep -q '^  update'; then
    log "inv update --dry-run --target lima:demo"
    "$VENV/bin/inv" update --dry-run --target lima:demo || true
  fi
  log "the lab host stays up; remove it with: .venv/bin/inv lab.down --name demo"
}

run_tests() {
  deps
  lab_ready
  log "running the test suite (unit, integration, lab)"
  "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
}

case "${1:-}" in
  deps) deps ;;
  demo) demo ;;
  test) shift; run_tests "$@" ;;
  *) die "usage: ./bootstrap.sh demo | test [pytest args] | deps" ;;
esac
