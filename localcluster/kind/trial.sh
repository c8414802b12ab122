#!/usr/bin/env bash
# Issue 19, part 1: can a kind cluster run here, offline from container registries?
#
#   localcluster/kind/trial.sh [all|build|kind|kubeadm|images|node-image|create|delete]
#   localcluster/kind/trial.sh image|config|cni   # for a cluster made by hand (KIND_CLUSTER=<name> for cni)
#
# `all` (the default) builds what is missing, then runs
#   kind create cluster --name twotier-kind-trial --image <node image> --config <config>
# waits for the node to be Ready, prints `kubectl get nodes -o wide` and `kubectl get pods -A`,
# and deletes the cluster (also when a step fails; KEEP=1 keeps it for a look).
#
# Nothing is pulled from a registry. Everything comes from this machine's caches, the Go module
# proxy and Debian's mirror:
#   - the kind CLI: `go install sigs.k8s.io/kind@$KIND_VERSION`;
#   - kubeadm: built like build-binaries.sh build_kubernetes (a wrapper module) from the same
#     k8s.io/kubernetes version as the local cluster (versions.env KUBERNETES_VERSION);
#   - the control-plane images (kube-apiserver, -controller-manager, -scheduler, etcd, CoreDNS,
#     pause) are the local cluster's cached binaries in FROM scratch images; kube-proxy's is a
#     debootstrap minbase with iptables; each is tagged exactly as `kubeadm config images list` names it;
#   - the node image is a debootstrap bookworm (systemd 252: kind's trixie base was never tested on
#     cgroup v1) with kind's own node files from its module zip (entrypoint, systemd units,
#     containerd config), the project's containerd/crictl/kubelet/kubeadm/kubectl, Debian's runc and
#     CNI plugins; the images are imported into its containerd the way kind's node-image builder
#     does (pkg/build/nodeimage/buildcontext.go: run, ctr import, docker commit).
# Everything is cached by version under $TWOTIER_CACHE/kind (default /var/cache/twotier/kind); one
# progress line per step; the full output in $TWOTIER_CACHE/logs/kind-trial-<time>.log.
# Uses the dockerd that `invoke cluster.up` starts; does not start one.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
while IFS='=' read -r key value; do
  [[ $key =~ ^[A-Z0-9_]+$ ]] && [ -z "${!key:-}" ] && declare "$key=${value%%[[:space:]]*}"
done <"$here/../versions.env"
KIND_VERSION=${KIND_VERSION:-v0.33.0}
CLUSTER=${KIND_CLUSTER:-twotier-kind-trial}
NODES=${KIND_NODES:-1}
CACHE=${TWOTIER_CACHE:-/var/cache/twotier}
KC=$CACHE/kind
KV=$KUBERNETES_VERSION
BIN=$CACHE/bin
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false DOCKER_BUILDKIT=0
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
mkdir -p "$KC/src" "$CACHE/logs"
LOG=${KIND_TRIAL_LOG:-$CACHE/logs/kind-trial-$(date -u +%Y%m%dT%H%M%SZ).log}
T0=$(date +%s)

