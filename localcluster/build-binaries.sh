#!/usr/bin/env bash
# Build the local cluster's binaries from upstream sources through the Go module proxy.
#
#   localcluster/build-binaries.sh [kubernetes|etcd|containerd|critools|coredns|tilt|cluster|all]
#
# Each component is built in a small wrapper module under $TWOTIER_CACHE/src and installed into
# $TWOTIER_CACHE/bin/<component>-<version>/. A component whose directory already holds a
# .complete marker is not rebuilt, so a second run takes well under a second.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# The versions: localcluster/versions.env, except those the caller sets in the environment
# (localcluster/build.py passes the chosen Kubernetes release's set: localcluster/versions.py).
while IFS='=' read -r key value; do
  [[ $key =~ ^[A-Z0-9_]+$ ]] && [ -z "${!key:-}" ] && declare "$key=${value%%[[:space:]]*}"
done <"$here/versions.env"
CACHE=${TWOTIER_CACHE:-/var/cache/twotier}
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
mkdir -p "$CACHE/src" "$CACHE/bin"

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# wrapper DIR MODULE VERSION -- writes a go.mod that requires MODULE@VERSION
wrapper() {
  local dir=$1 module=$2 version=$3
  rm -rf "$dir" && mkdir -p "$dir"
  printf 'module twotier.local/build\n\ngo 1.24.0\n\nrequire %s %s\n' "$module" "$version" >"$dir/go.mod"
}

