#!/usr/bin/env bash
# End to end on kind (needs Docker, kind, kubectl and helm): builds the image,
# loads it into a new kind cluster, installs the chart, checks the in-cluster
# operator reconciles the examples, then runs the integration suite against
# the cluster with HOOKRELAY_TEST_KUBECONFIG.
#
# The in-cluster operator watches only the namespace hookrelay-e2e; each test
# runs its own controller for its own namespace, so the two never meet.
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster=${KIND_CLUSTER:-hookrelay-e2e}
image=hookrelay:e2e
kubeconfig=$(mktemp -t kind-hookrelay.XXXX)
keep=${KEEP_CLUSTER:-false}

cleanup() {
  if [[ $keep != true ]]; then kind delete cluster --name "$cluster" >/dev/null 2>&1 || true; fi
  rm -f "$kubeconfig"
}
trap cleanup EXIT

for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null || { echo "kind.sh: $tool is required" >&2; exit 1; }
done

echo "==> kind cluster $cluster"
kind create cluster --name "$cluster" --wait 120s
kind get kubeconfig --name "$cluster" > "$kubeconfig"
export KUBECONFIG=$kubeconfig

echo "==> image $image"
docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

echo "==> helm install"
kubectl create namespace hookrelay-e2e
helm install hookrelay charts/hookrelay --namespace hookrelay-system --create-namespace \
  --set image.repository=hookrelay --set image.tag=e2e --set image.pullPolicy=Never \
  --set 'watchNamespaces={hookrelay-e2e}' --wait --timeout 5m

echo "==> examples reconciled by the in-cluster operator"
kubectl apply -n hookrelay-e2e -f examples/hub.yaml -f examples/webhook.yaml
kubectl wait -n hookrelay-e2e --for condition=Ready --timeout 120s hub/main webhook/example-integration
kubectl get -n hookrelay-e2e hubs,webhooks,secrets

echo "==> integration suite against the kind cluster"
# The Postgres-store variants start Debian's/Ubuntu's Postgres on 127.0.0.1.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
fi
HOOKRELAY_TEST_KUBECONFIG=$kubeconfig cargo test --locked --test cluster --test validation --test secrets \
  --test idempotence --test delivery --test ingest_outage --test lifecycle --test resilience --test chart \
  --test faults --test tenants --test ordering --test notifications --test plugin --test properties
