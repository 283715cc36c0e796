#!/usr/bin/env bash
# End to end on kind (needs Docker, kind, kubectl, helm, chromedriver and
# sudo for one route): builds the image with the Dockerfile, loads it and a
# busybox into a new kind cluster, and runs the same suite as node.sh's
# cluster (tests/e2e/run.sh): the chart installed with Helm as pods, then
# the integration suite against the cluster.
#
# Like node.sh, the suite reaches Services at their ClusterIPs: the service
# range is routed to the kind node for the run, and the route removed after.
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster=${KIND_CLUSTER:-hookrelay-e2e}
kubeconfig=$(mktemp -t kind-hookrelay.XXXX)
keep=${KEEP_CLUSTER:-false}
service_cidr=10.96.0.0/16 # kind's default service subnet
route=""

cleanup() {
  [[ -n $route ]] && sudo ip route del $route 2>/dev/null || true
  if [[ $keep != true ]]; then kind delete cluster --name "$cluster" >/dev/null 2>&1 || true; fi
  rm -f "$kubeconfig"
}
trap cleanup EXIT

for tool in docker kind kubectl helm cargo chromedriver sudo; do
  command -v "$tool" >/dev/null || { echo "kind.sh: $tool is required" >&2; exit 1; }
done

echo "==> kind cluster $cluster"
kind create cluster --name "$cluster" --wait 120s
kind get kubeconfig --name "$cluster" > "$kubeconfig"

echo "==> images hookrelay:e2e (Dockerfile) and busybox:e2e"
docker build -t hookrelay:e2e .
docker pull -q busybox:1.37
docker tag busybox:1.37 busybox:e2e
kind load docker-image hookrelay:e2e busybox:e2e --name "$cluster"

# Pods reach this machine at the kind network's IPv4 gateway; this machine
# reaches ClusterIPs through the node.
node_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cluster-control-plane")
host_address=$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 -F .)
route="$service_cidr via $node_ip"
sudo ip route replace $route

# The Postgres-store tests start the distribution's Postgres on this machine.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
fi

bash tests/e2e/run.sh "$kubeconfig" "$host_address"
