#!/usr/bin/env bash
# The demo (`make demo`): a local Kubernetes control plane (built once from
# the Kubernetes Go modules), the hookrelay CRDs, the example Hub and Webhook,
# and `hookrelay controller` reconciling them. Everything stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
cp=tests/controlplane/controlplane.sh
ns=hookrelay-demo

kubeconfig=$(bash $cp up | tail -1)
export KUBECONFIG=$kubeconfig
kubectl() { bash $cp kubectl "$@"; }

echo "==> building hookrelay"
cargo build --quiet --locked
echo "==> installing the CRDs"
kubectl apply --server-side --force-conflicts -f crds/hookrelay.yaml >/dev/null
kubectl wait --for condition=Established --timeout 60s crd/hubs.hookrelay.dev crd/webhooks.hookrelay.dev crd/deliveries.hookrelay.dev >/dev/null

kubectl create namespace $ns --dry-run=client -o yaml | kubectl apply -f - >/dev/null
echo "==> kubectl -n $ns apply -f examples/hub.yaml -f examples/webhook.yaml"
kubectl -n $ns apply -f examples/hub.yaml -f examples/webhook.yaml

log=$(mktemp -t hookrelay-controller.XXXX.log)
echo "==> starting hookrelay controller (log: $log)"
./target/debug/hookrelay controller --namespace $ns >"$log" 2>&1 &
controller=$!
trap 'kill $controller 2>/dev/null || true' EXIT

kubectl -n $ns wait --for condition=Ready --timeout 60s hub/main webhook/example-integration >/dev/null
echo
echo "==> kubectl -n $ns get hubs,webhooks"
kubectl -n $ns get hubs,webhooks
echo
echo "==> kubectl -n $ns get secrets -l app.kubernetes.io/managed-by=hookrelay"
kubectl -n $ns get secrets -l app.kubernetes.io/managed-by=hookrelay
echo
echo "==> kubectl -n $ns get events"
kubectl -n $ns get events --sort-by .lastTimestamp
echo
echo "The control plane keeps running; use it with: export KUBECONFIG=$kubeconfig"
echo "Stop it with: make controlplane-down"
