#!/usr/bin/env bash
# Brings up a working local DeCloud and runs its demo (see README). Installs what it needs
# first; extra arguments go to decloud-up (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "decloud: installing prerequisites (first run builds kube-apiserver and etcd: minutes)"
bash e2e/scripts/install-prereqs.sh
echo "decloud: building the DeCloud binaries"
cargo build --workspace --bins
exec "${CARGO_TARGET_DIR:-target}/debug/decloud-up" "$@"
