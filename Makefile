# hookrelay — every target a user or CI runs. `make help` lists them.
SHELL := /bin/bash
CONTROLPLANE := tests/controlplane/controlplane.sh

.PHONY: help demo test test-under-load lint unit bench docs chart-docs crds controlplane-build controlplane-up controlplane-down e2e node-up node-down

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

demo: ## run hookrelay against the local control plane (builds it once)
	bash examples/demo.sh

# Every target but the benchmarks (`make bench`), which are not tests.
test: lint ## every test: lint, unit tests and integration tests on the local control plane
	cargo test --locked --lib --bins --tests --examples

# The suite must hold on a busy machine: stress-ng keeps both cores busy
# (bounded to an hour, stopped by its pid) while `make test` runs.
test-under-load: ## make test while stress-ng --cpu 2 runs beside it (installs stress-ng if missing)
	@command -v stress-ng >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng; }
	@stress-ng --cpu 2 --timeout 3600s --quiet & load=$$!; \
	  status=0; started=$$SECONDS; $(MAKE) test || status=$$?; \
	  kill $$load; wait $$load 2>/dev/null; \
	  echo "test-under-load: make test exited $$status after $$((SECONDS - started))s under stress-ng --cpu 2"; exit $$status

lint: ## rustfmt and clippy, warnings are errors
	cargo fmt --all --check
	cargo clippy --all-targets --test e2e --locked -- -D warnings

unit: ## unit tests only (no cluster)
	cargo test --lib --bins --locked

bench: ## benchmarks (not tests): end to end with etcd fsync on, and signing (Criterion); report in target/bench/report.md
	cargo build --release --locked --bin hookrelay
	cargo bench --locked --bench signing -- --warm-up-time 1 --measurement-time 3
	cargo bench --locked --bench e2e

docs: chart-docs ## the docs site: regenerate docs/reference/ from the code, then build it with mdBook (installed if missing) into target/book
	for page in resources cli plugin; do cargo run --quiet --locked -- reference $$page > docs/reference/$$page.md || exit 1; done
	@command -v mdbook >/dev/null || cargo install --locked mdbook --version 0.5.4
	mdbook build docs

# The schema's descriptions are the same texts; tests/docs.rs names any that differ.
chart-docs: ## regenerate the chart's README from the `# --` comments in values.yaml (helm-docs, built once)
	$(CONTROLPLANE) helm-docs --chart-search-root charts/hookrelay --skip-version-footer

crds: ## regenerate crds/ and the chart's CRDs from the Rust types
	cargo run --quiet --locked -- crd > crds/hookrelay.yaml
	cp crds/hookrelay.yaml charts/hookrelay/files/crds.yaml

controlplane-build: ## build etcd, kube-apiserver, kube-controller-manager, kubectl (cached)
	$(CONTROLPLANE) build

controlplane-up: ## start (or reuse) the local control plane; prints the admin kubeconfig path last
	$(CONTROLPLANE) up

controlplane-down: ## stop the local control plane
	$(CONTROLPLANE) down

# The node stays up after `make e2e` (reused by the next run); `make node-down` removes it.
e2e: ## end to end: a one-node cluster on this machine, the chart installed with Helm as pods, the suite (root)
	@out=$$(bash tests/e2e/node.sh up) || exit 1; \
	  bash tests/e2e/run.sh "$$(sed -n 's/^kubeconfig: //p' <<<"$$out")" "$$(sed -n 's/^host-address: //p' <<<"$$out")"

node-up: ## start (or reuse) the one-node cluster; prints its kubeconfig and host address last
	bash tests/e2e/node.sh up

node-down: ## stop the one-node cluster and remove everything it made
	bash tests/e2e/node.sh down
