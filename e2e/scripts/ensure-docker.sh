#!/usr/bin/env bash
# Makes sure a Docker engine answers on the default socket: starts Debian's dockerd in the
# background when none does. Exits non-zero with a clear message otherwise.
set -euo pipefail
if docker version >/dev/null 2>&1; then
  echo "docker engine: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
  exit 0
fi
if ! command -v dockerd >/dev/null; then
  echo "ensure-docker: no Docker engine answers and dockerd is not installed (apt-get install docker.io)" >&2
  exit 1
fi
log=${DOCKERD_LOG:-/tmp/decloud-dockerd.log}
echo "ensure-docker: starting dockerd (log: $log)"
# In its own session: a Ctrl-C to the calling script (e2e/up.sh) never reaches it.
setsid nohup dockerd >"$log" 2>&1 </dev/null &
for _ in $(seq 1 60); do
  if docker version >/dev/null 2>&1; then
    echo "docker engine: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
    exit 0
  fi
  sleep 0.5
done
echo "ensure-docker: dockerd did not answer within 30 s; last lines of $log:" >&2
tail -20 "$log" >&2
exit 1
