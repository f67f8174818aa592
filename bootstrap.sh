#!/usr/bin/env bash
# containai-ops bootstrap: install what the toolkit and its tests need on a fresh Debian/Ubuntu machine
# (as root), then run the main job against a disposable lab host, or the whole test suite.
#
#   ./bootstrap.sh demo    install, bring up a lab host with an older install and a managed container,
#                          then run `inv doctor` and `inv update` (dry run, refusal, upgrade) on it
#   ./bootstrap.sh test    install, start the lab engine, build the lab images, run every test tier
#   ./bootstrap.sh deps    install only (apt packages, .venv with the toolkit and its test extras)
#   ./bootstrap.sh system  install only the apt packages
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
VENV="$HERE/.venv"
# debian-archive-keyring: debootstrap of the Debian lab image checks Debian's signatures (Ubuntu lacks the keys)
APT_PACKAGES=(
  debootstrap debian-archive-keyring busybox-static openssh-server openssh-client systemd
  dpkg-dev fakeroot binutils xz-utils lintian git make tmux strace python3-venv python3-pip ca-certificates
)
# The lab's private engine needs a dockerd this recent; an older one is refused, a missing one installed.
MIN_DOCKERD=20.10

log() { printf '==> %s\n' "$*"; }
die() { printf 'bootstrap: %s\n' "$*" >&2; exit 1; }

# The X.Y.Z of the installed dockerd (`Docker version 26.1.3+azure-1, build ...`), or nothing.
dockerd_version() {
  command -v dockerd >/dev/null 2>&1 || return 0
  dockerd --version 2>/dev/null | sed -n 's/^Docker version \([0-9][0-9.]*\).*/\1/p'
}

# Debian's docker.io only where no Docker engine is installed: on machines with Docker's own packages
# (docker-ce + containerd.io) or GitHub runners' moby-* packages, installing docker.io conflicts with
# them, and their dockerd serves the lab as well.
engine_packages() {
  local have
  have="$(dockerd_version)"
  if [ -z "$have" ]; then
    echo docker.io
  elif dpkg --compare-versions "$have" ge "$MIN_DOCKERD"; then
    log "using the installed dockerd $have ($(command -v dockerd))" >&2
  else
    die "dockerd $have ($(command -v dockerd)) is older than $MIN_DOCKERD: upgrade it, or remove it so that Debian's docker.io is installed"
  fi
}

# apt-get install, quiet when it works and showing apt's own words when it does not.
apt_install() {
  local out
  if ! out="$(apt-get install -y -q --no-install-recommends "$@" 2>&1)"; then
    printf '%s\n' "$out" | tail -n 40 >&2
    die "apt-get install failed (apt's output above)"
  fi
}

system_packages() {
  [ "$(id -u)" -eq 0 ] || die "run as root (the lab starts a private dockerd and systemd hosts)"
  command -v apt-get >/dev/null || die "apt-get not found: a Debian or Ubuntu machine is required"
  local engine packages
  engine="$(engine_packages)"
  packages=(${engine} "${APT_PACKAGES[@]}")
  log "apt packages: ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt_install "${packages[@]}"
}

deps() {
  system_packages
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  # pip's warnings (the build backend's included) stay in the log: -q drops progress, not warnings
  log "installing containai-ops and its test extras into .venv"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e ".[test]"
  # an editable install compiles nothing and inv never writes .pyc files: compile once, as a wheel would
  "$VENV/bin/python" -m compileall -q ops tasks.py >/dev/null
}

lab_ready() {
  "$VENV/bin/inv" lab.engine
  "$VENV/bin/inv" lab.image
}

# Run a step of the demo; an exit code outside the expected ones stops the demo.
step() {
  local expected="$1"; shift
  log "inv $*"
  local rc=0
  "$VENV/bin/inv" "$@" || rc=$?
  case " $expected " in
    *" $rc "*) ;;
    *) die "inv $* exited $rc (expected ${expected// / or })" ;;
  esac
}

demo() {
  deps
  lab_ready
  local lab=/var/lib/cai-lab
  "$VENV/bin/inv" lab.up --name demo --lima-home "$lab/demo-lima"
  "$VENV/bin/inv" lab.bundle --host demo --out "$lab/demo-bundle"
  "$VENV/bin/inv" lab.container --host demo --name agent-1
  export INVOKE_CAI_LIMA_HOME="$lab/demo-lima" INVOKE_CAI_BUNDLE_DIR="$lab/demo-bundle"
  # the lab host carries an older install: doctor reports it (exit 1 when a finding is an error)
  step "0 1" doctor --target lima:demo
  step 0 update --dry-run --target lima:demo
  # a managed container runs: the update refuses (exit 2) and names the flag that proceeds
  step 2 update --target lima:demo
  step 0 update --stop-containers --target lima:demo
  step "0 1" doctor --target lima:demo
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
  system) system_packages ;;
  demo) demo ;;
  test) shift; run_tests "$@" ;;
  *) die "usage: ./bootstrap.sh demo | test [pytest args] | deps | system" ;;
esac
