# shellcheck shell=bash
# shellcheck disable=SC2034  # variables are used by the scripts that source this file
# Shared settings and helpers for cluster/start_local.sh and cluster/stop_local.sh.
# Sourced, not executed. Every setting can be overridden from the environment:
#
#   RAYLAW_CLUSTER_DIR       base dir for this local cluster (default /tmp/raylaw-cluster-$UID).
#                            The head uses $RAYLAW_CLUSTER_DIR/head and the worker
#                            $RAYLAW_CLUSTER_DIR/worker as Ray --temp-dir; keep it short
#                            (Ray puts unix sockets under it, limit ~100 characters).
#   RAYLAW_RAY_PORT          GCS port of the head (default 6390)
#   RAYLAW_DASHBOARD_PORT    dashboard + job server port on 127.0.0.1 (default 8290)
#   RAYLAW_CLIENT_PORT       Ray Client server port, head only (default 10390)
#   RAYLAW_HEAD_AGENT_PORT   dashboard-agent HTTP port of the head (default 0 = OS-assigned)
#   RAYLAW_WORKER_AGENT_PORT dashboard-agent HTTP port of the worker (default 0 = OS-assigned)
#   RAYLAW_HEAD_CPUS         logical CPUs of the head (default 2)
#   RAYLAW_WORKER_CPUS       logical CPUs of the worker (default 2)
#   RAYLAW_WORKER_GPUS       logical GPUs the worker advertises (default 2; no real GPU needed)
#   RAYLAW_OBJECT_STORE_MB   object store per node in MB (default 256)
#   RAYLAW_STOP_GRACE        seconds to wait after SIGTERM before SIGKILL (default 15)
#   RAYLAW_PYTHON            python with ray[default] installed (default: `python` on PATH)
#   RAYLAW_START_TIMEOUT     seconds one `ray start` may take before it is abandoned (default 120)
#   RAYLAW_RAY_START_ARGS    extra arguments appended to both `ray start` calls (word-split)
#   RAYLAW_AUTH_MODE         Ray token authentication, "disabled" or "token" (default:
#                            $RAY_AUTH_MODE if set, else "disabled"). Always set explicitly
#                            for both nodes: with RAY_AUTH_MODE unset, Ray 2.60 turns tokens on
#                            for the head when ~/.ray/auth_token exists (any local ray.init()
#                            creates it) but not for a joining worker, which then cannot connect.
#   RAYLAW_AUTH_TOKEN_PATH   token file for "token" mode (default $RAYLAW_CLUSTER_DIR/auth_token,
#                            created with a random token, mode 600, if missing)

RAYLAW_CLUSTER_DIR="${RAYLAW_CLUSTER_DIR:-/tmp/raylaw-cluster-$(id -u)}"
RAYLAW_RAY_PORT="${RAYLAW_RAY_PORT:-6390}"
RAYLAW_DASHBOARD_PORT="${RAYLAW_DASHBOARD_PORT:-8290}"
RAYLAW_CLIENT_PORT="${RAYLAW_CLIENT_PORT:-10390}"
RAYLAW_HEAD_AGENT_PORT="${RAYLAW_HEAD_AGENT_PORT:-0}"
RAYLAW_WORKER_AGENT_PORT="${RAYLAW_WORKER_AGENT_PORT:-0}"
RAYLAW_HEAD_CPUS="${RAYLAW_HEAD_CPUS:-2}"
RAYLAW_WORKER_CPUS="${RAYLAW_WORKER_CPUS:-2}"
RAYLAW_WORKER_GPUS="${RAYLAW_WORKER_GPUS:-2}"
RAYLAW_OBJECT_STORE_MB="${RAYLAW_OBJECT_STORE_MB:-256}"
RAYLAW_STOP_GRACE="${RAYLAW_STOP_GRACE:-15}"
RAYLAW_PYTHON="${RAYLAW_PYTHON:-python}"
RAYLAW_START_TIMEOUT="${RAYLAW_START_TIMEOUT:-120}"
RAYLAW_RAY_START_ARGS="${RAYLAW_RAY_START_ARGS:-}"
RAYLAW_AUTH_MODE="${RAYLAW_AUTH_MODE:-${RAY_AUTH_MODE:-disabled}}"

