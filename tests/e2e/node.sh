#!/usr/bin/env bash
# A one-node Kubernetes cluster on this machine, without Docker or any
# registry: the local control plane (tests/controlplane) plus kube-scheduler,
# containerd with runc, kubelet, kube-proxy (nftables) and a bridge pod
# network, with hookrelay's image built here and imported as hookrelay:e2e.
#
#   node.sh build    build kubelet, kube-proxy, kube-scheduler, containerd and
#                    the sandbox (pause) program into the cache (once per pin)
#   node.sh image    build the release binary and write the image archive
#   node.sh up       build if needed, start (or reuse) the cluster, import the
#                    images; its last two lines are `kubeconfig: PATH` and
#                    `host-address: IP` (where pods reach this machine)
#   node.sh down     stop every process it started (by pid) and remove every
#                    mount, network namespace, device, route and packet-filter
#                    rule it made; restore the kernel settings it changed
#   node.sh status   exit 0 when the node is Ready
#   node.sh kubectl ARGS... / helm ARGS...   as the admin user
#
# Network rule: all traffic stays on this machine. Pods live on the bridge
# hookrelay0 (10.244.0.0/24) with no default route; the host is 10.244.0.1,
# where kube-apiserver listens. The service range is routed to the bridge
# only. Forwarding is allowed from the bridge to the bridge and nowhere else
# (table inet hookrelay_node), and nothing is masqueraded out of the machine.
#
# Needs root, runc, nft and iptables, and the CNI plugins in /usr/lib/cni
# (Debian: runc nftables iptables containernetworking-plugins).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
controlplane=$repo/tests/controlplane/controlplane.sh
. "$repo/tests/controlplane/VERSION"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

cache=${HOOKRELAY_CACHE:-$HOME/.cache/hookrelay}
build_key=$(cat "$repo/tests/controlplane/k8s/go.sum" "$here/node/containerd/go.sum" "$here/node/pause/main.go" |
  sha256sum | cut -c1-12)
bin_dir=$cache/node-${KUBERNETES_VERSION}-${build_key}/bin
run_dir=${HOOKRELAY_NODE_DIR:-$cache/node}
cni_bin=${HOOKRELAY_CNI_BIN:-/usr/lib/cni}

bridge=hookrelay0
pod_cidr=10.244.0.0/24
host_address=10.244.0.1
service_cidr=10.0.0.0/24 # the control plane's --service-cluster-ip-range
node_name=hookrelay-node
nft_table=hookrelay_node
sandbox_image=hookrelay.local/pause:e2e
hookrelay_image=docker.io/library/hookrelay:e2e
# A shell for the suite's ephemeral containers (tests/e2e/main.rs).
debug_image=docker.io/library/busybox:e2e
# Kernel settings kubelet and kube-proxy change, and the two this script
# needs: each is restored by `down` to what it was before `up`.
sysctls=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait)

# Where containerd, runc, CNI and kubelet keep things whatever they are told
# (shim sockets, runc state, the CNI cache, device plugins, network
# namespaces): `down` removes those of them that `up` found missing.
outside_dirs=(/run/containerd /run/nri /run/netns /var/lib/kubelet /var/lib/cni)

# The control plane this node joins: its own instance, listening on the bridge.
export HOOKRELAY_CONTROLPLANE_DIR=$run_dir/controlplane
export HOOKRELAY_APISERVER_ADDRESS=$host_address
export HOOKRELAY_CONTROLLERS='*'

