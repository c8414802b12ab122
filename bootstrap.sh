#!/usr/bin/env bash
# Install everything twotier needs on a fresh Debian 12 machine, then run one invoke task.
#
#   ./bootstrap.sh up      # the main job: local cluster up, images built and pushed, system deployed, smoke-checked
#   ./bootstrap.sh test    # the whole test suite (unit, integration, Docker, end-to-end on the local cluster)
#   ./bootstrap.sh         # install only
#
# Idempotent: what is installed already is skipped, so a second run starts the task within seconds.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(docker.io docker-registry containernetworking-plugins debootstrap iptables ipset conntrack iproute2
              openssl gcc g++ libc6-dev curl ca-certificates python3-venv
              chromium fonts-liberation)  # the Tilt UI test: headless Chromium, driven by Playwright (pip)

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }

# Tilt's web UI is built with Node.js (yarn from the npm registry): use the machine's node if any.
command -v node >/dev/null || APT_PACKAGES+=(nodejs npm)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    say "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install -y ${missing[*]})"; exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then export PATH=$PATH:/usr/local/go/bin; fi
if ! command -v go >/dev/null; then
  say "Go 1.24+ is needed to build the local cluster from source (Debian 12's golang-go is too old); install it and retry"
  exit 1
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! cmp -s requirements-dev.txt .venv/.requirements 2>/dev/null \
   || ! cat services/*/requirements.txt | cmp -s - .venv/.service-requirements; then
  say "installing Python packages into .venv"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -r requirements-dev.txt
  cp requirements-dev.txt .venv/.requirements
  cat services/*/requirements.txt > .venv/.service-requirements
fi
export PATH="$PWD/.venv/bin:$PATH"
# Decisions that depend on this machine go into twotier.local.yaml (git-ignored), where every later
# `invoke` in any shell reads them; an exported variable would die with this process. No container
# registry is reachable from the reference machine, so images build FROM a local Debian base
# (base_image: local, `invoke base-image`). With a registry: INVOKE_TWOTIER_BASE_IMAGE= ./bootstrap.sh
# records base_image: '' (python:3.12-slim). A value already in the file stays unless one is given.
say "$(python -m twotier.settings record)"

next_steps() {
  say "in any new shell, one line sets it up: eval \"\$(.venv/bin/invoke cluster.env)\""
  say "(kubectl, invoke and tilt on PATH; tilt builds from source on its first use, once)"
}
case "${1:-}" in
  "") say "installed; next: ./bootstrap.sh up   or   ./bootstrap.sh test" ;;
  up) shift; invoke cluster.up && invoke up "$@" && next_steps ;;
  test) shift; invoke test "$@" ;;
  *) exec invoke "$@" ;;
esac