# Ray wants an absolute temp dir; the process scan below matches on it.
case "$RAYLAW_CLUSTER_DIR" in
  /*) ;;
  *) RAYLAW_CLUSTER_DIR="$(pwd)/$RAYLAW_CLUSTER_DIR" ;;
esac
RAYLAW_CLUSTER_DIR="${RAYLAW_CLUSTER_DIR%/}"
RAYLAW_HEAD_DIR="$RAYLAW_CLUSTER_DIR/head"
RAYLAW_WORKER_DIR="$RAYLAW_CLUSTER_DIR/worker"
RAYLAW_GCS_ADDRESS="127.0.0.1:$RAYLAW_RAY_PORT"
RAYLAW_JOB_ADDRESS="http://127.0.0.1:$RAYLAW_DASHBOARD_PORT"
RAYLAW_AUTH_TOKEN_PATH="${RAYLAW_AUTH_TOKEN_PATH:-$RAYLAW_CLUSTER_DIR/auth_token}"

rl_log() { printf '[raylaw-cluster] %s\n' "$*" >&2; }

# The pids of the current shell and its ancestors: never touched by the scan.
_rl_self_pids() {
  local p=$$
  while [ -n "$p" ] && [ "$p" != 0 ]; do
    printf '%s\n' "$p"
    p=$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null)
  done
}

# True when process $1 is a Ray process belonging to node dir $2: its command
# line names the dir (gcs_server --log_dir, raylet --temp_dir, dashboard, monitor,
# log_monitor, ...) or its stdout/stderr is a log file under it (Ray client
# server, whose command line names only addresses).
_rl_pid_in_dir() {
  local pid=$1 dir=$2 cmd f target
  cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  case "$cmd" in *ray*) ;; *) return 1 ;; esac
  case "$cmd" in *"$dir/"* | *"$dir "* | *"$dir") return 0 ;; esac
  for f in "/proc/$pid/fd/1" "/proc/$pid/fd/2"; do
    target=$(readlink "$f" 2>/dev/null) || continue
    case "$target" in "$dir/"*) return 0 ;; esac
  done
  return 1
}

# Print the pids of every process of the Ray node whose --temp-dir is $1,
# including descendants (workers, agents, dashboard subprocesses). Only
# processes started with that temp dir are listed, never other Ray instances.
rl_node_pids() {
  local dir=$1 roots="" p pid self
  self=" $(_rl_self_pids | tr '\n' ' ') "
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    case "$self" in *" $pid "*) continue ;; esac
    if _rl_pid_in_dir "$pid" "$dir"; then roots="$roots $pid"; fi
  done
  [ -n "$roots" ] || return 0
  # Close over children (ps gives pid/ppid for every process).
  ps -eo pid=,ppid= | awk -v roots="$roots" -v self="$self" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { parent[$1] = $2 }
    END {
      changed = 1
      while (changed) {
        changed = 0
        for (c in parent) if (!(c in keep) && (parent[c] in keep) && index(self, " " c " ") == 0) {
          keep[c] = 1; changed = 1
        }
      }
      for (k in keep) if (k in parent) print k
    }' | sort -n
}

# Pids from the list on stdin whose process name is exactly $1 (e.g. raylet).
_rl_filter_comm() {
  local want=$1 pid
  while read -r pid; do
    [ "$(cat 2>/dev/null <"/proc/$pid/comm")" = "$want" ] && printf '%s\n' "$pid"
  done
  return 0
}

# The pids among "$@" that are still running (zombies count as gone: in a container
# whose init does not reap, a dead Ray process can stay a zombie).
_rl_alive() {
  local pid state out=""
  for pid in "$@"; do
    # field 3 of /proc/PID/stat, after the "(comm)" that may contain spaces
    state=$(sed -e 's/^.*) //' -e 's/ .*//' 2>/dev/null <"/proc/$pid/stat") || continue
    [ -n "$state" ] && [ "$state" != Z ] && out="$out $pid"
  done
  printf '%s' "${out# }"
}

# _rl_term_wait SIGNAL GRACE PIDS...: signal the pids, wait up to GRACE seconds,
# SIGKILL what is left.
_rl_term_wait() {
  local sig=$1 grace=$2 left i
  shift 2
  [ $# -gt 0 ] || return 0
  kill "-$sig" "$@" 2>/dev/null || true
  i=0
  while [ "$i" -lt $((grace * 5)) ]; do
    left=$(_rl_alive "$@")
    [ -z "$left" ] && return 0
    sleep 0.2
    i=$((i + 1))
  done
  left=$(_rl_alive "$@")
  if [ -n "$left" ]; then
    rl_log "still alive after ${grace}s, sending SIGKILL: $left"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    sleep 0.5
  fi
}

# rl_stop_node DIR [kill]: stop the Ray node started with --temp-dir DIR.
# Same order as `ray stop` (raylet first, gcs_server last) but restricted to this
# node's own pids; `ray stop` itself would stop every Ray process on the machine.
# With "kill" every process gets SIGKILL at once (simulates a crashed node).
rl_stop_node() {
  local dir=$1 mode=${2:-term} pids raylets gcs rest
  pids=$(rl_node_pids "$dir")
  if [ -z "$pids" ]; then
    return 1
  fi
  if [ "$mode" = kill ]; then
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  else
    raylets=$(printf '%s\n' "$pids" | _rl_filter_comm raylet)
    gcs=$(printf '%s\n' "$pids" | _rl_filter_comm gcs_server)
    # shellcheck disable=SC2086
    _rl_term_wait TERM "$RAYLAW_STOP_GRACE" $raylets
    # Re-scan: workers and agents of the raylet may already be gone.
    rest=$(rl_node_pids "$dir" | grep -vxF -e "${gcs:-none}" || true)
    # shellcheck disable=SC2086
    _rl_term_wait TERM "$RAYLAW_STOP_GRACE" $rest
    # shellcheck disable=SC2086
    _rl_term_wait TERM "$RAYLAW_STOP_GRACE" $gcs
  fi
  # Anything that escaped (e.g. orphaned workers) gets SIGKILL.
  pids=$(rl_node_pids "$dir")
  if [ -n "$pids" ]; then
    rl_log "killing leftover processes: ${pids//$'\n'/ }"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
  return 0
}

# True when something accepts TCP connections on 127.0.0.1:$1.
rl_port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