log() { echo "node: $*" >&2; }
die() { log "error: $*"; exit 1; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
kubectl() { "$("$controlplane" bin)/kubectl" --kubeconfig "$HOOKRELAY_CONTROLPLANE_DIR/admin.kubeconfig" "$@"; }
ctr() { "$bin_dir/ctr" --address "$run_dir/containerd/containerd.sock" --namespace k8s.io "$@"; }

wait_for() { # description seconds command...
  local what=$1 deadline=$((SECONDS + $2)); shift 2
  log "waiting for $what"
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

build() {
  "$controlplane" build
  if [[ -x $bin_dir/kubelet && -x $bin_dir/kube-proxy && -x $bin_dir/kube-scheduler && -x $bin_dir/containerd &&
    -x $bin_dir/containerd-shim-runc-v2 && -x $bin_dir/ctr && -f $bin_dir/pause.tar && -f $bin_dir/busybox.tar ]]; then
    log "using cached binaries in $bin_dir"
    return
  fi
  command -v go >/dev/null || die "go is not installed (needed to build the node)"
  log "building kubelet, kube-proxy, kube-scheduler ${KUBERNETES_VERSION} and containerd into $bin_dir"
  local started=$SECONDS tmp="$bin_dir.tmp"
  rm -rf "$tmp" && mkdir -p "$tmp"
  "$controlplane" build-k8s "$tmp" kubelet kube-proxy kube-scheduler
  (cd "$here/node/containerd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/" \
    github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr)
  # The pod sandbox image: a static program that waits for a signal.
  local rootfs; rootfs=$(mktemp -d)
  (cd "$here/node/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$rootfs/pause" .)
  python3 "$here/node/oci-image.py" "$rootfs" "$tmp/pause.tar" "$sandbox_image" --entrypoint /pause --user 65535:65535
  rm -rf "$rootfs"
  # The debug image: Debian's static busybox and the applets the suite runs.
  local busybox; busybox=$(command -v busybox) || die "busybox is not installed (Debian: busybox-static)"
  rootfs=$(mktemp -d) && mkdir "$rootfs/bin"
  install -m 0755 "$busybox" "$rootfs/bin/busybox"
  for applet in sh grep awk cat ls id; do ln -s busybox "$rootfs/bin/$applet"; done
  python3 "$here/node/oci-image.py" "$rootfs" "$tmp/busybox.tar" "$debug_image" --entrypoint /bin/sh
  rm -rf "$rootfs"
  rm -rf "$bin_dir" && mv "$tmp" "$bin_dir"
  log "built in $((SECONDS - started))s"
}

# hookrelay's image without Docker: the release binary, the shared libraries
# it links, CA certificates and a passwd naming 65532, as the Dockerfile's
# distroless base has; the same entrypoint and user as the Dockerfile.
image() {
  local started=$SECONDS
  (cd "$repo" && cargo build --release --locked --bin hookrelay)
  local binary=${CARGO_TARGET_DIR:-$repo/target}/release/hookrelay rootfs
  rootfs=$(mktemp -d)
  install -m 0755 "$binary" "$rootfs/hookrelay"
  local lib
  for lib in $(ldd "$binary" | grep -oE '/[^ ]+'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
  mkdir -p "$rootfs/tmp" && chmod 1777 "$rootfs/tmp"
  mkdir -p "$run_dir"
  python3 "$here/node/oci-image.py" "$rootfs" "$run_dir/hookrelay-image.tar" "$hookrelay_image" \
    --entrypoint /hookrelay --user 65532:65532
  rm -rf "$rootfs"
  log "image $hookrelay_image written in $((SECONDS - started))s ($(du -h "$run_dir/hookrelay-image.tar" | cut -f1))"
}

start() { # name command args...: in the background, logging to logs/NAME.log
  local name=$1; shift
  "$@" >> "$run_dir/logs/$name.log" 2>&1 9>&- &
  echo $! > "$run_dir/$name.pid"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

node_ready() {
  [[ $(kubectl get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

running() {
  local name
  for name in containerd kubelet kube-proxy kube-scheduler; do alive "$run_dir/$name.pid" || return 1; done
  "$controlplane" status && node_ready
}

network_up() {
  # Kernel settings as they were, once: a second `up` must not record ours.
  if [[ ! -f $run_dir/sysctl.saved ]]; then
    local key
    for key in "${sysctls[@]}"; do
      [[ -e /proc/sys/${key//.//} ]] && echo "$key=$(cat "/proc/sys/${key//.//}")"
    done > "$run_dir/sysctl.saved"
    nft list tables | sed 's/^table //' > "$run_dir/nft.saved"
    local dir
    for dir in "${outside_dirs[@]}"; do [[ -e $dir ]] || echo "$dir"; done > "$run_dir/dirs.created"
  fi
  ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge
  ip addr show dev "$bridge" | grep -q "inet $host_address/" || ip addr add "$host_address/24" dev "$bridge"
  ip link set "$bridge" up
  # Service addresses go to the bridge, never to the default route.
  ip route replace "$service_cidr" dev "$bridge" src "$host_address"
  # Pod to service to pod on one bridge needs forwarding and bridged packets
  # seen by netfilter; the table below keeps that forwarding on the bridge.
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  nft -f - <<NFT
table inet $nft_table
delete table inet $nft_table
table inet $nft_table {
  chain forward {
    type filter hook forward priority -10; policy drop;
    iifname "$bridge" oifname "$bridge" accept
  }
}
NFT
}

drop_kube_chains() { # family table
  local tool=iptables rule chain
  [[ $1 == ip6 ]] && tool=ip6tables
  "$tool" -t "$2" -S | grep -E '^-A .* -j KUBE-' | sed 's/^-A/-D/' | while read -r rule; do
    eval "$tool -t $2 $rule" || true
  done
  for chain in $("$tool" -t "$2" -S | awk '/^-N KUBE-/ {print $2}'); do
    "$tool" -t "$2" -F "$chain" && "$tool" -t "$2" -X "$chain" || true
  done
}

network_down() {
  nft delete table inet "$nft_table" 2>/dev/null || true
  nft delete table ip kube-proxy 2>/dev/null || true
  nft delete table ip6 kube-proxy 2>/dev/null || true
  # kubelet's chains (KUBE-FIREWALL, canaries) in iptables-nft's tables: a
  # table that did not exist before `up` goes whole, else only those chains.
  # Without the record of `up` (nothing was started) nothing is touched.
  local family table
  if [[ -f $run_dir/nft.saved ]]; then
    for family in ip ip6; do
      for table in filter nat mangle; do
        nft list table "$family" "$table" >/dev/null 2>&1 || continue
        if grep -qx "$family $table" "$run_dir/nft.saved"; then
          drop_kube_chains "$family" "$table"
        else
          nft delete table "$family" "$table"
        fi
      done
    done
    rm -f "$run_dir/nft.saved"
  fi
  ip link del "$bridge" 2>/dev/null || true
  if [[ -f $run_dir/sysctl.saved ]]; then
    sysctl -qw $(cat "$run_dir/sysctl.saved") >/dev/null 2>&1 || true
    rm -f "$run_dir/sysctl.saved"
  fi
}

write_configs() {
  local kubelet_kubeconfig=$1 proxy_kubeconfig=$2
  mkdir -p "$run_dir/cni" "$run_dir/kubelet" "$run_dir/containerd"
  # No name server reachable from pods: nothing resolves outside the machine.
  echo "nameserver 127.0.0.1" > "$run_dir/resolv.conf"
  cat > "$run_dir/cni/10-hookrelay.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "hookrelay-node",
  "plugins": [{
    "type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {
      "type": "host-local", "dataDir": "$run_dir/cni-ipam",
      "ranges": [[{"subnet": "$pod_cidr", "gateway": "$host_address"}]],
      "routes": [{"dst": "$service_cidr"}]
    }
  }]
}
JSON
  cat > "$run_dir/containerd/config.toml" <<TOML
version = 3
root = "$run_dir/containerd/root"
state = "$run_dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs", "io.containerd.nri.v1.nri"]
[grpc]
  address = "$run_dir/containerd/containerd.sock"
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "$sandbox_image"
[plugins.'io.containerd.cri.v1.runtime']
  # Root here lacks CAP_SYS_RESOURCE, so no process may lower its OOM score:
  # containers get at least containerd's own (sandboxes ask for -998).
  restrict_oom_score_adj = true
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["$cni_bin"]
  conf_dir = "$run_dir/cni"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "$(command -v runc)"
TOML
  cat > "$run_dir/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $host_address
port: $(free_port)
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(free_port)
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $HOOKRELAY_CONTROLPLANE_DIR/pki/ca.crt}
authorization: {mode: Webhook}
# This machine mounts cgroup v1 and has no systemd.
cgroupDriver: cgroupfs
failCgroupV1: false
containerRuntimeEndpoint: unix://$run_dir/containerd/containerd.sock
resolvConf: $run_dir/resolv.conf
clusterDomain: cluster.local
staticPodPath: ""
serializeImagePulls: false
# A test machine's disk may be fuller than a node's: evict only when nearly out.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
YAML
  cat > "$run_dir/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: $node_name
clientConnection: {kubeconfig: $proxy_kubeconfig}
clusterCIDR: $pod_cidr
# NodePorts on the bridge address only, never on the machine's interfaces.
nodePortAddresses: ["$host_address/32"]
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
# Leave the machine's conntrack settings alone.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
}

import_images() {
  ctr images import --no-unpack=false "$bin_dir/pause.tar" >/dev/null
  ctr images label "$sandbox_image" io.cri-containerd.pinned=pinned >/dev/null
  ctr images import "$bin_dir/busybox.tar" >/dev/null
  ctr images import "$run_dir/hookrelay-image.tar" >/dev/null
  log "imported $sandbox_image, $debug_image and $hookrelay_image"
}

up() {
  [[ $(id -u) == 0 ]] || die "needs root (it creates a bridge, network namespaces and mounts)"
  local tool
  for tool in runc nft iptables ip python3 ldd busybox; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
  done
  [[ -x $cni_bin/bridge && -x $cni_bin/host-local && -x $cni_bin/loopback ]] ||
    die "CNI plugins bridge, host-local and loopback not found in $cni_bin"
  mkdir -p "$cache" "$run_dir/logs"
  exec 9>"$cache/node.lock"
  flock 9
  build
  image
  if running; then
    log "reusing the running node"
    import_images
    print_result
    return
  fi
  down >/dev/null 2>&1 || true
  mkdir -p "$run_dir/logs"
  local started=$SECONDS
  network_up
  "$controlplane" up >/dev/null
  local kubelet_kc proxy_kc scheduler_kc
  kubelet_kc=$("$controlplane" identity kubelet "system:node:$node_name" system:nodes)
  proxy_kc=$("$controlplane" identity kube-proxy system:kube-proxy)
  scheduler_kc=$("$controlplane" identity kube-scheduler system:kube-scheduler)
  write_configs "$kubelet_kc" "$proxy_kc"

  PATH="$bin_dir:$PATH" start containerd "$bin_dir/containerd" --config "$run_dir/containerd/config.toml"
  wait_for "containerd" 60 ctr version || { tail -20 "$run_dir/logs/containerd.log" >&2; die "containerd did not start"; }
  import_images

  start kube-scheduler "$bin_dir/kube-scheduler" --kubeconfig "$scheduler_kc" \
    --authentication-kubeconfig "$scheduler_kc" --authorization-kubeconfig "$scheduler_kc" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$(free_port)"
  start kubelet "$bin_dir/kubelet" --config "$run_dir/kubelet/config.yaml" --kubeconfig "$kubelet_kc" \
    --root-dir "$run_dir/kubelet/root" --cert-dir "$run_dir/kubelet/pki" --hostname-override "$node_name" --node-ip "$host_address"
  start kube-proxy "$bin_dir/kube-proxy" --config "$run_dir/kube-proxy.yaml"

  if ! wait_for "node $node_name Ready" 120 node_ready; then
    local name
    for name in containerd kubelet kube-proxy kube-scheduler; do
      alive "$run_dir/$name.pid" || log "$name exited"
      tail -15 "$run_dir/logs/$name.log" >&2
    done
    die "node $node_name did not become Ready within 120s (logs in $run_dir/logs)"
  fi
  wait_for "the default ServiceAccount" 60 kubectl get serviceaccount default -n default ||
    die "no default ServiceAccount after 60s"
  log "started in $((SECONDS - started))s (logs in $run_dir/logs)"
  print_result
}

print_result() {
  echo "kubeconfig: $HOOKRELAY_CONTROLPLANE_DIR/admin.kubeconfig"
  echo "host-address: $host_address"
}

stop_pid() { # pidfile
  alive "$1" || { rm -f "$1"; return 0; }
  local pid; pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}

# Every process in the node's pod cgroups (the containers this node ran).
kill_pods() {
  local procs
  for procs in $(find /sys/fs/cgroup/pids/kubepods* -name cgroup.procs 2>/dev/null); do
    xargs -r kill -9 < "$procs" 2>/dev/null || true
  done
}

down() {
  local name
  for name in kube-proxy kubelet kube-scheduler; do stop_pid "$run_dir/$name.pid"; done
  kill_pods
  # The shims this containerd started (they outlive it otherwise).
  local shims
  shims=$(pgrep -f "containerd-shim-runc-v2 .*-address $run_dir/containerd/containerd.sock" || true)
  [[ -n $shims ]] && kill -9 $shims 2>/dev/null || true
  stop_pid "$run_dir/containerd.pid"
  "$controlplane" down >/dev/null 2>&1 || true
  # Network namespaces of this node's pods (containerd names them cni-*).
  local netns
  for netns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-' || true); do
    ip netns delete "$netns" 2>/dev/null || true
  done
  # Mounts under the run directory and the directories `up` created, deepest first.
  local mount dir
  for dir in "$run_dir" $(cat "$run_dir/dirs.created" 2>/dev/null); do
    for mount in $(awk -v d="$dir" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r); do
      umount -l "$mount" 2>/dev/null || true
    done
  done
  # What the runtime and kubelet kept of the pods (images are imported anew).
  rm -rf "$run_dir/containerd" "$run_dir/kubelet" "$run_dir/cni-ipam"
  if [[ -f $run_dir/dirs.created ]]; then
    xargs -r rm -rf < "$run_dir/dirs.created"
    rm -f "$run_dir/dirs.created"
  fi
  # The pod cgroups kubelet made, deepest first.
  local dir
  for dir in $(find /sys/fs/cgroup/*/kubepods* -depth -type d 2>/dev/null); do
    rmdir "$dir" 2>/dev/null || true
  done
  network_down
  log "stopped"
}

status() { running; }

case ${1:-} in
  build) build ;;
  image) image ;;
  up) up ;;
  down) down ;;
  status) status ;;
  kubectl) shift; kubectl "$@" ;;
  helm) shift; exec "$("$controlplane" bin)/helm" --kubeconfig "$HOOKRELAY_CONTROLPLANE_DIR/admin.kubeconfig" "$@" ;;
  *) echo "usage: $0 build|image|up|down|status|kubectl ARGS...|helm ARGS..." >&2; exit 2 ;;
esac