step() { printf '[kind-trial %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - T0))" "$*" | tee -a "$LOG" >&2; }
# run CMD... -- output to the log; on failure the log's tail and exit
run() {
  printf '\n$ %s\n' "$*" >>"$LOG"
  if ! "$@" >>"$LOG" 2>&1; then
    step "FAILED: $*"
    tail -n 40 "$LOG" | sed 's/^/    /' >&2
    echo "full log: $LOG" >&2
    exit 1
  fi
}
need() { [ -f "$1/.complete" ] || { echo "error: $1 is missing: run localcluster/build-binaries.sh cluster first" >&2; exit 1; }; }

KIND_BIN=$KC/kind-$KIND_VERSION/kind
# kind runs `docker run --privileged`, which this host's dockerd cannot honour: kind gets docker-shim first on its PATH
KIND=$KC/kind-$KIND_VERSION/kind-with-shim
KUBEADM=$KC/kubeadm-$KV/kubeadm
KUBECTL=$BIN/kubernetes-$KV/kubectl

# ------------------------------------------------------------------------------------------ kind CLI
build_kind() {
  if [ ! -x "$KIND_BIN" ]; then
    step "kind $KIND_VERSION: go install sigs.k8s.io/kind@$KIND_VERSION"
    run env GOBIN="$(dirname "$KIND_BIN")" nice -n 10 go install "sigs.k8s.io/kind@$KIND_VERSION"
  fi
  mkdir -p "$KC/shim"
  cp "$here/docker-shim" "$KC/shim/docker"
  printf '#!/bin/sh\nPATH=%s:$PATH exec %s "$@"\n' "$KC/shim" "$KIND_BIN" >"$KIND"
  # the same, named `kind` in a directory of its own: for PATH (Tilt runs `kind load`) and invoke
  mkdir -p "$(dirname "$KIND")/bin"
  cp "$KIND" "$(dirname "$KIND")/bin/kind"
  chmod +x "$KIND" "$(dirname "$KIND")/bin/kind" "$KC/shim/docker"
}
kind_module() { (cd "$KC/src" && go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'); }

# ------------------------------------------------------------------------------------------ kubeadm
# The same wrapper module as build-binaries.sh build_kubernetes, for cmd/kubeadm only, in our own
# cache directory; under the build lock so that two Kubernetes compiles never run at once.
build_kubeadm() {
  local out=$KC/kubeadm-$KV dir=$KC/src/kubeadm-$KV
  [ -f "$out/.complete" ] && return 0
  exec 8<>"$CACHE/.build.lock"
  if ! flock -n 8; then step "kubeadm $KV: waiting for the build lock (another build runs)"; flock 8; fi
  step "kubeadm $KV: resolving k8s.io/kubernetes@$KV and compiling cmd/kubeadm"
  rm -rf "$dir" && mkdir -p "$dir"
  printf 'module twotier.local/build\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes %s\n' "$KV" >"$dir/go.mod"
  local minor=${KV#v1.} modfile
  minor=${minor%%.*}
  modfile=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KV" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  grep -oE '^\s+k8s\.io/[a-z0-9-]+ => \./staging' "$modfile" | awk '{print $1}' | while read -r m; do
    echo "replace $m v0.0.0 => $m v0.${KV#v1.}" >>"$dir/go.mod"
  done
  echo "tool k8s.io/kubernetes/cmd/kubeadm" >>"$dir/go.mod"
  (cd "$dir" && run go mod tidy)
  local date ld="-s -w"; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KV -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  mkdir -p "$out"
  (cd "$dir" && run nice -n 10 go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ld" -o "$out/" k8s.io/kubernetes/cmd/kubeadm)
  touch "$out/.complete"
  flock -u 8
  step "kubeadm $KV: $("$out/kubeadm" version -o short)"
}

# ------------------------------------------------------------------------------------------ root filesystems
# rootfs NAME PACKAGES -- a debootstrap bookworm minbase with PACKAGES, imported as twotier-kind/NAME:<hash>
rootfs() {
  local name=$1 pkgs=$2 tag
  tag=twotier-kind/$name:$(printf '%s|%s' "$pkgs" "$MIRROR" | sha256sum | cut -c1-12)
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    step "$name rootfs: debootstrap bookworm minbase (+${pkgs//,/ })"
    local d; d=$(mktemp -d "$KC/src/rootfs-$name.XXXX")
    run nice -n 10 debootstrap --variant=minbase --include="$pkgs" bookworm "$d" "$MIRROR"
    rm -rf "$d"/var/cache/apt/archives/*.deb "$d"/var/lib/apt/lists/*
    step "$name rootfs: docker import as $tag"
    run sh -c "tar -C '$d' -c . | docker import - '$tag'"
    rm -rf "$d"
  fi
  echo "$tag"
}

# ------------------------------------------------------------------------------------------ images
# The exact refs kubeadm's static pods and addons use (and kind's sandbox image: we set it to kubeadm's pause).
image_list() { "$KUBEADM" config images list --kubernetes-version "$KV" 2>>"$LOG"; }
image_ref() { image_list | grep -E "/$1:" | head -1; }
# Docker keeps our images under twotier-kind.local/...: the registry.k8s.io/... tags in this dockerd may
# belong to the local cluster (its pause image); the node's containerd gets the registry.k8s.io names.
LOCAL_PREFIX=twotier-kind.local
local_ref() { echo "$LOCAL_PREFIX/${1#registry.k8s.io/}"; }

# scratch_image REF FILE:DEST... -- ENTRYPOINT is the first file
scratch_image() {
  local ref; ref=$(local_ref "$1"); shift
  docker image inspect "$ref" >/dev/null 2>&1 && [ "$(docker image inspect -f '{{index .Config.Labels "twotier.kind"}}' "$ref")" = "$KV" ] && return 0
  local ctx; ctx=$(mktemp -d)
  { echo "FROM scratch"; echo 'ENV PATH=/usr/local/bin:/bin'; echo "LABEL twotier.kind=$KV"; } >"$ctx/Dockerfile"
  local first=""
  for spec in "$@"; do
    cp "${spec%%:*}" "$ctx/$(basename "${spec##*:}")"
    echo "COPY $(basename "${spec##*:}") ${spec##*:}" >>"$ctx/Dockerfile"
    [ -n "$first" ] || first=${spec##*:}
  done
  echo "ENTRYPOINT [\"$first\"]" >>"$ctx/Dockerfile"
  run docker build -q -t "$ref" "$ctx"
  rm -rf "$ctx"
}

pause_binary() {
  local out=$KC/pause/pause src
  [ -x "$out" ] && { echo "$out"; return 0; }
  src=$(cd "$KC/src/kubeadm-$KV" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
  mkdir -p "$(dirname "$out")"
  run gcc -Os -Wall -Werror -static -DVERSION=twotier-kind -o "$out" "$src"
  run strip "$out"
  echo "$out"
}

build_images() {
  local dir=$KC/images-$KV
  [ -f "$dir/.complete" ] && return 0
  need "$BIN/kubernetes-$KV"; need "$BIN/etcd-$ETCD_VERSION"; need "$BIN/coredns-$COREDNS_VERSION"
  step "control-plane images for $KV: $(image_list | tr '\n' ' ')"
  mkdir -p "$dir"
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    scratch_image "$(image_ref "$c")" "$BIN/kubernetes-$KV/$c:/usr/local/bin/$c"
  done
  scratch_image "$(image_ref etcd)" "$BIN/etcd-$ETCD_VERSION/etcd:/usr/local/bin/etcd"
  scratch_image "$(image_ref coredns)" "$BIN/coredns-$COREDNS_VERSION/coredns:/coredns"
  scratch_image "$(image_ref pause)" "$(pause_binary):/pause"
  # kube-proxy runs iptables (nft backend, as the host and the node pick): a minbase with it
  local base; base=$(rootfs kube-proxy-base iptables,conntrack,ipset,kmod)
  local ref; ref=$(local_ref "$(image_ref kube-proxy)")
  local ctx; ctx=$(mktemp -d)
  cp "$BIN/kubernetes-$KV/kube-proxy" "$ctx/"
  printf 'FROM %s\nLABEL twotier.kind=%s\nCOPY kube-proxy /usr/local/bin/kube-proxy\nENTRYPOINT ["/usr/local/bin/kube-proxy"]\n' "$base" "$KV" >"$ctx/Dockerfile"
  run docker build -q -t "$ref" "$ctx"
  rm -rf "$ctx"
  step "saving the images to $dir"
  for ref in $(image_list); do
    run sh -c "docker save '$(local_ref "$ref")' >'$dir/$(basename "${ref%%:*}").tar'"
  done
  image_list >"$dir/images.txt"
  touch "$dir/.complete"
}

# ------------------------------------------------------------------------------------------ node image
NODE_PACKAGES=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps,e2fsprogs,runc,containernetworking-plugins,socat
node_image_tag() {
  printf '%s' "twotier-kind/node:$KV-$(cat "$here/trial.sh" "$here/node/"* 2>/dev/null | cat - <(echo "$CONTAINERD_VERSION $CRITOOLS_VERSION $KIND_VERSION") | sha256sum | cut -c1-10)"
}

build_node_image() {
  local tag; tag=$(node_image_tag)
  docker image inspect "$tag" >/dev/null 2>&1 && return 0
  local t0; t0=$(date +%s)
  need "$BIN/containerd-$CONTAINERD_VERSION"; need "$BIN/cri-tools-$CRITOOLS_VERSION"
  local kmod; kmod=$(kind_module)
  local base; base=$(rootfs node-base "$NODE_PACKAGES")
  local ctx; ctx=$(mktemp -d)
  step "node base: kind $KIND_VERSION node files + containerd $CONTAINERD_VERSION, crictl $CRITOOLS_VERSION, kubelet/kubeadm/kubectl $KV"
  cp -r "$kmod/images/base/files" "$ctx/files" && chmod -R u+w "$ctx/files"
  rm -f "$ctx/files/etc/systemd/system/containerd-fuse-overlayfs.service"
  mkdir -p "$ctx/bin"
  cp "$BIN/containerd-$CONTAINERD_VERSION"/{containerd,containerd-shim-runc-v2,ctr} "$BIN/cri-tools-$CRITOOLS_VERSION/crictl" \
     "$BIN/kubernetes-$KV"/{kubelet,kubectl} "$KUBEADM" "$ctx/bin/"
  local pause; pause=$(image_ref pause)
  # kind's containerd config with two changes for this host: no CAP_SYS_RESOURCE, so containerd must
  # not ask for a lower oom_score_adj than its own; the sandbox image is kubeadm's pause (built here).
  sed -i -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' \
         -e "s|sandbox_image = .*|sandbox_image = \"$pause\"|" \
         -e '/^\[proxy_plugins\]/,/^  address/d' "$ctx/files/etc/containerd/config.toml"
  cp "$here/node/"* "$ctx/" 2>/dev/null || true
  cat >"$ctx/Dockerfile" <<EOF
FROM $base
COPY files/ /
COPY bin/containerd bin/containerd-shim-runc-v2 bin/ctr bin/crictl /usr/local/bin/
COPY bin/kubelet bin/kubeadm bin/kubectl /usr/bin/
COPY twotier-entrypoint /usr/local/bin/twotier-entrypoint
COPY default-storage.yaml /kind/manifests/default-storage.yaml
RUN set -e; \
    chmod 0755 /usr/local/bin/* /kind/bin/*; \
    mkdir -p /opt/cni/bin /etc/kubernetes/manifests /etc/cni/net.d; \
    for p in host-local loopback ptp portmap bridge; do ln -sf /usr/lib/cni/\$p /opt/cni/bin/\$p; done; \
    ln -sf /usr/sbin/runc /usr/local/sbin/runc; \
    rm -f /lib/systemd/system/sysinit.target.wants/systemd-tmpfiles-setup.service; \
    rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
          /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
          /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*; \
    echo "ReadKMsg=no" >>/etc/systemd/journald.conf; \
    ln -sf /lib/systemd/systemd /sbin/init; \
    systemctl enable kubelet containerd undo-mount-hacks; \
    systemctl mask systemd-binfmt; \
    ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
      | jq 'del(.process.rlimits)' >/etc/containerd/cri-base.json; \
    echo "$KV" >/kind/version
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/twotier-entrypoint", "/sbin/init"]
EOF
  run docker build -t "$tag-base" "$ctx"
  rm -rf "$ctx"
  # kind's buildcontext.go: run the base with containerd, import the image archives (pinned), commit
  step "node image: importing $(wc -l <"$KC/images-$KV/images.txt") images into the node's containerd"
  local cid
  cid=$(docker run -d --entrypoint=sleep --security-opt seccomp=unconfined "$tag-base" infinity)
  trap "docker rm -f $cid >/dev/null 2>&1 || true" RETURN
  run docker exec "$cid" sh -c 'nohup containerd >/var/log/containerd-build.log 2>&1 &'
  local i
  for i in $(seq 1 30); do docker exec "$cid" ctr version >/dev/null 2>&1 && break; sleep 1; done
  local f
  for f in "$KC/images-$KV"/*.tar; do
    run sh -c "docker exec -i $cid ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - <'$f'"
  done
  local ref
  for ref in $(cat "$KC/images-$KV/images.txt"); do
    run docker exec "$cid" ctr --namespace=k8s.io images tag --force "$(local_ref "$ref")" "$ref"
    run docker exec "$cid" ctr --namespace=k8s.io images rm "$(local_ref "$ref")"
  done
  run docker exec "$cid" ctr --namespace=k8s.io images ls
  run docker exec "$cid" pkill containerd
  sleep 2
  run docker commit --change 'ENTRYPOINT [ "/usr/local/bin/twotier-entrypoint", "/sbin/init" ]' "$cid" "$tag"
  step "node image $tag built in $(($(date +%s) - t0))s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}

# ------------------------------------------------------------------------------------------ cluster
KUBECONFIG_FILE=${KIND_KUBECONFIG:-$KC/$CLUSTER.kubeconfig}
# KIND_REGISTRY=1: a registry container on the kind network, as kind's local-registry recipe has it
# (site/static/examples/kind-with-registry.sh): 127.0.0.1:$REGISTRY_PORT on the host, $REGISTRY_NAME:5000
# from the nodes (containerd certs.d), advertised by kube-public/local-registry-hosting (KEP-1755).
# registry:3 cannot be pulled here: the image is Debian's docker-registry on the kube-proxy base.
REGISTRY_NAME=${KIND_REGISTRY_NAME:-$CLUSTER-registry}
# not kind's 5001: that is `invoke serve`/`invoke dev`'s app port here (and 5000 the local cluster's registry)
REGISTRY_PORT=${KIND_REGISTRY_PORT:-5010}
REGISTRY_DATA=${KIND_REGISTRY_DATA:-/var/lib/twotier/kind/registry}

start_registry() {
  command -v docker-registry >/dev/null || { echo "error: docker-registry is missing: apt-get install docker-registry" >&2; exit 1; }
  local base; base=$(rootfs kube-proxy-base iptables,conntrack,ipset,kmod)
  local tag; tag=twotier-kind/registry:$(cat /usr/bin/docker-registry <(echo "$base") | sha256sum | cut -c1-12)
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    local ctx; ctx=$(mktemp -d)
    cp /usr/bin/docker-registry "$ctx/"
    printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n  delete:\n    enabled: true\nhttp:\n  addr: 0.0.0.0:5000\n' >"$ctx/config.yml"
    printf 'FROM %s\nCOPY docker-registry /usr/bin/docker-registry\nCOPY config.yml /etc/docker/registry/config.yml\nENTRYPOINT ["/usr/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"]\n' "$base" >"$ctx/Dockerfile"
    run docker build -q -t "$tag" "$ctx"
    rm -rf "$ctx"
  fi
  if [ "$(docker inspect -f '{{.State.Running}} {{.Config.Image}}' "$REGISTRY_NAME" 2>/dev/null)" != "true $tag" ]; then
    docker rm -f "$REGISTRY_NAME" >>"$LOG" 2>&1 || true
    mkdir -p "$REGISTRY_DATA"
    step "registry $REGISTRY_NAME on 127.0.0.1:$REGISTRY_PORT (data $REGISTRY_DATA)"
    run docker run -d --restart=always --name "$REGISTRY_NAME" --network kind -p "127.0.0.1:$REGISTRY_PORT:5000" \
        -v "$REGISTRY_DATA:/var/lib/registry" --label "io.x-k8s.kind.registry=$CLUSTER" "$tag"
  fi
  local node
  for node in $("$KIND" get nodes --name "$CLUSTER"); do
    run docker exec "$node" mkdir -p "/etc/containerd/certs.d/localhost:$REGISTRY_PORT"
    run docker exec -i "$node" sh -c "cat >/etc/containerd/certs.d/localhost:$REGISTRY_PORT/hosts.toml" \
        <<<"[host.\"http://$REGISTRY_NAME:5000\"]"
  done
  # KEP-1755's ConfigMap, as kind's local-registry recipe writes it (Tilt reads the registry from it)
  "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" -n kube-public create configmap local-registry-hosting --dry-run=client -o yaml \
    --from-literal=localRegistryHosting.v1="$(printf 'host: "localhost:%s"\nhelp: "%s"\n' "$REGISTRY_PORT" \
      https://kind.sigs.k8s.io/docs/user/local-registry/)" | run "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" apply -f -
  for _ in $(seq 1 30); do curl -fsS "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null 2>&1 && break; sleep 1; done
  run curl -fsS "http://127.0.0.1:$REGISTRY_PORT/v2/"
  step "registry localhost:$REGISTRY_PORT advertised (kube-public/local-registry-hosting), reachable from every node"
}
cluster_config() {
  cat <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  disableDefaultCNI: true
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/16
nodes:
- role: control-plane
$(for _ in $(seq 2 "$NODES"); do echo "- role: worker"; done)
containerdConfigPatches:
- |-
  [plugins."io.containerd.grpc.v1.cri"]
    restrict_oom_score_adj = true
kubeadmConfigPatches:
- |
  kind: KubeletConfiguration
  failCgroupV1: false
  serverTLSBootstrap: true
EOF
}

# A bridge + host-local conflist (Debian's plugins). No ipMasq: the plugin would masquerade what a
# pod sends to pods on other nodes too, and the NetworkPolicy addon would see the node's address
# instead of the pod's; MASQ_CHAIN masquerades only what leaves the pods' and the nodes' networks.
CNI_CONFLIST='{"cniVersion":"0.4.0","name":"kind-bridge","plugins":[
 {"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"hairpinMode":true,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"SUBNET"}]],"routes":[{"dst":"0.0.0.0/0"}]}},
 {"type":"portmap","capabilities":{"portMappings":true}}]}'

create_cluster() {
  local tag; tag=$(node_image_tag)
  cluster_config >"$KC/$CLUSTER.yaml"
  "$KIND" delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE" >>"$LOG" 2>&1 || true
  # kind mounts /lib/modules read-only into each node; dockerd makes the host directory when it is
  # missing (this VM has none): note that, so that delete removes the empty directory again
  [ -e /lib/modules ] || touch "$KC/.made-lib-modules"
  step "kind create cluster --name $CLUSTER --image $tag --config $KC/$CLUSTER.yaml"
  local t0; t0=$(date +%s)
  run "$KIND" create cluster --name "$CLUSTER" --image "$tag" --config "$KC/$CLUSTER.yaml" \
      --kubeconfig "$KUBECONFIG_FILE" --retain --wait 0s -v 1
  step "cluster created in $(($(date +%s) - t0))s; writing the CNI conflist into each node"
  install_cni "$t0"
  [ -z "${KIND_REGISTRY:-}" ] || start_registry
  "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get nodes -o wide | tee -a "$LOG"
  "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get pods -A -o wide | tee -a "$LOG"
}

# The network of a cluster made with default CNI off (ours, or one made by hand with `config`'s
# output): the bridge conflist with each node's pod subnet, routes between the nodes, then wait
# for the nodes and CoreDNS, and check that a pod resolves a Service name. T0: when create began.
install_cni() {
  local t0=${1:-$(date +%s)}
  local node cidr
  for node in $("$KIND" get nodes --name "$CLUSTER"); do
    # the node controller gives each node its pod subnet a few seconds after it registers
    cidr=""
    for _ in $(seq 1 120); do
      cidr=$("$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get node "$node" -o jsonpath='{.spec.podCIDR}' 2>>"$LOG" || true)
      [ -n "$cidr" ] && break
      sleep 1
    done
    [ -n "$cidr" ] || { step "FAILED: node $node got no pod subnet (spec.podCIDR) within 120s"; exit 1; }
    run docker exec -i "$node" sh -c 'cat >/etc/cni/net.d/10-bridge.conflist' <<<"${CNI_CONFLIST/SUBNET/$cidr}"
    masquerade_leaving "$node" "$cidr"
  done
  step "waiting for the node to be Ready"
  # each node's bridge knows only its own subnet: a route per other node, via that node's address
  if [ "$NODES" -gt 1 ]; then
    local table other ocidr oip
    table=$("$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}')
    for node in $("$KIND" get nodes --name "$CLUSTER"); do
      while read -r other ocidr oip; do
        [ "$other" = "$node" ] || [ -z "$ocidr" ] || run docker exec "$node" ip route replace "$ocidr" via "$oip"
      done <<<"$table"
    done
    step "routes between the $NODES nodes' pod subnets added"
  fi
  run "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" wait --for=condition=Ready node --all --timeout=300s
  step "$NODES node(s) Ready $(($(date +%s) - t0))s after create began"
  approve_serving_certificates
  run "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" -n kube-system wait --for=condition=Available deployment/coredns --timeout=180s
  step "CoreDNS available $(($(date +%s) - t0))s after create began"
  # a pod on the CNI network resolves a Service name through CoreDNS (a ClusterIP kube-proxy routes);
  # the kube-proxy image is the one at hand with a libc resolver (getent)
  run "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" run dns-check --restart=Never --image "$(image_ref kube-proxy)" \
      --command -- getent hosts kubernetes.default.svc.cluster.local
  run "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" wait --for=jsonpath='{.status.phase}'=Succeeded pod/dns-check --timeout=120s
  step "a pod resolved kubernetes.default.svc.cluster.local: $("$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" logs dns-check | tr -s ' ')"
  run "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" delete pod dns-check --wait=false
}

MASQ_CHAIN=CNI-TWOTIER-MASQ
masquerade_leaving() {  # NODE POD_CIDR
  local kindnet; kindnet=$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' | tr ' ' '\n' | grep -v : | head -1)
  run docker exec "$1" sh -ec "
    iptables -t nat -N $MASQ_CHAIN 2>/dev/null || iptables -t nat -F $MASQ_CHAIN
    for dst in 10.244.0.0/16 $kindnet 224.0.0.0/4; do iptables -t nat -A $MASQ_CHAIN -d \$dst -j RETURN; done
    iptables -t nat -A $MASQ_CHAIN -j MASQUERADE
    iptables -t nat -C POSTROUTING -s $2 -j $MASQ_CHAIN 2>/dev/null || iptables -t nat -A POSTROUTING -s $2 -j $MASQ_CHAIN"
}

# With serverTLSBootstrap (cluster_config), each kubelet asks for a serving certificate signed by the
# cluster CA (kubelet-serving CSRs are never approved automatically): approve them and wait until
# every node has one, so that metrics-server can verify the kubelets and kubectl logs/exec work.
approve_serving_certificates() {
  local node
  for node in $("$KIND" get nodes --name "$CLUSTER"); do
    docker exec "$node" grep -q '^serverTLSBootstrap: true' /var/lib/kubelet/config.yaml || return 0
  done
  local jp='{range .items[?(@.spec.signerName=="kubernetes.io/kubelet-serving")]}{.metadata.name} {.spec.username} {.status.certificate}{"\n"}{end}'
  local rows pending issued
  for _ in $(seq 1 120); do
    rows=$("$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get csr -o jsonpath="$jp" 2>>"$LOG" || true)
    pending=$(awk 'NF == 2 {print $1}' <<<"$rows")
    [ -z "$pending" ] || "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" certificate approve $pending >>"$LOG" 2>&1 || true
    issued=$(awk 'NF == 3 {print $2}' <<<"$rows" | sort -u | wc -l)
    [ "$issued" -ge "$NODES" ] && { step "kubelet serving certificates approved and issued for $NODES node(s)"; return 0; }
    sleep 1
  done
  step "FAILED: kubelet serving certificates: $issued of $NODES nodes have one after 120s"; exit 1
}

# For a cluster made by hand (`kind create cluster --name NAME --image "$(trial.sh image)" --config <(trial.sh config)`):
# its kubeconfig from kind, so that it does not matter where the user's KUBECONFIG points.
cni_for_cluster() {
  if [ -z "${KIND_KUBECONFIG:-}" ]; then
    KUBECONFIG_FILE=$(mktemp "$KC/src/$CLUSTER.kubeconfig.XXXX")
    trap "rm -f '$KUBECONFIG_FILE'" EXIT
    "$KIND" get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE" 2>>"$LOG" ||
      { step "FAILED: kind get kubeconfig --name $CLUSTER (is there such a cluster? kind get clusters)"; exit 1; }
  fi
  NODES=$("$KIND" get nodes --name "$CLUSTER" 2>>"$LOG" | wc -l)
  [ "$NODES" -gt 0 ] || { step "FAILED: no kind cluster named $CLUSTER (kind get clusters: $("$KIND" get clusters 2>/dev/null | tr '\n' ' '))"; exit 1; }
  step "cluster $CLUSTER ($NODES node(s)): writing the CNI conflist into each node"
  install_cni
}

delete_cluster() {
  [ -x "$KIND" ] || return 0
  step "kind delete cluster --name $CLUSTER"
  "$KIND" delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE" >>"$LOG" 2>&1 || true
  docker rm -f "$REGISTRY_NAME" >>"$LOG" 2>&1 || true   # its data stays in $REGISTRY_DATA
  # kind leaves its `kind` docker network behind; it is ours unless another kind cluster uses it
  if docker network inspect kind >/dev/null 2>&1 && [ -z "$(docker ps -aq --filter network=kind)" ]; then
    docker network rm kind >>"$LOG" 2>&1 || true
  fi
  if [ -f "$KC/.made-lib-modules" ] && [ -z "$(docker ps -aq --filter label=io.x-k8s.kind.cluster)" ]; then
    rmdir /lib/modules 2>/dev/null || true
    rm -f "$KC/.made-lib-modules"
  fi
}

docker info >/dev/null 2>&1 || { echo "error: dockerd is not running: the local cluster's \`invoke cluster.up\` starts it" >&2; exit 1; }
what=${1:-all}
step "log: $LOG"
case $what in
  kind) build_kind ;;
  kubeadm) build_kubeadm ;;
  images) build_kubeadm; build_images ;;
  node-image) build_kind; build_kubeadm; build_images; build_node_image ;;
  build) build_kind; build_kubeadm; build_images; build_node_image ;;
  create) create_cluster ;;
  # the pieces of a cluster made by hand (docs/kind.md, "A kind cluster made by hand")
  image) build_kind; build_kubeadm; build_images; build_node_image; echo "$(node_image_tag)" ;;
  config) cluster_config ;;
  cni) build_kind; cni_for_cluster ;;
  delete) delete_cluster ;;
  all)
    build_kind; build_kubeadm; build_images; build_node_image
    [ -n "${KEEP:-}" ] || trap 'delete_cluster' EXIT
    create_cluster ;;
  *) echo "usage: $0 [all|build|kind|kubeadm|images|node-image|create|delete|image|config|cni]" >&2; exit 2 ;;
esac
step "done ($what)"
