#!/usr/bin/env bash
# The end-to-end suite against a cluster that has a node and hookrelay's
# image loaded (`node.sh up` here, kind.sh with Docker): one suite, two ways
# to get a cluster.
#
#   run.sh KUBECONFIG HOST_ADDRESS
#
# 1. tests/e2e/main.rs: the chart installed with Helm and used as pods
#    (one test at a time: each installs and uninstalls its own release);
# 2. the integration suite against the same cluster (HOOKRELAY_TEST_KUBECONFIG).
set -euo pipefail
cd "$(dirname "$0")/../.."
kubeconfig=${1:?usage: run.sh KUBECONFIG HOST_ADDRESS}
host_address=${2:?usage: run.sh KUBECONFIG HOST_ADDRESS}
export HOOKRELAY_TEST_KUBECONFIG=$kubeconfig HOOKRELAY_E2E_HOST_ADDRESS=$host_address
# kubectl and helm: the ones built with the local control plane, else PATH's.
bin=$(bash tests/controlplane/controlplane.sh bin)
[[ -x $bin/kubectl && -x $bin/helm ]] && export PATH="$bin:$PATH"
for tool in kubectl helm cargo chromedriver; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is required" >&2; exit 1; }
done
# The Postgres-store variants start Debian's Postgres on 127.0.0.1.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null ||
  { echo "run.sh: Postgres is required (Debian: postgresql)" >&2; exit 1; }

started=$SECONDS
echo "==> end-to-end: the chart as pods"
cargo test --locked --test e2e -- --test-threads=1 --nocapture
echo "==> integration suite against the cluster"
cargo test --locked --no-fail-fast --test cluster --test validation --test secrets --test idempotence --test delivery \
  --test ingest_outage --test lifecycle --test resilience --test chart --test faults --test tenants \
  --test ordering --test notifications --test plugin --test properties
echo "==> end-to-end suite passed in $((SECONDS - started))s"
