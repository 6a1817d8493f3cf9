#!/bin/sh
# DeCloud provider install: fetches edge-kubelet from the operator, joins, and keeps it running.
# Served by the operator at /install.sh; `decloud-operator token create` prints the command:
#   curl -fsSLk https://OPERATOR:7443/install.sh | sh -s -- --operator https://OPERATOR:7443 \
#     --token TOKEN --ca-hash sha256:HEX --name my-laptop [--owner me@example.org] [--label k=v]...
#
# Run as root. What it does, in order (a second run changes nothing that is already in place):
#  1. fetches the operator's CA (/ca.crt) and refuses to go on unless its SHA-256 is --ca-hash;
#     every later request trusts that CA only (curl --cacert), so the binary and its checksum
#     come from a server the pinned CA certified (the script itself was fetched with -k: see
#     the README for the form that checks the script too);
#  2. downloads edge-kubelet for this OS/architecture and refuses it unless its SHA-256 is the
#     one the operator publishes (or takes --binary PATH instead);
#  3. installs Docker from the distribution's packages if no `docker` is found: apt-get
#     install docker.io (Debian, Ubuntu), else dnf/yum install moby-engine or docker
#     (--no-docker-install: refuse instead);
#  4. installs the binary (PREFIX/bin/edge-kubelet), joins with the token (once: an existing
#     credential in the state folder is kept), writes its settings (CONFIG) and a systemd unit;
#  5. starts it with systemd where systemd runs; elsewhere (a container, WSL without systemd)
#     says how to start it, or starts it in the background with --start-without-systemd.
# Remove everything again with: edge-kubelet uninstall --name NAME --state-dir STATE_DIR
#
# Options for testing and unusual layouts: --prefix DIR (/usr/local), --state-dir DIR
# (/var/lib/edge-kubelet), --unit-dir DIR (/etc/systemd/system), --config FILE
# (/etc/default/edge-kubelet). Arguments after `--` go to `edge-kubelet run`.
set -eu
umask 022

say() { printf 'decloud-install: %s\n' "$*"; }
die() { printf 'decloud-install: %s\n' "$*" >&2; exit 1; }

operator="" token="" ca_hash="" name="" owner="" labels="" binary=""
prefix=/usr/local state_dir=/var/lib/edge-kubelet unit_dir=/etc/systemd/system
config=/etc/default/edge-kubelet install_docker=yes background=no userns=no run_args=""

# Values end up in a settings file read by systemd and sh: only plain characters pass.
plain() {
  case "$2" in
    *[!A-Za-z0-9._:/=@+,-]*|"") die "$1 ${2:+$2 }has characters other than letters, digits and ._:/=@+,- (or is empty)" ;;
  esac
}
need_value() { [ $# -ge 2 ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --operator) need_value "$@"; operator=$2; shift 2 ;;
    --token) need_value "$@"; token=$2; shift 2 ;;
    --ca-hash) need_value "$@"; ca_hash=$2; shift 2 ;;
    --name) need_value "$@"; name=$2; shift 2 ;;
    --owner) need_value "$@"; plain --owner "$2"; owner=$2; shift 2 ;;
    --label) need_value "$@"; plain --label "$2"; labels="$labels --label $2"; shift 2 ;;
    --binary) need_value "$@"; binary=$2; shift 2 ;;
    --prefix) need_value "$@"; prefix=$2; shift 2 ;;
    --state-dir) need_value "$@"; state_dir=$2; shift 2 ;;
    --unit-dir) need_value "$@"; unit_dir=$2; shift 2 ;;
    --config) need_value "$@"; config=$2; shift 2 ;;
    --no-docker-install) install_docker=no; shift ;;
    --start-without-systemd) background=yes; shift ;;
    --userns-remap) userns=yes; shift ;;
    --) shift; for a in "$@"; do plain "run argument" "$a"; run_args="$run_args $a"; done; break ;;
    -h|--help) sed -n '2,27p' "$0" 2>/dev/null || true; exit 0 ;;
    *) die "unknown option $1 (see --help; arguments for edge-kubelet run go after --)" ;;
  esac
done

[ -n "$operator" ] || die "--operator https://HOST:PORT is required (from the join command)"
[ -n "$token" ] || die "--token is required (from decloud-operator token create)"
[ -n "$ca_hash" ] || die "--ca-hash sha256:HEX is required (from the join command)"
[ -n "$name" ] || die "--name NAME is required: the node appears as edge-NAME"
case "$operator" in
  https://*) ;;
  *) die "--operator must be an https:// URL (got $operator)" ;;
esac
case "${operator#https://}" in
  *[!A-Za-z0-9.:\[\]-]*|"") die "--operator must be https://HOST[:PORT] with no path (got $operator)" ;;
esac
case "$token" in
  *[!a-z0-9.]*|"") die "--token must be the ID.SECRET printed by decloud-operator token create" ;;
