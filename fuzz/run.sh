#!/usr/bin/env bash
# Bounded fuzzing of the operator's hostile-input handling: each target for $FUZZ_SECONDS
# (default 20). Needs a nightly toolchain; installs cargo-fuzz if missing. Without nightly it
# says so and exits 0: the same entry points also run as seeded property tests in
# `cargo test -p decloud-operator` (operator/src/fuzzing.rs).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-20}"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: no nightly toolchain; skipping (property tests in operator/src/fuzzing.rs cover the targets)"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
for target in edge_message pod_spec; do
  echo "fuzz: $target for ${seconds}s"
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -max_len=65536
done
echo "fuzz: 2 passed, 0 failed"
