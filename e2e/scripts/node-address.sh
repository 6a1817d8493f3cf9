#!/usr/bin/env bash
# Gives this machine a routable, test-only address for the operator's kubelet API: the API
# server refuses to proxy to loopback (`kubectl get --raw /api/v1/nodes/<node>/proxy/...`) and
# an Endpoints object cannot point at it, so the local setup advertises its virtual nodes (and
# serves metrics-server) at this address instead, as a cluster advertises the operator's pod IP.
#
# A veth pair into the network namespace `decloud-nodes`: the host's end holds 10.250.250.1/30,
# the namespace's end 10.250.250.2. Idempotent (run it as often as you like, concurrently too:
# a lock serialises it); needs root (CAP_NET_ADMIN). Prints the host's address on its last line.
#   e2e/scripts/node-address.sh          # create if missing
#   e2e/scripts/node-address.sh --remove # remove
set -euo pipefail
ns=decloud-nodes
host_if=dcnode0
ns_if=dcnode1
addr=10.250.250.1
peer=10.250.250.2

exec 9>/run/decloud-node-address.lock
flock 9

if [ "${1:-}" = --remove ]; then
  ip link del "$host_if" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  exit 0
fi

command -v ip >/dev/null || { echo "node-address: iproute2 is not installed (apt-get install iproute2)" >&2; exit 1; }
# (Outputs are read whole before grep: with pipefail, grep -q closing the pipe early would
# fail the test.)
netns=$(ip netns list)
grep -qw "^$ns" <<<"$netns" || ip netns add "$ns"
if ! ip link show "$host_if" >/dev/null 2>&1; then
  ip link add "$host_if" type veth peer name "$ns_if"
  ip link set "$ns_if" netns "$ns"
fi
have=$(ip addr show dev "$host_if")
grep -q "inet $addr/" <<<"$have" || ip addr add "$addr/30" dev "$host_if"
ip link set "$host_if" up
have=$(ip -n "$ns" addr show dev "$ns_if")
grep -q "inet $peer/" <<<"$have" || ip -n "$ns" addr add "$peer/30" dev "$ns_if"
ip -n "$ns" link set "$ns_if" up
ip -n "$ns" link set lo up
echo "$addr"
