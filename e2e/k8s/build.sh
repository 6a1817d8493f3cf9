#!/usr/bin/env bash
# Builds the real Kubernetes control plane used by the e2e suites from Go modules:
# kube-apiserver, kube-controller-manager, kubectl (k8s.io/kubernetes) and etcd
# (go.etcd.io/etcd/server/v3). Binaries are cached outside the work tree, keyed by
# version, so a second run costs nothing.
#
# Usage: e2e/k8s/build.sh            # prints the bin directory on its last line
#   DECLOUD_CACHE   cache root (default ~/.cache/decloud)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${DECLOUD_CACHE:-$HOME/.cache/decloud}
bin="$cache/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-r$BUILD_REV/bin"
tools=(kube-apiserver kube-controller-manager kubectl etcd)

have_all=1
for t in "${tools[@]}"; do [ -x "$bin/$t" ] || have_all=0; done
if [ "$have_all" = 1 ]; then
  echo "k8s: cached binaries in $bin" >&2
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/go.mod.in" "$work/go.mod"
cp "$here/tools.go" "$work/tools.go"
cd "$work"

kver=${K8S_VERSION#v}
minor=$(echo "$kver" | cut -d. -f2)
patch=$(echo "$kver" | cut -d. -f3)
staging_ver="v0.$minor.$patch"

echo "k8s: resolving k8s.io/kubernetes@$K8S_VERSION (staging modules at $staging_ver)" >&2
modfile=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
# Every staging module that k8s.io/kubernetes replaces with ./staging/... is mapped to its
# published version instead.
staging=$(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile")
{
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  echo "replace ("
  for m in $staging; do echo "	$m => $m $staging_ver"; done
  echo ")"
} >>go.mod

echo "k8s: go mod tidy (downloads through the Go module proxy)" >&2
GOFLAGS=-mod=mod go mod tidy >&2

export CGO_ENABLED=0
# Stamp the real version, as the Kubernetes release build does, so /version and kubectl
# report v1.x.y instead of v0.0.0-master.
kminor=$(echo "$kver" | cut -d. -f2)
vflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  vflags="$vflags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kminor"
  vflags="$vflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
for t in kube-apiserver kube-controller-manager kubectl; do
  echo "k8s: building $t $K8S_VERSION (minutes on 2 cores the first time)" >&2
  go build -trimpath -ldflags "-s -w $vflags" -o "$bin/$t" "k8s.io/kubernetes/cmd/$t" >&2
done
echo "k8s: building etcd $ETCD_VERSION" >&2
go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3 >&2

echo "k8s: built into $bin" >&2
echo "$bin"
