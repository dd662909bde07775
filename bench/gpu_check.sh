#!/usr/bin/env bash
# The prepared check of raylaw on a GPU machine: at most 8 minutes on one H200 with 16 cores.
#
# Usage: bench/gpu_check.sh [--cpu]
#   --cpu  rehearse every stage on a machine without a GPU (small, CPU trials), so the script
#          itself is tested before a GPU lease is spent on it
#   GPU_CHECK_STAGES="sweep optuna"  runs only those stages (default: all)
#
# Stages, each in its own processes under its own time limit (a failing or hanging stage does
# not stop the others), in this order:
#   nvidia-smi   the GPU, driver and what else runs on it
#   throughput   bench/lm_throughput.py --device cuda: model FLOP/s vs the bf16 matmul rate
#                measured in the same run (MFU), eager and torch.compile, widths 512-1024
#   sweep        8 trials of the built-in LM with --gpus-per-trial 0.25 on an embedded Ray;
#                from the store: every trial ran on cuda, and at least 4 ran at once
#   optuna       examples/optuna_lm.py: LawSampler in a plain Optuna study (no Ray), the LM
#                on CUDA
#   workers      2 trials of 2 Ray Train workers x 0.25 GPU each (DDP over gloo, one GPU)
# A stage that needs Ray or Optuna and cannot import it is skipped, and the summary says so.
#
# Everything is written to a work dir ($GPU_CHECK_DIR, else a new temp dir): a log per stage,
# <stage>.json, stages.tsv, the stages' stores and Ray results, device.txt, throughput.md and
# gpu_check.md (the two BENCHMARKS.md sections). The summary table comes last on stdout. When
# OUT is set, gpu_check.md, throughput.md, stages.tsv and gpu_check_files.tar.gz (the logs,
# JSON results and stores; no Ray results) are copied there.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT_DIR=${GPU_CHECK_DIR:-$(mktemp -d /tmp/raylaw-gpu-check-XXXXXX)}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
CPU=
[ "${1:-}" = "--cpu" ] && CPU=--cpu
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
: >"$OUT_DIR/stages.tsv"
echo "raylaw GPU check: results in $OUT_DIR"

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$OUT_DIR/stages.tsv"; }

# stage NAME LIMIT_S CMD...: run CMD under a time limit, its output in NAME.log (tail shown);
# a rehearsal on a small CPU machine gets 3 times as long
stage() {
  local name=$1 limit=$2 t0=$SECONDS rc status
  case " ${GPU_CHECK_STAGES:-$name} " in *" $name "*) ;; *) return 0 ;; esac
  [ -n "$CPU" ] && limit=$((limit * 3))
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  timeout -k 10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="TIMEOUT (${limit}s)" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  tail -n 20 "$OUT_DIR/$name.log"
  record "$name" "$status" "$((SECONDS - t0))"
}

skip() {
  case " ${GPU_CHECK_STAGES:-$1} " in *" $1 "*) ;; *) return 0 ;; esac
  echo "=== $1: SKIPPED ($2)"
  record "$1" "skipped: $2" 0
}

can_import() { "$PY" -c "import $1" >/dev/null 2>&1; }

if command -v nvidia-smi >/dev/null 2>&1; then
  stage nvidia-smi 15 nvidia-smi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    >"$OUT_DIR/device.txt" 2>/dev/null
else
  skip nvidia-smi "no nvidia-smi"
  echo "no GPU (rehearsal on $(uname -m))" >"$OUT_DIR/device.txt"
fi
"$PY" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}")' \
  >>"$OUT_DIR/device.txt" 2>&1
tr '\n' ';' <"$OUT_DIR/device.txt" | sed 's/;$//; s/;/; /g' >"$OUT_DIR/device.tmp" &&
  mv "$OUT_DIR/device.tmp" "$OUT_DIR/device.txt"

if ! can_import optuna; then
  skip throughput "optuna missing (raylaw imports it)"
elif [ -n "$CPU" ]; then
  stage throughput 80 "$PY" bench/lm_throughput.py --rehearse --seconds 0.5 --window 0.3
else
  stage throughput 150 "$PY" bench/lm_throughput.py --device cuda --budget 130 \
    --output "$OUT_DIR/throughput.md"
fi

if can_import ray.tune && can_import optuna; then
  stage sweep 100 "$PY" bench/gpu_check.py sweep --out "$OUT_DIR" $CPU
else
  skip sweep "ray[tune] or optuna missing"
fi

if can_import optuna; then
  stage optuna 90 "$PY" bench/gpu_check.py optuna --out "$OUT_DIR" $CPU
else
  skip optuna "optuna missing"
fi

if can_import ray.train.torch && can_import optuna; then
  stage workers 120 "$PY" bench/gpu_check.py workers --out "$OUT_DIR" $CPU
else
  skip workers "ray[train] or optuna missing"
fi

echo "=== summary"
"$PY" bench/gpu_check.py summary --out "$OUT_DIR"
rc=$?
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  for f in gpu_check.md throughput.md stages.tsv; do
    [ -f "$OUT_DIR/$f" ] && cp "$OUT_DIR/$f" "$OUT/"
  done
  tar -czf "$OUT/gpu_check_files.tar.gz" -C "$OUT_DIR" --exclude='*-results' . 2>/dev/null
  echo "copied the results to $OUT"
fi
exit $rc
