#!/usr/bin/env bash
# Start a local two-node Ray test cluster that listens on 127.0.0.1 only.
#
# Usage: cluster/start_local.sh [--head | --worker | --all]
#   (no flag) / --all  start the head, then the worker node (default)
#   --head             start only the head (CPU only; dashboard + job server)
#   --worker           start only the worker node, joining a running head; it
#                      advertises RAYLAW_WORKER_GPUS logical GPUs
# Re-running is safe: a node that is already up (same RAYLAW_CLUSTER_DIR) is left
# alone. Stop with cluster/stop_local.sh, never with a bare `ray stop` (that stops
# every Ray process on the machine, other people's clusters included).
#
# Environment (defaults in parentheses; all read in cluster/_common.sh):
#   RAYLAW_CLUSTER_DIR       (/tmp/raylaw-cluster-$UID) Ray temp dirs <dir>/head, <dir>/worker
#   RAYLAW_RAY_PORT          (6390)  GCS port            127.0.0.1:6390
#   RAYLAW_DASHBOARD_PORT    (8290)  dashboard + jobs    http://127.0.0.1:8290
#   RAYLAW_CLIENT_PORT       (10390) Ray Client server   ray://127.0.0.1:10390
#   RAYLAW_HEAD_AGENT_PORT   (0)     head dashboard-agent HTTP port (0 = OS-assigned)
#   RAYLAW_WORKER_AGENT_PORT (0)     worker dashboard-agent HTTP port (0 = OS-assigned)
#   RAYLAW_HEAD_CPUS         (2)     logical CPUs of the head
#   RAYLAW_WORKER_CPUS       (2)     logical CPUs of the worker
#   RAYLAW_WORKER_GPUS       (2)     logical GPUs of the worker (no physical GPU needed)
#   RAYLAW_OBJECT_STORE_MB   (256)   object store per node
#   RAYLAW_PYTHON            (python) interpreter that has ray[default]
#   RAYLAW_START_TIMEOUT     (120)   seconds before a hanging `ray start` is given up
#   RAYLAW_RAY_START_ARGS    ()      extra `ray start` arguments for both nodes
#   RAYLAW_AUTH_MODE         ($RAY_AUTH_MODE or disabled) or "token": Ray token auth
#   RAYLAW_AUTH_TOKEN_PATH   (<dir>/auth_token) token file, generated if missing
#   AUTOSCALER_METRIC_PORT, DASHBOARD_METRIC_PORT (0) Ray's metrics ports, OS-assigned
# Ray's own RAY_* variables (e.g. RAY_health_check_period_ms) pass through to the
# Ray processes.
#
# Loopback binding: `ray start` would rewrite 127.0.0.1 to the machine's outbound
# address (then GCS/raylet/agents listen on 0.0.0.0 or that address). Both nodes
# are therefore started through cluster/_ray_start_loopback.py, which keeps the
# node IP and GCS address at exactly 127.0.0.1 and exports
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 to the Ray processes. Clients that talk to
# the GCS directly (`ray status`, `ray.init(address=...)`) need that variable too;
# `source $RAYLAW_CLUSTER_DIR/env.sh` sets it. `ray job submit` (HTTP) does not.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/_common.sh
. "$HERE/_common.sh"

want_head=1
want_worker=1
for arg in "$@"; do
  case "$arg" in
    --head) want_head=1; want_worker=0 ;;
    --worker) want_head=0; want_worker=1 ;;
    --all) want_head=1; want_worker=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) rl_log "unknown argument: $arg (use --head, --worker or --all)"; exit 2 ;;
  esac
done

if ! "$RAYLAW_PYTHON" -c 'import ray, ray.dashboard' >/dev/null 2>&1; then
  rl_log "'$RAYLAW_PYTHON' cannot import ray[default]; activate the virtualenv or set RAYLAW_PYTHON"
  exit 1
fi

mkdir -p "$RAYLAW_HEAD_DIR" "$RAYLAW_WORKER_DIR"

