#!/usr/bin/env bash
# Installs what DeCloud's local setup and tests need on a Debian machine (run as root):
# Debian's Docker engine (started when none answers; the suites start one more dockerd per
# edge), Debian's docker-registry and htpasswd for the test registries, busybox-static for
# locally built test images, debootstrap for the stateful example's redis image (built from
# Debian's packages, cached), openssl, chromium and chromedriver (the console's browser
# test), and the Kubernetes control plane built from Go modules (cached).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)  # e2e/tests/volunteer_safety.rs: network namespaces
command -v file >/dev/null || need+=(file)
{ [ -x /bin/busybox ] && file -L /bin/busybox | grep -q static; } || need+=(busybox-static)
command -v openssl >/dev/null || need+=(openssl)
# e2e/images/redis-image.sh: the stateful example's image, from Debian's packages.
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)
# The environment's own image registries (open and htpasswd, bcrypt) on loopback.
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
# e2e/tests/console.rs: the volunteer's console in a real headless browser (WebDriver).
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  echo "prereqs: apt-get install ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" ca-certificates >/dev/null
fi
command -v go >/dev/null || { echo "prereqs: Go is required to build kube-apiserver and etcd" >&2; exit 1; }
command -v cargo >/dev/null || { echo "prereqs: Rust (cargo) is required" >&2; exit 1; }

bash e2e/scripts/ensure-docker.sh
bash e2e/images/busybox-image.sh >/dev/null
echo "prereqs: redis image (debootstrap, cached under ~/.cache/decloud/images; minutes the first time)"
bash e2e/images/redis-image.sh >/dev/null
echo "prereqs: routable test address for the kubelet API ($(bash e2e/scripts/node-address.sh | tail -n1))"
echo "prereqs: Kubernetes control plane"
bash e2e/k8s/build.sh >/dev/null
echo "prereqs: helm"
bash e2e/k8s/build-helm.sh >/dev/null
echo "prereqs: metrics-server"
bash e2e/k8s/build-metrics-server.sh >/dev/null
echo "prereqs: pebble (ACME test server)"
bash e2e/k8s/build-pebble.sh >/dev/null
