#!/usr/bin/env bash
# Builds pebble, Let's Encrypt's ACME test server, from its Go module
# (github.com/letsencrypt/pebble/v2, cmd/pebble and cmd/pebble-challtestsrv) at the pinned
# version and caches it, for the gateway's ACME e2e tests. Also copies the module's test
# minica root (pebble's own HTTPS listener is served under it) next to the binaries.
# Prints the folder holding pebble, pebble-challtestsrv and pebble.minica.pem on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
cache=${DECLOUD_CACHE:-$HOME/.cache/decloud}
out="$cache/pebble-$PEBBLE_VERSION"
if [ -x "$out/pebble" ] && [ -x "$out/pebble-challtestsrv" ] && [ -s "$out/pebble.minica.pem" ]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out"
echo "pebble: building $PEBBLE_VERSION from its Go module (a minute the first time)" >&2
GOFLAGS=-mod=mod CGO_ENABLED=0 GOBIN="$out" \
  go install -trimpath -ldflags "-s -w" \
  "github.com/letsencrypt/pebble/v2/cmd/pebble@$PEBBLE_VERSION" \
  "github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv@$PEBBLE_VERSION" >&2
moddir=$(GOFLAGS=-mod=mod go mod download -json "github.com/letsencrypt/pebble/v2@$PEBBLE_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
cp "$moddir/test/certs/pebble.minica.pem" "$out/pebble.minica.pem.tmp"
cp "$moddir/test/certs/localhost/cert.pem" "$out/localhost-cert.pem"
cp "$moddir/test/certs/localhost/key.pem" "$out/localhost-key.pem"
chmod 0644 "$out"/*.pem*
mv "$out/pebble.minica.pem.tmp" "$out/pebble.minica.pem"
echo "$out"
