#!/usr/bin/env bash
# Builds metrics-server from its Go module (sigs.k8s.io/metrics-server, cmd/metrics-server) at
# the pinned version and caches it, for `kubectl top` in the e2e suite (it scrapes the
# operator's kubelet API like any kubelet's). Prints the path of the binary on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
cache=${DECLOUD_CACHE:-$HOME/.cache/decloud}
out="$cache/metrics-server-$METRICS_SERVER_VERSION/metrics-server"
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi
mkdir -p "$(dirname "$out")"
echo "metrics-server: building $METRICS_SERVER_VERSION from its Go module (minutes the first time)" >&2
GOFLAGS=-mod=mod CGO_ENABLED=0 GOBIN="$(dirname "$out")" \
  go install -trimpath -ldflags "-s -w" \
  "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION" >&2
echo "$out"
