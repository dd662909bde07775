#!/usr/bin/env bash
# Stop the local Ray test cluster started by cluster/start_local.sh.
#
# Usage: cluster/stop_local.sh [--worker | --head | --all] [--kill] [--clean]
#   (no flag) / --all  stop the worker node, then the head (default)
#   --worker           stop only the worker node (the head keeps running and
#                      sees the node leave; use this to simulate a node dying)
#   --head             stop only the head
#   --kill             SIGKILL instead of SIGTERM + grace period (a crash rather
#                      than a shutdown; the GCS then notices through missed
#                      health checks, ~15 s by default, see RAY_health_check_*
#                      in cluster/README.md)
#   --clean            also remove the stopped nodes' temp/log dirs (RAYLAW_CLUSTER_DIR/{head,worker});
#                      with both nodes stopped, also env.sh and a generated auth_token
#
# Only processes that belong to this cluster are touched: they are found by their
# Ray temp dir (RAYLAW_CLUSTER_DIR/head, RAYLAW_CLUSTER_DIR/worker) in their command
# line or log-file descriptors, plus their child processes. This works after a
# partial start too, and exits 0 when nothing is running. `ray stop` is not used
# because it stops every Ray process on the machine.
#
# Environment:
#   RAYLAW_CLUSTER_DIR  (/tmp/raylaw-cluster-$UID) must match the one used to start
#   RAYLAW_STOP_GRACE   (15) seconds between SIGTERM and SIGKILL, per process group
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/_common.sh
. "$HERE/_common.sh"

stop_head=1
stop_worker=1
mode=term
clean=0
for arg in "$@"; do
  case "$arg" in
    --worker) stop_head=0; stop_worker=1 ;;
    --head) stop_head=1; stop_worker=0 ;;
    --all) stop_head=1; stop_worker=1 ;;
    --kill) mode="kill" ;;
    --clean) clean=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) rl_log "unknown argument: $arg"; exit 2 ;;
  esac
done

if [ "$stop_worker" = 1 ]; then
  if rl_stop_node "$RAYLAW_WORKER_DIR" "$mode"; then
    rl_log "worker stopped ($RAYLAW_WORKER_DIR)"
  else
    rl_log "no worker running ($RAYLAW_WORKER_DIR)"
  fi
fi
if [ "$stop_head" = 1 ]; then
  if rl_stop_node "$RAYLAW_HEAD_DIR" "$mode"; then
    rl_log "head stopped ($RAYLAW_HEAD_DIR)"
  else
    rl_log "no head running ($RAYLAW_HEAD_DIR)"
  fi
fi

if [ "$clean" = 1 ]; then
  [ "$stop_worker" = 1 ] && rm -rf "$RAYLAW_WORKER_DIR" "$RAYLAW_CLUSTER_DIR/worker-start.log"
  [ "$stop_head" = 1 ] && rm -rf "$RAYLAW_HEAD_DIR" "$RAYLAW_CLUSTER_DIR/head-start.log"
  if [ "$stop_worker" = 1 ] && [ "$stop_head" = 1 ]; then
    rm -f "$RAYLAW_CLUSTER_DIR/env.sh" "$RAYLAW_CLUSTER_DIR/auth.conf"
    # a generated token (not one the user pointed RAYLAW_AUTH_TOKEN_PATH at)
    rm -f "$RAYLAW_CLUSTER_DIR/auth_token"
  fi
  rmdir "$RAYLAW_CLUSTER_DIR" 2>/dev/null || true
fi
exit 0
