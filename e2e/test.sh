#!/usr/bin/env bash
# The whole DeCloud test suite: formatting, lints, generated-file drift, unit tests and the
# end-to-end suites against a real etcd + kube-apiserver, a real Docker engine and the real
# binaries. Installs and starts what it needs first (e2e/scripts/install-prereqs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "--- prerequisites (Docker engine, test image, Go-built control plane)"
bash e2e/scripts/install-prereqs.sh

echo "--- cargo fmt --check"
cargo fmt --all --check

echo "--- cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "--- no import cycles between a crate's modules"
python3 e2e/scripts/module-cycles.py operator/src operator/workload/src operator/gateway/src \
  edge-kubelet/src crds/src proto/src

echo "--- generated CRD YAML is current"
cargo run -q -p decloud-crds --bin crdgen -- --check

DECLOUD_K8S_BIN=$(bash e2e/k8s/build.sh)
export DECLOUD_K8S_BIN
DECLOUD_HELM=$(bash e2e/k8s/build-helm.sh)
export DECLOUD_HELM
DECLOUD_METRICS_SERVER=$(bash e2e/k8s/build-metrics-server.sh)
export DECLOUD_METRICS_SERVER
DECLOUD_PEBBLE=$(bash e2e/k8s/build-pebble.sh)
export DECLOUD_PEBBLE

echo "--- build the binaries the suites run"
cargo build --workspace --bins

echo "--- cargo test"
cargo test --workspace --no-fail-fast -- --test-threads="${DECLOUD_TEST_THREADS:-2}"