esac
hash_hex=${ca_hash#sha256:}
[ "$hash_hex" != "$ca_hash" ] || die "--ca-hash must be sha256:<64 hex digits>"
case "$hash_hex" in *[!0-9a-f]*) die "--ca-hash must be sha256:<64 lowercase hex digits>" ;; esac
[ ${#hash_hex} -eq 64 ] || die "--ca-hash must be sha256:<64 hex digits>"
case "$name" in
  *[!a-z0-9-]*|-*|*-|"") die "--name: 1-58 lowercase letters, digits or '-', not starting or ending with '-'" ;;
esac
[ ${#name} -le 58 ] || die "--name is longer than 58 characters"
for p in "$prefix" "$state_dir" "$unit_dir" "$config"; do
  case "$p" in
    /*) plain path "$p" ;;
    *) die "paths must be absolute (got $p)" ;;
  esac
done
[ "$(id -u)" -eq 0 ] || die "run as root (sudo sh -s -- …): it installs a service, Docker if missing, and firewall rules for the containers"
for tool in curl sha256sum base64 sed awk cmp; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required (Debian/Ubuntu: apt-get install curl coreutils sed gawk diffutils)"
done

case "$(uname -s)" in
  Linux) os=linux ;;
  *) die "only Linux providers are supported (this is $(uname -s))" ;;
esac
case "$(uname -m)" in
  x86_64|amd64) arch=amd64 ;;
  aarch64|arm64) arch=arm64 ;;
  armv7l|armv7*) arch=arm ;;
  *) arch=$(uname -m) ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# 1. The CA, checked against the pin before anything else is trusted.
curl -fsSk --max-time 30 --max-filesize 65536 -o "$tmp/ca.crt" "$operator/ca.crt" \
  || die "cannot fetch the operator's CA from $operator/ca.crt"
got=$(awk '/-----BEGIN CERTIFICATE-----/{on=1; next} /-----END CERTIFICATE-----/{exit} on' "$tmp/ca.crt" \
  | base64 -d 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$got" != "$hash_hex" ]; then
  die "REFUSED: the operator at $operator presents CA sha256:$got, not the --ca-hash sha256:$hash_hex of the join command (wrong address, or someone in between). Nothing was installed."
fi
say "operator CA matches the pin ($ca_hash)"
fetch() { curl -fsS --cacert "$tmp/ca.crt" --max-time 600 "$@"; }

# 2. The binary, checked against the operator's checksum.
if [ -n "$binary" ]; then
  [ -f "$binary" ] || die "--binary $binary is not a file"
  cp "$binary" "$tmp/edge-kubelet"
  say "using the local binary $binary"
else
  fetch --max-filesize 1024 -o "$tmp/sha256" "$operator/edge-kubelet/$os/$arch/sha256" \
    || die "the operator serves no edge-kubelet for $os/$arch (what it serves: curl -k $operator/edge-kubelet)"
  want=$(cut -d' ' -f1 "$tmp/sha256")
  case "$want" in
    *[!0-9a-f]*|"") die "the operator's checksum for $os/$arch is not a SHA-256" ;;
  esac
  [ ${#want} -eq 64 ] || die "the operator's checksum for $os/$arch is not a SHA-256"
  fetch --max-filesize 1073741824 -o "$tmp/edge-kubelet" "$operator/edge-kubelet/$os/$arch" \
    || die "cannot download edge-kubelet for $os/$arch"
  got=$(sha256sum "$tmp/edge-kubelet" | cut -d' ' -f1)
  [ "$got" = "$want" ] || die "REFUSED: the downloaded edge-kubelet has SHA-256 $got, the operator publishes $want (corrupted or tampered with). Nothing was installed."
  say "edge-kubelet for $os/$arch downloaded, SHA-256 $got verified"
fi
chmod 0755 "$tmp/edge-kubelet"

# 3. Docker.
systemd=no
[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 && systemd=yes
if ! command -v docker >/dev/null 2>&1 && ! command -v dockerd >/dev/null 2>&1; then
  [ "$install_docker" = yes ] || die "Docker is not installed (and --no-docker-install was given)"
  if command -v apt-get >/dev/null 2>&1; then
    say "Docker not found: apt-get install docker.io (the distribution's Docker Engine)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io
  elif command -v dnf >/dev/null 2>&1; then
    say "Docker not found: dnf install moby-engine (or docker)"
    dnf install -y moby-engine || dnf install -y docker
  elif command -v yum >/dev/null 2>&1; then
    say "Docker not found: yum install docker"
    yum install -y docker
  else
    die "Docker is not installed and no apt-get, dnf or yum was found: install Docker Engine, then run this again"
  fi
  [ "$systemd" = yes ] && systemctl enable --now docker
else
  say "Docker found: $(command -v docker || command -v dockerd)"
fi
if [ "$userns" = yes ] && command -v docker >/dev/null 2>&1 \
    && ! docker info --format '{{.SecurityOptions}}' 2>/dev/null | grep -q userns; then
  if [ -e /etc/docker/daemon.json ]; then
    say "add \"userns-remap\": \"default\" to /etc/docker/daemon.json yourself and restart Docker (the file exists; not editing it)"
  else
    mkdir -p /etc/docker
    echo '{"userns-remap": "default"}' >/etc/docker/daemon.json
    [ "$systemd" = yes ] && systemctl restart docker
    say "Docker now remaps users (root in a container is an unprivileged user here)"
  fi
fi

# 4. Binary, join, settings, unit. Each is replaced only when it differs.
changed=no
bin="$prefix/bin/edge-kubelet"
mkdir -p "$prefix/bin" "$state_dir" "$unit_dir" "$(dirname "$config")"
chmod 0700 "$state_dir"
if [ -f "$bin" ] && cmp -s "$tmp/edge-kubelet" "$bin"; then
  say "$bin is already this version"
else
  cp "$tmp/edge-kubelet" "$bin.new" && mv -f "$bin.new" "$bin"
  changed=yes
  say "installed $bin"
fi
if [ -f "$state_dir/credential" ]; then
  say "already joined (credential in $state_dir); the token is not used again"
else
  # shellcheck disable=SC2086
  "$bin" join --operator "$operator" --token "$token" --ca-hash "$ca_hash" --name "$name" \
    ${owner:+--owner "$owner"} $labels --state-dir "$state_dir"
  changed=yes
fi
args="--operator $operator --name $name --state-dir $state_dir${owner:+ --owner $owner}$labels$run_args"
{
  echo "# Written by the DeCloud install script; read by the edge-kubelet unit."
  echo "EDGE_KUBELET_ARGS=\"$args\""
  if [ -n "${DOCKER_HOST:-}" ]; then plain DOCKER_HOST "$DOCKER_HOST"; echo "DOCKER_HOST=$DOCKER_HOST"; fi
} >"$tmp/config"
if [ -f "$config" ] && cmp -s "$tmp/config" "$config"; then
  say "$config unchanged"
else
  (umask 077; cp "$tmp/config" "$config")
  changed=yes
  say "wrote $config"
fi
unit="$unit_dir/edge-kubelet.service"
cat >"$tmp/unit" <<EOF
# DeCloud edge-kubelet, installed by the DeCloud install script. Settings: $config.
[Unit]
Description=DeCloud edge-kubelet (lends this machine to a DeCloud community cloud)
Wants=network-online.target docker.service
After=network-online.target docker.service

[Service]
Type=simple
EnvironmentFile=$config
ExecStart=$bin run \$EDGE_KUBELET_ARGS
Restart=always
RestartSec=2
# The agent talks to the local Docker engine and the operator and manages its own firewall
# rules (iptables takes its lock in /run) and cgroup; it writes nowhere else but its state folder.
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=true
PrivateTmp=true
ReadWritePaths=$state_dir /run

[Install]
WantedBy=multi-user.target
EOF
if [ -f "$unit" ] && cmp -s "$tmp/unit" "$unit"; then
  say "$unit unchanged"
else
  cp "$tmp/unit" "$unit"
  changed=yes
  say "wrote $unit"
fi
# What uninstall removes (edge-kubelet uninstall reads this).
cat >"$state_dir/installed-by-script" <<EOF
BINARY=$bin
UNIT=$unit
CONFIG=$config
EOF

# 5. Start.
pidfile="$state_dir/edge-kubelet.pid"
running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
if [ "$systemd" = yes ] && [ "$unit_dir" = /etc/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable edge-kubelet >/dev/null 2>&1
  if [ "$changed" = yes ]; then systemctl restart edge-kubelet; else systemctl start edge-kubelet; fi
  say "edge-kubelet runs under systemd; follow it with: journalctl -u edge-kubelet -f"
elif [ "$background" = yes ]; then
  if running && [ "$changed" = no ]; then
    say "edge-kubelet already runs (pid $(cat "$pidfile"))"
  else
    if running; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
      i=0; while running && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    fi
    # shellcheck disable=SC1090
    (set -a; . "$config"; set +a; exec nohup "$bin" run $EDGE_KUBELET_ARGS >>"$state_dir/edge-kubelet.log" 2>&1 </dev/null) &
    echo $! >"$pidfile"
    say "no systemd here: edge-kubelet started in the background (pid $!, log $state_dir/edge-kubelet.log)"
  fi
else
  say "no systemd here: start edge-kubelet yourself (and at every boot) with:"
  say "  sh -c 'set -a; . $config; exec $bin run \$EDGE_KUBELET_ARGS'"
  say "or run this script again with --start-without-systemd to start it in the background now"
fi
say "done: provider $name joins as node edge-$name. Status: $bin status --name $name --state-dir $state_dir"
say "console (this machine only): $bin console-url --name $name --state-dir $state_dir"
