#!/usr/bin/env bash
# Builds the stateful example's image from Debian's packages, with no registry:
#   e2e/images/redis-image.sh [TAG]     (default TAG: decloud-test/redis:7)
# A Debian bookworm root filesystem (debootstrap, minbase) with the real redis-server and
# redis-cli, and busybox for the example's small web front end (httpd with a CGI script). The
# root filesystem is cached as a tarball under ~/.cache/decloud/images (debootstrap takes minutes
# the first time); `docker import` turns it into TAG. Idempotent: an existing TAG is kept.
set -euo pipefail
tag=${1:-decloud-test/redis:7}
suite=bookworm
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
cache=${DECLOUD_CACHE:-$HOME/.cache/decloud}/images
tarball=$cache/redis-$suite-r1.tar
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || {
    echo "redis-image: debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 1
  }
  # The mirror the machine's own apt uses (no host is named here).
  mirror=$( { grep -rhoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true; } |
    awk '{print $2}' | grep -E '/debian/?$' | head -n1)
  [ -n "$mirror" ] || { echo "redis-image: no Debian mirror found in the apt sources" >&2; exit 1; }
  mkdir -p "$cache"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  echo "redis-image: debootstrap $suite (minbase + redis-server, redis-tools, busybox) from the apt mirror; a few minutes the first time" >&2
  debootstrap --variant=minbase --include=redis-server,redis-tools,busybox \
    "$suite" "$root" "$mirror" >"$cache/redis-debootstrap.log" 2>&1 || {
    echo "redis-image: debootstrap failed; last lines of $cache/redis-debootstrap.log:" >&2
    tail -20 "$cache/redis-debootstrap.log" >&2
    exit 1
  }
  # Smaller image: no package lists, caches or docs.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc \
    "$root"/usr/share/man "$root"/usr/share/locale
  mkdir -p "$root/data" "$root/www/cgi-bin"
  tar -C "$root" -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
fi
docker import -c 'CMD ["/usr/bin/redis-server"]' \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  "$tarball" "$tag" >/dev/null
echo "$tag"
