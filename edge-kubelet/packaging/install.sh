#!/usr/bin/env sh
# Installs edge-kubelet as a systemd service on a provider machine (run as root):
#   sh install.sh --binary ./edge-kubelet [--userns-remap] --operator https://decloud.example.org:7443 --name my-laptop [--label k=v]...
# --userns-remap turns on Docker's user-namespace remapping (root in a container is then an
# unprivileged user on this machine) when /etc/docker/daemon.json does not exist yet, and
# restarts Docker. Everything after the known options is passed to `edge-kubelet run`.
set -eu
binary=./edge-kubelet
args=""
userns=no
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --userns-remap) userns=yes; shift ;;
    *) args="$args $1"; shift ;;
  esac
done
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable edge-kubelet binary (use --binary PATH)" >&2; exit 1; }
command -v docker >/dev/null || { echo "install.sh: Docker is required (install docker.io or Docker Engine first)" >&2; exit 1; }
case "$args" in *--operator*) ;; *) echo "install.sh: --operator URL is required" >&2; exit 1 ;; esac
case "$args" in *--name*) ;; *) echo "install.sh: --name NAME is required" >&2; exit 1 ;; esac
if [ "$userns" = yes ] && ! docker info --format '{{.SecurityOptions}}' | grep -q userns; then
  if [ -e /etc/docker/daemon.json ]; then
    echo "install.sh: add \"userns-remap\": \"default\" to /etc/docker/daemon.json yourself and restart Docker (the file exists; not editing it)" >&2
    exit 1
  fi
  mkdir -p /etc/docker
  echo '{"userns-remap": "default"}' >/etc/docker/daemon.json
  systemctl restart docker
  echo "install.sh: Docker now remaps users (images pulled before are pulled again)"
elif ! docker info --format '{{.SecurityOptions}}' | grep -q userns; then
  echo "install.sh: Docker runs without userns-remap: root in a container is root here (confined). Re-run with --userns-remap to change that."
fi
here=$(cd "$(dirname "$0")" && pwd)
install -m 0755 "$binary" /usr/local/bin/edge-kubelet
install -m 0644 "$here/edge-kubelet.service" /etc/systemd/system/edge-kubelet.service
umask 077
echo "EDGE_KUBELET_ARGS=\"$args\"" >/etc/default/edge-kubelet
systemctl daemon-reload
systemctl enable --now edge-kubelet
echo "edge-kubelet installed and started; follow it with: journalctl -u edge-kubelet -f"
