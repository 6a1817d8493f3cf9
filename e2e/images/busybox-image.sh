#!/usr/bin/env bash
# Builds a small test image from the machine's busybox-static, with no registry:
#   e2e/images/busybox-image.sh [TAG]     (default TAG: decloud-test/busybox:1)
# The image has /bin/busybox and its applets (sh, httpd, nc, sleep, echo, cat, wget, ...),
# /www/index.html for httpd, and CMD /bin/sh. Idempotent: an existing TAG is kept.
set -euo pipefail
tag=${1:-decloud-test/busybox:1}
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
bb=$(command -v busybox || true)
if [ -z "$bb" ] || ! file -L "$bb" 2>/dev/null | grep -q 'statically linked'; then
  for c in /bin/busybox /usr/bin/busybox; do [ -x "$c" ] && bb=$c; done
fi
[ -n "$bb" ] || { echo "busybox-image: busybox-static is not installed (apt-get install busybox-static)" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/www" "$root/tmp" "$root/etc"
cp "$bb" "$root/bin/busybox"
for applet in $("$bb" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
echo "hello from decloud" >"$root/www/index.html"
echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
echo "nobody:x:65534:65534:nobody:/:/bin/sh" >>"$root/etc/passwd"
tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - "$tag" >/dev/null
echo "$tag"