# Ray's autoscaler and dashboard Prometheus endpoints use the fixed ports 44217 and
# 44227 unless these are set; 0 (OS-assigned) keeps two clusters on one machine
# (or this one and a local ray.init()) from fighting over them.
export AUTOSCALER_METRIC_PORT="${AUTOSCALER_METRIC_PORT:-0}"
export DASHBOARD_METRIC_PORT="${DASHBOARD_METRIC_PORT:-0}"

# Token authentication, set explicitly for both nodes (see _common.sh). A node that
# joins a running head must use the head's settings, recorded when it started.
auth_conf="$RAYLAW_CLUSTER_DIR/auth.conf"
if [ -s "$auth_conf" ] && [ -n "$(rl_node_pids "$RAYLAW_HEAD_DIR")" ]; then
  head_mode=$(sed -n 's/^RAYLAW_AUTH_MODE=//p' "$auth_conf")
  head_token=$(sed -n 's/^RAYLAW_AUTH_TOKEN_PATH=//p' "$auth_conf")
  if [ "$head_mode" != "$RAYLAW_AUTH_MODE" ]; then
    rl_log "the running head uses auth mode '$head_mode'; using it (not '$RAYLAW_AUTH_MODE')"
  fi
  RAYLAW_AUTH_MODE=$head_mode
  RAYLAW_AUTH_TOKEN_PATH=${head_token:-$RAYLAW_AUTH_TOKEN_PATH}
fi
case "$RAYLAW_AUTH_MODE" in
  disabled)
    export RAY_AUTH_MODE=disabled
    unset RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
    ;;
  token)
    if [ ! -s "$RAYLAW_AUTH_TOKEN_PATH" ]; then
      (umask 077 && "$RAYLAW_PYTHON" -c 'import secrets; print(secrets.token_hex(32))' \
        >"$RAYLAW_AUTH_TOKEN_PATH")
    fi
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$RAYLAW_AUTH_TOKEN_PATH"
    unset RAY_AUTH_TOKEN # the file is the one source of the token
    ;;
  *) rl_log "RAYLAW_AUTH_MODE must be 'disabled' or 'token', not '$RAYLAW_AUTH_MODE'"; exit 2 ;;
esac
object_store_bytes=$((RAYLAW_OBJECT_STORE_MB * 1024 * 1024))
# shellcheck disable=SC2206
extra_args=($RAYLAW_RAY_START_ARGS)

# ray_start LOG ARGS...: `ray start ARGS...` (loopback wrapper), output in LOG,
# shown when it fails or hangs past RAYLAW_START_TIMEOUT.
ray_start() {
  local log=$1 rc=0
  shift
  RAY_USAGE_STATS_ENABLED=0 timeout --kill-after=10 "$RAYLAW_START_TIMEOUT" \
    "$RAYLAW_PYTHON" "$HERE/_ray_start_loopback.py" "$@" \
    --object-store-memory="$object_store_bytes" \
    --min-worker-port=0 --max-worker-port=0 \
    --disable-usage-stats --log-style=record --log-color=false \
    "${extra_args[@]}" >"$log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    [ "$rc" = 124 ] && rl_log "ray start did not finish within ${RAYLAW_START_TIMEOUT}s"
    rl_log "ray start failed (exit $rc); last lines of $log:"
    tail -n 30 "$log" >&2
    return 1
  fi
}