# copy_replaces DIR MODULE VERSION -- copies the non-local replace directives of MODULE's go.mod
copy_replaces() {
  local dir=$1 module=$2 version=$3 modfile
  modfile=$(cd "$dir" && go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  python3 - "$modfile" >>"$dir/go.mod" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
lines = []
for block in re.findall(r'^replace \((.*?)^\)', text, re.S | re.M):
    lines += block.strip().splitlines()
lines += re.findall(r'^replace ([^(\s].*)$', text, re.M)
for line in lines:
    line = line.split('//')[0].strip()
    if line and '=> ./' not in line and '=> ../' not in line:
        print('replace ' + line)
PY
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION out=$CACHE/bin/kubernetes-$KUBERNETES_VERSION dir=$CACHE/src/kubernetes-$KUBERNETES_VERSION
  [ -f "$out/.complete" ] && return 0
  log "kubernetes $v: resolving its Go modules"
  wrapper "$dir" k8s.io/kubernetes "$v"
  local minor=${v#v1.}; minor=${minor%%.*}
  local modfile
  modfile=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  # Every staging module is required at v0.0.0 with a replace to ./staging: point them at v0.<minor>.<patch>.
  grep -oE '^\s+k8s\.io/[a-z0-9-]+ => \./staging' "$modfile" | awk '{print $1}' | while read -r m; do
    echo "replace $m v0.0.0 => $m v0.${v#v1.}" >>"$dir/go.mod"
  done
  local cmds="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
  for c in $cmds; do echo "tool k8s.io/kubernetes/cmd/$c" >>"$dir/go.mod"; done
  (cd "$dir" && go mod tidy >/dev/null)
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  log "kubernetes $v: compiling $cmds"
  mkdir -p "$out"
  (cd "$dir" && go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ld" -o "$out/" \
      $(for c in $cmds; do echo k8s.io/kubernetes/cmd/$c; done))
  touch "$out/.complete"
  log "kubernetes $v: done"
}

build_etcd() {
  local v=$ETCD_VERSION out=$CACHE/bin/etcd-$ETCD_VERSION dir=$CACHE/src/etcd-$ETCD_VERSION
  [ -f "$out/.complete" ] && return 0
  log "etcd $v: resolving its Go modules"
  wrapper "$dir" go.etcd.io/etcd/server/v3 "$v"
  copy_replaces "$dir" go.etcd.io/etcd/server/v3 "$v"
  # etcd's main package lives in the go.etcd.io/etcd/v3 root module; etcdmain.Main is in server/v3.
  cat >"$dir/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$dir" && go mod tidy >/dev/null)
  log "etcd $v: compiling"
  mkdir -p "$out"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" .)
  touch "$out/.complete"
  log "etcd $v: done"
}

build_containerd() {
  local v=$CONTAINERD_VERSION out=$CACHE/bin/containerd-$CONTAINERD_VERSION dir=$CACHE/src/containerd-$CONTAINERD_VERSION
  [ -f "$out/.complete" ] && return 0
  log "containerd $v: resolving its Go modules"
  wrapper "$dir" github.com/containerd/containerd/v2 "$v"
  copy_replaces "$dir" github.com/containerd/containerd/v2 "$v"
  local cmds="containerd containerd-shim-runc-v2 ctr"
  for c in $cmds; do echo "tool github.com/containerd/containerd/v2/cmd/$c" >>"$dir/go.mod"; done
  (cd "$dir" && go mod tidy >/dev/null)
  log "containerd $v: compiling containerd, its shim and ctr"
  mkdir -p "$out"
  local ld="-s -w -X github.com/containerd/containerd/v2/version.Version=$v"
  (cd "$dir" && go build -trimpath -tags "no_btrfs no_devmapper no_zfs" -ldflags "$ld" -o "$out/" \
      $(for c in $cmds; do echo github.com/containerd/containerd/v2/cmd/$c; done))
  touch "$out/.complete"
  log "containerd $v: done"
}

build_coredns() {
  local v=$COREDNS_VERSION out=$CACHE/bin/coredns-$COREDNS_VERSION dir=$CACHE/src/coredns-$COREDNS_VERSION
  [ -f "$out/.complete" ] && return 0
  log "coredns $v: resolving its Go modules"
  wrapper "$dir" github.com/coredns/coredns "$v"
  copy_replaces "$dir" github.com/coredns/coredns "$v"
  echo "tool github.com/coredns/coredns" >>"$dir/go.mod"
  (cd "$dir" && go mod tidy >/dev/null)
  log "coredns $v: compiling"
  mkdir -p "$out"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$out/coredns" github.com/coredns/coredns)
  touch "$out/.complete"
  log "coredns $v: done"
}

build_critools() {
  local v=$CRITOOLS_VERSION out=$CACHE/bin/cri-tools-$CRITOOLS_VERSION dir=$CACHE/src/cri-tools-$CRITOOLS_VERSION
  [ -f "$out/.complete" ] && return 0
  log "crictl $v: resolving its Go modules"
  wrapper "$dir" sigs.k8s.io/cri-tools "$v"
  copy_replaces "$dir" sigs.k8s.io/cri-tools "$v"
  echo "tool sigs.k8s.io/cri-tools/cmd/crictl" >>"$dir/go.mod"
  (cd "$dir" && go mod tidy >/dev/null)
  log "crictl $v: compiling"
  mkdir -p "$out"
  (cd "$dir" && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$v" -o "$out/crictl" sigs.k8s.io/cri-tools/cmd/crictl)
  touch "$out/.complete"
  log "crictl $v: done"
}

build_tilt() {
  # Tilt is built from a writable copy of its module, not a wrapper: the module ships without its
  # web UI (pkg/assets/build holds only robots.txt), and a release build (main.version set) serves
  # only embedded assets, so the UI is compiled with the module's own pinned yarn and copied into
  # pkg/assets/build before `go build` embeds it. Building in the copy uses Tilt's own go.mod and
  # go.sum, replace directives included.
  local v=$TILT_VERSION out=$CACHE/bin/tilt-$TILT_VERSION dir=$CACHE/src/tilt-$TILT_VERSION
  [ -f "$out/.complete" ] && return 0
  command -v node >/dev/null || { echo "error: tilt's web UI needs Node.js >= 20 (apt-get install nodejs)" >&2; return 1; }
  log "tilt $v: fetching the module source"
  local json moddir date
  json=$(cd "$CACHE/src" && go mod download -json "github.com/tilt-dev/tilt@$v")
  moddir=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])' <<<"$json")
  date=$(python3 -c 'import json,sys; print(json.load(open(json.load(sys.stdin)["Info"]))["Time"])' <<<"$json")
  rm -rf "$dir" && cp -r "$moddir" "$dir" && chmod -R u+w "$dir"
  # Tilt's go.sum pins github.com/docker/buildx v0.32.1 at h1:Zlau3o..., but the module proxy serves a
  # zip whose hash, h1:ecen0V..., is the one its checksum database (sumdb) records. A wrapper module
  # would accept that silently; here the swap is explicit and pinned, so any other change still fails.
  sed -i 's|^github.com/docker/buildx v0.32.1 h1:Zlau3oApu/xjwgRsOc4YLcnmpHUsCXOH1GR6KlOhTME=$|github.com/docker/buildx v0.32.1 h1:ecen0VNo7UINEv+Wx7xDPlTH5nQ1EaxzFOoslYIISuk=|' "$dir/go.sum"
  log "tilt $v: building the web UI with yarn (a few minutes)"
  [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ] && export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
  (cd "$dir/web" &&
    export YARN_ENABLE_TELEMETRY=0 YARN_ENABLE_PROGRESS_BARS=0 YARN_CACHE_FOLDER=$CACHE/src/yarn-cache &&
    node .yarn/releases/yarn-*.cjs install --immutable >"$dir/yarn-install.log" 2>&1 &&
    GENERATE_SOURCEMAP=false node .yarn/releases/yarn-*.cjs build >"$dir/yarn-build.log" 2>&1) ||
    { echo "error: tilt web UI build failed, see $dir/yarn-*.log" >&2; return 1; }
  cp -r "$dir/web/build/." "$dir/pkg/assets/build/"
  rm -rf "$dir/web/node_modules"
  log "tilt $v: compiling"
  mkdir -p "$out"
  # cgo: Tiltfile language support (starlark-lsp) uses go-tree-sitter, a C library.
  (cd "$dir" && CGO_ENABLED=1 go build -trimpath -tags osusergo \
      -ldflags "-s -w -X main.version=${v#v} -X main.date=$date" -o "$out/tilt" ./cmd/tilt)
  "$out/tilt" version >&2
  touch "$out/.complete"
  log "tilt $v: done"
}

# build_go_tool NAME VERSION MODULE PACKAGE [LDFLAGS] -- a cluster addon's binary (localcluster/addons.py
# declares each addon and calls this with `go-tool ...`): a wrapper module that requires MODULE@VERSION
# with its replace directives, builds PACKAGE statically into $CACHE/bin/NAME-VERSION/NAME.
build_go_tool() {
  local name=$1 v=$2 module=$3 pkg=$4 ld="-s -w ${5:-}"
  local out=$CACHE/bin/$name-$v dir=$CACHE/src/$name-$v
  [ -f "$out/.complete" ] && return 0
  log "$name $v: resolving its Go modules"
  wrapper "$dir" "$module" "$v"
  copy_replaces "$dir" "$module" "$v"
  echo "tool $pkg" >>"$dir/go.mod"
  (cd "$dir" && go mod tidy >/dev/null)
  log "$name $v: compiling"
  mkdir -p "$out"
  (cd "$dir" && go build -trimpath -ldflags "$ld" -o "$out/$name" "$pkg")
  touch "$out/.complete"
  log "$name $v: done"
}

what=${1:-all}
# One build at a time per cache: a second caller waits, then finds the .complete markers (a second
# build in the same directory would delete and rewrite the source tree the first compiles from).
# A caller that already holds the lock (localcluster/build.py) passes its descriptor down.
if [ -n "${TWOTIER_BUILD_LOCK_FD:-}" ]; then
  lockfd=$TWOTIER_BUILD_LOCK_FD
else
  exec 9<>"$CACHE/.build.lock"   # <> and not >: opening must not truncate the holder's pid
  lockfd=9
fi
if ! flock -n "$lockfd"; then
  ino=$(stat -c %i "$CACHE/.build.lock")
  holder=$(awk -v ino="$ino" '$2 == "FLOCK" { n = split($6, a, ":"); if (a[n] == ino) print $5 }' /proc/locks | head -1)
  # /proc/locks names the process that took the lock (maybe an exited `flock`); else the holder's note
  if [ -z "$holder" ] || [ ! -d "/proc/$holder" ]; then holder=$(head -c 32 "$CACHE/.build.lock" 2>/dev/null | tr -dc 0-9); fi
  log "waiting for another build (pid ${holder:-unknown}) to finish ..."
  flock "$lockfd"
fi
[ -n "${TWOTIER_BUILD_LOCK_FD:-}" ] || printf '%s\n' "$$" >"$CACHE/.build.lock"  # for the next waiter
case $what in
  cluster) build_etcd; build_containerd; build_critools; build_coredns; build_kubernetes ;;
  all) build_etcd; build_containerd; build_critools; build_coredns; build_kubernetes; build_tilt ;;
  kubernetes|etcd|containerd|critools|coredns|tilt) "build_$what" ;;
  go-tool) shift; [ $# -ge 4 ] || { echo "usage: $0 go-tool NAME VERSION MODULE PACKAGE [LDFLAGS]" >&2; exit 2; }; build_go_tool "$@" ;;
  *) echo "usage: $0 [kubernetes|etcd|containerd|critools|coredns|tilt|cluster|all]" >&2; exit 2 ;;
esac
