#!/usr/bin/env bash
# The demo (`make demo`): a local Kubernetes control plane (built once from
# the Kubernetes Go modules), the hookrelay CRDs, `hookrelay controller` and
# `hookrelay ingest`, the example receiver (which verifies both signatures),
# the example Hub and Webhooks, and one event of each CMS event type.
# Everything listens on and talks to loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
cp=tests/controlplane/controlplane.sh
ns=hookrelay-demo
ingest_addr=127.0.0.1:8080
receiver_addr=127.0.0.1:8090
logs=$(mktemp -d -t hookrelay-demo.XXXX)
pids=()

kubectl() { bash $cp kubectl "$@"; }
stop() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop EXIT

kubeconfig=$(bash $cp up | tail -1)
export KUBECONFIG=$kubeconfig

echo "==> building hookrelay and the example receiver"
cargo build --quiet --locked --bin hookrelay --example receiver

echo "==> installing the CRDs"
kubectl apply --server-side --force-conflicts -f crds/hookrelay.yaml >/dev/null
kubectl wait --for condition=Established --timeout 60s \
  crd/hubs.hookrelay.dev crd/webhooks.hookrelay.dev crd/deliveries.hookrelay.dev >/dev/null

# A fresh namespace each run, so every event is new.
kubectl delete namespace $ns --ignore-not-found --wait=true >/dev/null
kubectl create namespace $ns >/dev/null

echo "==> starting hookrelay controller and hookrelay ingest (logs in $logs)"
./target/debug/hookrelay controller --watch-namespace $ns --metrics-listen 127.0.0.1:0 --leader-elect=false --egress-allow-loopback=true \
  >"$logs/controller.log" 2>&1 &
pids+=($!)
./target/debug/hookrelay ingest --watch-namespace $ns --listen $ingest_addr --metrics-listen 127.0.0.1:0 >"$logs/ingest.log" 2>&1 &
pids+=($!)

echo "==> kubectl -n $ns apply -f examples/hub.yaml -f examples/webhook.yaml -f examples/webhook-audit.yaml"
kubectl -n $ns apply -f examples/hub.yaml -f examples/webhook.yaml -f examples/webhook-audit.yaml
kubectl -n $ns wait --for condition=Ready --timeout 60s hub/main webhook/example-integration webhook/audit-log >/dev/null

secret_of() { # webhook
  local name
  name=$(kubectl -n $ns get webhook "$1" -o jsonpath='{.status.secretRef.name}')
  kubectl -n $ns get secret "$name" -o jsonpath='{.data.secret}' | base64 -d
}
token_secret=$(kubectl -n $ns get hub main -o jsonpath='{.status.ingestTokenSecretRef.name}')
token=$(kubectl -n $ns get secret "$token_secret" -o jsonpath='{.data.token}' | base64 -d)

echo "==> starting the example receiver on $receiver_addr"
./target/debug/examples/receiver --listen $receiver_addr \
  --secret "$(secret_of example-integration)" --secret "$(secret_of audit-log)" >"$logs/receiver.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS "http://$ingest_addr/readyz" >/dev/null 2>&1 && grep -qs listening "$logs/receiver.log" && break
  sleep 0.1
done

echo
echo "==> one event of each type: curl -H 'Authorization: Bearer …' -d @examples/events/<type>.json http://$ingest_addr/v1/namespaces/$ns/hubs/main/events"
for event in examples/events/*.json; do
  printf '%-34s ' "$(basename "$event" .json)"
  curl -sS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    --data-binary @"$event" "http://$ingest_addr/v1/namespaces/$ns/hubs/main/events"
  echo
done

echo
echo "==> waiting for every delivery to succeed"
kubectl -n $ns wait --for jsonpath='{.status.phase}'=Succeeded --timeout 60s deliveries --all >/dev/null
echo
echo "==> kubectl -n $ns get deliveries"
kubectl -n $ns get deliveries --sort-by .metadata.creationTimestamp
echo
echo "==> kubectl -n $ns get webhooks"
kubectl -n $ns get webhooks
echo
echo "==> what the receiver verified and printed"
cat "$logs/receiver.log"
echo
first=$(kubectl -n $ns get deliveries -o jsonpath='{.items[0].metadata.name}')
echo "See a delivery's request and response: kubectl -n $ns get delivery $first -o yaml"
echo "The control plane keeps running: export KUBECONFIG=$kubeconfig (stop it with make controlplane-down)"
