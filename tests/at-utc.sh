#!/usr/bin/env bash
# Run a command with the wall clock set to HH:MM UTC of today, for it and every process it starts.
#
#   tests/at-utc.sh 00:05 .venv/bin/pytest tests/monitoring
#
# libfaketime (Debian: `apt-get install faketime`) is preloaded with a relative offset, so the
# clock keeps running and every child process (servers) shares the same faked time (the
# harness's pods, whose env is the kubelet's, keep this machine's clock unless a test moves the
# cluster's: Cluster.set_clock in tests/cluster/pods.py); monotonic clocks move with it, which keeps sleeps and timeouts working. Without libfaketime
# the run is skipped, or fails under MLREF_STRICT_TESTS=1 (CI), as a missing server does.
set -euo pipefail

if [[ $# -lt 2 || ! $1 =~ ^[0-2][0-9]:[0-5][0-9]$ ]]; then
  echo "usage: $0 HH:MM command [args...]" >&2
  exit 2
fi
clock=$1
shift

lib=""
for candidate in /usr/lib/*/faketime/libfaketimeMT.so.1 /usr/lib/faketime/libfaketimeMT.so.1; do
  if [[ -f $candidate ]]; then
    lib=$candidate
    break
  fi
done
if [[ -z $lib ]]; then
  if [[ ${MLREF_STRICT_TESTS:-} == 1 ]]; then
    echo "MLREF_STRICT_TESTS=1 and libfaketime not found: install it with \`apt-get install faketime\`" >&2
    exit 1
  fi
  echo "SKIPPED at $clock UTC: libfaketime not found: install it with \`apt-get install faketime\`" >&2
  exit 0
fi

now=$(date -u +%s)
target=$(date -u -d "$(date -u +%F) $clock:00" +%s)
offset=$((target - now))
((offset >= 0)) && offset="+$offset"
echo "clock set to $(date -u -d "@$target" '+%F %H:%M:%S') UTC (offset ${offset}s): $*"
LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" FAKETIME="${offset}s" exec "$@"
