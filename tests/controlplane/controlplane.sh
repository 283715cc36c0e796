#!/usr/bin/env bash
# A real local Kubernetes control plane for tests and the demo: etcd,
# kube-apiserver and kube-controller-manager built from the Kubernetes Go
# modules pinned in ./VERSION, started on loopback with RBAC on; plus the
# kubectl of that release and helm for the chart tests.
#
#   controlplane.sh build   build the binaries into the cache (once per go.sum)
#   controlplane.sh up      build if needed, start (or reuse) the control plane;
#                           the last line printed is the admin kubeconfig path
#   controlplane.sh down    stop the control plane started by `up`
#   controlplane.sh status  exit 0 if a started control plane answers /readyz
#   controlplane.sh kubectl ARGS... / helm ARGS...
#                           the kubectl and helm built with it, as the admin user
#   controlplane.sh bin     the directory of the built binaries
#   controlplane.sh helm-docs ARGS...
#                           helm-docs (built once), for the chart's README
#   controlplane.sh jaeger-bin
#                           Jaeger (built once from ./jaeger), for the tracing
#                           tests; prints the binary's path
#
# Environment: HOOKRELAY_CACHE (default ~/.cache/hookrelay) holds binaries;
# HOOKRELAY_CONTROLPLANE_DIR (default $HOOKRELAY_CACHE/controlplane) holds the
# running instance's certs, kubeconfigs, data and logs; ETCD_UNSAFE_NO_FSYNC=false
# keeps fsync on (benchmarks). For a cluster with a node (tests/e2e/node.sh):
# HOOKRELAY_APISERVER_ADDRESS (default 127.0.0.1) is where kube-apiserver listens
# and what it advertises (pods reach it there), HOOKRELAY_CONTROLLERS the
# controller manager's controllers (default: the few the tests rely on).
#
#   controlplane.sh build-k8s DIR COMMAND...
#                           build more commands of the pinned release into DIR
#   controlplane.sh identity NAME CN [GROUP]
#                           a client certificate and kubeconfig for one more
#                           identity (a node, the scheduler); prints its path
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/VERSION"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

cache=${HOOKRELAY_CACHE:-$HOME/.cache/hookrelay}
# Keyed on the module sums: a changed pin builds anew, an unchanged one never does.
build_key=$(cat "$here/k8s/go.sum" "$here/etcd/go.sum" "$here/helm/go.sum" | sha256sum | cut -c1-12)
bin_dir="$cache/k8s-${KUBERNETES_VERSION}-${build_key}/bin"
run_dir=${HOOKRELAY_CONTROLPLANE_DIR:-$cache/controlplane}
address=${HOOKRELAY_APISERVER_ADDRESS:-127.0.0.1}
# Only the controllers the tests rely on: garbage collection of
# ownerReferences, namespace deletion, default ServiceAccounts, root CA.
controllers=${HOOKRELAY_CONTROLLERS:-garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller}
pki=$run_dir/pki

log() { echo "controlplane: $*" >&2; }
die() { log "error: $*"; exit 1; }

