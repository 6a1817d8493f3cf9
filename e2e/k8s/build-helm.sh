#!/usr/bin/env bash
# Builds helm from its Go module (helm.sh/helm/v3) at the pinned version and caches it.
# Prints the path of the binary on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
cache=${DECLOUD_CACHE:-$HOME/.cache/decloud}
out="$cache/helm-$HELM_VERSION/helm"
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi
mkdir -p "$(dirname "$out")"
echo "helm: building $HELM_VERSION from its Go module (a few minutes the first time)" >&2
GOFLAGS=-mod=mod CGO_ENABLED=0 GOBIN="$(dirname "$out")" \
  go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
echo "$out"