start_head() {
  if [ -n "$(rl_node_pids "$RAYLAW_HEAD_DIR")" ]; then
    rl_log "head already running (temp dir $RAYLAW_HEAD_DIR)"
    return 0
  fi
  local port
  for port in "$RAYLAW_RAY_PORT" "$RAYLAW_DASHBOARD_PORT" "$RAYLAW_CLIENT_PORT"; do
    if rl_port_busy "$port"; then
      rl_log "port $port on 127.0.0.1 is already in use (another Ray instance?);" \
        "set RAYLAW_RAY_PORT / RAYLAW_DASHBOARD_PORT / RAYLAW_CLIENT_PORT"
      return 1
    fi
  done
  rl_log "starting head: GCS $RAYLAW_GCS_ADDRESS, temp dir $RAYLAW_HEAD_DIR"
  if ! ray_start "$RAYLAW_CLUSTER_DIR/head-start.log" \
    --head \
    --node-ip-address=127.0.0.1 \
    --port="$RAYLAW_RAY_PORT" \
    --dashboard-host=127.0.0.1 \
    --dashboard-port="$RAYLAW_DASHBOARD_PORT" \
    --include-dashboard=true \
    --dashboard-agent-listen-port="$RAYLAW_HEAD_AGENT_PORT" \
    --ray-client-server-port="$RAYLAW_CLIENT_PORT" \
    --num-cpus="$RAYLAW_HEAD_CPUS" \
    --num-gpus=0 \
    --temp-dir="$RAYLAW_HEAD_DIR"; then
    rl_stop_node "$RAYLAW_HEAD_DIR" kill || true # clean up a partly started head
    return 1
  fi
  printf 'RAYLAW_AUTH_MODE=%s\nRAYLAW_AUTH_TOKEN_PATH=%s\n' \
    "$RAY_AUTH_MODE" "${RAY_AUTH_TOKEN_PATH:-}" >"$auth_conf"
}

start_worker() {
  if [ -n "$(rl_node_pids "$RAYLAW_WORKER_DIR")" ]; then
    rl_log "worker already running (temp dir $RAYLAW_WORKER_DIR)"
    return 0
  fi
  if ! rl_port_busy "$RAYLAW_RAY_PORT"; then
    rl_log "no head answers at $RAYLAW_GCS_ADDRESS; start it first (cluster/start_local.sh --head)"
    return 1
  fi
  rl_log "starting worker: ${RAYLAW_WORKER_GPUS} logical GPUs, temp dir $RAYLAW_WORKER_DIR"
  if ! ray_start "$RAYLAW_CLUSTER_DIR/worker-start.log" \
    --address="$RAYLAW_GCS_ADDRESS" \
    --node-ip-address=127.0.0.1 \
    --dashboard-agent-listen-port="$RAYLAW_WORKER_AGENT_PORT" \
    --num-cpus="$RAYLAW_WORKER_CPUS" \
    --num-gpus="$RAYLAW_WORKER_GPUS" \
    --temp-dir="$RAYLAW_WORKER_DIR"; then
    rl_stop_node "$RAYLAW_WORKER_DIR" kill || true
    return 1
  fi
}

if [ "$want_head" = 1 ]; then start_head; fi
if [ "$want_worker" = 1 ]; then start_worker; fi

# For clients that connect to the GCS directly (see the note at the top).
cat >"$RAYLAW_CLUSTER_DIR/env.sh" <<EOF
# source this file to talk to the raylaw local Ray cluster in $RAYLAW_CLUSTER_DIR
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_ADDRESS=$RAYLAW_GCS_ADDRESS
export RAY_API_SERVER_ADDRESS=$RAYLAW_JOB_ADDRESS
export RAY_AUTH_MODE=$RAY_AUTH_MODE
EOF
if [ "$RAY_AUTH_MODE" = token ]; then
  echo "export RAY_AUTH_TOKEN_PATH=$RAYLAW_AUTH_TOKEN_PATH" >>"$RAYLAW_CLUSTER_DIR/env.sh"
fi

cat <<EOF
Ray cluster on 127.0.0.1 (dir $RAYLAW_CLUSTER_DIR)
  GCS address       $RAYLAW_GCS_ADDRESS
  dashboard / jobs  $RAYLAW_JOB_ADDRESS
  Ray Client        ray://127.0.0.1:$RAYLAW_CLIENT_PORT
  submit            ray job submit --address $RAYLAW_JOB_ADDRESS --working-dir . -- python -m raylaw.tune sweep ...
  status            source $RAYLAW_CLUSTER_DIR/env.sh && ray status
  stop              RAYLAW_CLUSTER_DIR=$RAYLAW_CLUSTER_DIR $HERE/stop_local.sh [--worker]
EOF