build() {
  if [[ -x $bin_dir/kube-apiserver && -x $bin_dir/kube-controller-manager && -x $bin_dir/kubectl &&
    -x $bin_dir/etcd && -x $bin_dir/helm ]]; then
    # helm built before it was stamped with its Kubernetes version: again, alone.
    [[ -f $bin_dir/helm.stamped ]] || build_helm "$bin_dir"
    log "using cached binaries in $bin_dir"
    return
  fi
  command -v go >/dev/null || die "go is not installed (needed to build the control plane)"
  log "building Kubernetes ${KUBERNETES_VERSION} and etcd ${ETCD_VERSION} into $bin_dir (cold: 10-25 min on 2 cores)"
  local started=$SECONDS tmp="$bin_dir.tmp"
  rm -rf "$tmp" && mkdir -p "$tmp"
  build_k8s "$tmp" kube-apiserver kube-controller-manager kubectl
  (cd "$here/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
  build_helm "$tmp"
  rm -rf "$bin_dir" && mv "$tmp" "$bin_dir"
  log "built in $((SECONDS - started))s: $(cd "$bin_dir" && du -h kube-apiserver kube-controller-manager kubectl etcd helm | tr '\t\n' ' ')"
}

# helm into DIR, with the ldflags of helm's own release build: without them
# `helm template` assumes Kubernetes 1.20 and refuses a chart needing newer.
build_helm() { # dir
  local client_go major minor
  client_go=$(cd "$here/helm" && go list -f '{{.Version}}' -m k8s.io/client-go) # v0.37.0: Kubernetes 1.37
  minor=$(cut -d. -f2 <<<"$client_go")
  major=$(($(cut -d. -f1 <<<"${client_go#v}") + 1))
  (cd "$here/helm" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
    -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    -o "$1/helm" helm.sh/helm/v3/cmd/helm)
  touch "$1/helm.stamped"
}

# Jaeger (an OpenTelemetry trace store with an OTLP receiver), built once
# from the module pinned in ./jaeger; prints the binary's path. Tests may
# ask at once: one builds, the others wait.
jaeger_bin() {
  local dir
  dir="$cache/tools/jaeger-$(sha256sum "$here/jaeger/go.sum" | cut -c1-12)"
  mkdir -p "$cache/tools"
  exec 8>"$cache/tools/jaeger.lock"
  flock 8
  if [[ ! -x $dir/jaeger ]]; then
    command -v go >/dev/null || die "go is not installed (needed to build jaeger)"
    log "building jaeger into $dir (cold: about 5 min on 2 cores)"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    (cd "$here/jaeger" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir.tmp/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger) >&2
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  echo "$dir/jaeger"
}

# helm-docs (for the chart's README), built once from the Go module proxy.
helm_docs() { # args...
  local dir="$cache/tools/helm-docs-${HELM_DOCS_VERSION}"
  if [[ ! -x $dir/helm-docs ]]; then
    log "building helm-docs ${HELM_DOCS_VERSION} into $dir"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    GOFLAGS= GOBIN="$dir.tmp" CGO_ENABLED=0 go install -trimpath "github.com/norwoodj/helm-docs/cmd/helm-docs@${HELM_DOCS_VERSION}" >&2
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  exec "$dir/helm-docs" "$@"
}

# Kubernetes commands of the pinned release into DIR, with the flags
# upstream's release build uses (hack/lib/golang.sh); node.sh builds its
# kubelet, kube-proxy and kube-scheduler with it too.
build_k8s() { # dir command...
  local dir=$1; shift
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=${KUBERNETES_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor} -X $pkg.gitTreeState=clean"
  (cd "$here/k8s" && CGO_ENABLED=0 go build -trimpath -tags selinux,notest,grpcnotrace \
    -ldflags "$ldflags" -o "$dir/" "${@/#/k8s.io/kubernetes/cmd/}")
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

ready() {
  [[ -f $run_dir/admin.kubeconfig ]] &&
    "$bin_dir/kubectl" --kubeconfig "$run_dir/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1
}

# A client certificate signed by the cluster CA: CN is the user, O the group.
client_cert() { # name cn [org]
  local name=$1 cn=$2 org=${3:-} subj="/CN=$2"
  [[ -n $org ]] && subj="/O=$org/CN=$cn"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -subj "$subj" \
    -out "$pki/$name.csr" 2>/dev/null
  # X.509 v3 with extensions: rustls (kube-rs) rejects v1 certificates.
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > "$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 365 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
}

kubeconfig() { # file user
  local file=$1 user=$2 apiserver_port
  apiserver_port=$(cat "$run_dir/apiserver.port")
  cat > "$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: hookrelay-local
  cluster:
    server: https://$address:$apiserver_port
    certificate-authority: $pki/ca.crt
users:
- name: $user
  user:
    client-certificate: $pki/$user.crt
    client-key: $pki/$user.key
contexts:
- name: hookrelay-local
  context: {cluster: hookrelay-local, user: $user}
current-context: hookrelay-local
KC
}

make_pki() {
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=hookrelay-local-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/apiserver.key" -subj "/CN=kube-apiserver" \
    -out "$pki/apiserver.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:%s,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' "$address" > "$pki/san.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 365 -extfile "$pki/san.ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  client_cert admin hookrelay-admin system:masters
  # Without per-controller credentials (--use-service-account-credentials=false)
  # the controller manager acts as itself for every controller (namespace
  # deletion, root CA publishing), which only system:masters covers.
  client_cert controller-manager system:kube-controller-manager system:masters
  # An identity with no bindings at all: RBAC denies it everything until a
  # test binds a role to it (e.g. the chart's), which proves RBAC is enforced.
  client_cert restricted hookrelay-restricted
  # kube-apiserver's identity towards kubelets (logs, exec, port-forward).
  client_cert kubelet-client kube-apiserver-kubelet-client system:masters
  # The aggregation layer: a CA of its own (front-proxy-ca) signs the
  # client certificate kube-apiserver presents to extension API servers
  # (hookrelay api) when it forwards a request with the user in headers;
  # they trust those headers only from a certificate this CA signed.
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=hookrelay-local-front-proxy-ca" \
    -keyout "$pki/front-proxy-ca.key" -out "$pki/front-proxy-ca.crt" 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/front-proxy-client.key" -subj "/CN=front-proxy-client" \
    -out "$pki/front-proxy-client.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > "$pki/front-proxy-client.ext"
  openssl x509 -req -in "$pki/front-proxy-client.csr" -CA "$pki/front-proxy-ca.crt" -CAkey "$pki/front-proxy-ca.key" \
    -CAcreateserial -days 365 -extfile "$pki/front-proxy-client.ext" -out "$pki/front-proxy-client.crt" 2>/dev/null
}

# One more identity (a node's kubelet, the scheduler, kube-proxy) with a
# kubeconfig of its own; prints the kubeconfig's path.
identity() { # name cn [group]
  local name=${1:?usage: identity NAME CN [GROUP]} cn=${2:?usage: identity NAME CN [GROUP]}
  ready || die "the control plane in $run_dir is not running"
  [[ -f $pki/$name.crt ]] || client_cert "$name" "$cn" "${3:-}"
  kubeconfig "$run_dir/$name.kubeconfig" "$name"
  echo "$run_dir/$name.kubeconfig"
}

start_server() { # name command args...: in the background, arguments kept for `restart`
  local name=$1; shift
  printf '%s\0' "$@" > "$run_dir/$name.cmd"
  "$@" >> "$run_dir/logs/$name.log" 2>&1 9>&- &
  echo $! > "$run_dir/$name.pid"
}

# SIGKILLs one server and starts it again with the same arguments and data,
# after DOWN seconds: the chaos test's API server and etcd crashes.
restart() { # name [down-seconds]
  local name=${1:?usage: restart etcd|kube-apiserver|kube-controller-manager [down-seconds]} down=${2:-0}
  [[ -f $run_dir/$name.cmd ]] || die "$name was not started by this script (no $run_dir/$name.cmd)"
  if alive "$run_dir/$name.pid"; then
    local pid; pid=$(cat "$run_dir/$name.pid")
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  fi
  sleep "$down"
  local args=()
  mapfile -d '' args < "$run_dir/$name.cmd"
  start_server "$name" "${args[@]}"
  if [[ $name == kube-apiserver ]]; then
    wait_for "kube-apiserver /readyz" 120 ready || die "kube-apiserver did not come back within 120s"
  fi
  log "restarted $name"
}

wait_for() { # description seconds command...
  local what=$1 deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

up() {
  # One start at a time: concurrent test binaries or a demo share one instance.
  # (The servers started below must not inherit the lock: see `9>&-`.)
  mkdir -p "$cache"
  exec 9>"$cache/controlplane.lock"
  flock 9
  if alive "$run_dir/etcd.pid" && alive "$run_dir/kube-apiserver.pid" &&
    alive "$run_dir/kube-controller-manager.pid" && ready; then
    log "reusing the running control plane in $run_dir"
    print_kubeconfigs
    return
  fi
  down >/dev/null 2>&1 || true
  build
  command -v openssl >/dev/null || die "openssl is not installed"
  local started=$SECONDS
  rm -rf "$run_dir" && mkdir -p "$run_dir/logs"
  make_pki
  local etcd_client etcd_peer kcm_port apiserver_port
  etcd_client=$(free_port); etcd_peer=$(free_port); apiserver_port=$(free_port); kcm_port=$(free_port)
  echo "$apiserver_port" > "$run_dir/apiserver.port"
  local fsync=(--unsafe-no-fsync)
  [[ ${ETCD_UNSAFE_NO_FSYNC:-true} == false ]] && fsync=()

  start_server etcd "$bin_dir/etcd" --name hookrelay-local --data-dir "$run_dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "hookrelay-local=http://127.0.0.1:$etcd_peer" "${fsync[@]}"

  start_server kube-apiserver "$bin_dir/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_client" \
    --bind-address "$address" --advertise-address "$address" --secure-port "$apiserver_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction --allow-privileged=true \
    --kubelet-client-certificate "$pki/kubelet-client.crt" --kubelet-client-key "$pki/kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --requestheader-client-ca-file "$pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key"

  kubeconfig "$run_dir/admin.kubeconfig" admin
  kubeconfig "$run_dir/restricted.kubeconfig" restricted
  kubeconfig "$run_dir/controller-manager.kubeconfig" controller-manager

  if ! wait_for "kube-apiserver /readyz" 120 ready; then
    alive "$run_dir/etcd.pid" || { tail -20 "$run_dir/logs/etcd.log" >&2; die "etcd exited"; }
    tail -30 "$run_dir/logs/kube-apiserver.log" >&2
    die "kube-apiserver did not become ready within 120s (log: $run_dir/logs/kube-apiserver.log)"
  fi

  start_server kube-controller-manager "$bin_dir/kube-controller-manager" --kubeconfig "$run_dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$run_dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$run_dir/controller-manager.kubeconfig" \
    --controllers "$controllers" \
    --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
    --leader-elect=false --use-service-account-credentials=false \
    --bind-address 127.0.0.1 --secure-port "$kcm_port"

  sleep 1
  alive "$run_dir/kube-controller-manager.pid" || {
    tail -30 "$run_dir/logs/kube-controller-manager.log" >&2
    die "kube-controller-manager exited"
  }
  log "started in $((SECONDS - started))s (logs in $run_dir/logs)"
  print_kubeconfigs
}

print_kubeconfigs() {
  log "restricted kubeconfig: $run_dir/restricted.kubeconfig"
  log "admin kubeconfig:"
  echo "$run_dir/admin.kubeconfig"
}

down() {
  local stopped=0 name
  for name in kube-controller-manager kube-apiserver etcd; do
    if alive "$run_dir/$name.pid"; then
      local pid; pid=$(cat "$run_dir/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      stopped=1
    fi
    rm -f "$run_dir/$name.pid"
  done
  ((stopped)) && log "stopped" || log "not running"
}

case ${1:-} in
  build) build ;;
  up) up ;;
  down) down ;;
  status) alive "$run_dir/kube-apiserver.pid" && ready ;;
  restart) shift; restart "$@" ;;
  kubectl) shift; exec "$bin_dir/kubectl" --kubeconfig "$run_dir/admin.kubeconfig" "$@" ;;
  helm) shift; exec "$bin_dir/helm" --kubeconfig "$run_dir/admin.kubeconfig" "$@" ;;
  bin) echo "$bin_dir" ;;
  helm-docs) shift; helm_docs "$@" ;;
  jaeger-bin) jaeger_bin ;;
  identity) shift; identity "$@" ;;
  build-k8s) shift; build_k8s "$@" ;;
  *) echo "usage: $0 build|up|down|status|restart NAME [DOWN_SECONDS]|bin|identity NAME CN [GROUP]|build-k8s DIR COMMAND...|kubectl ARGS...|helm ARGS...|helm-docs ARGS...|jaeger-bin" >&2; exit 2 ;;
esac
