"""The Python stages of bench/gpu_check.sh: sweeps on the GPU checked from their store, and the
summary table (stdout, ``$OUT/gpu_check.md`` and the GPU check section of BENCHMARKS.md).

    python bench/gpu_check.py sweep   --out DIR [--cpu]   8 trials, 0.25 GPU each: all on cuda,
                                                          >= 4 at once (from the store's ``ran``)
    python bench/gpu_check.py workers --out DIR [--cpu]   2 trials of 2 Ray Train workers x 0.25 GPU
    python bench/gpu_check.py optuna  --out DIR [--cpu]   examples/optuna_lm.py: LawSampler, no Ray
    python bench/gpu_check.py summary --out DIR           the table of every stage

``--cpu`` rehearses a stage on a machine without a GPU (CPU trials, expects device cpu). Each
stage writes ``DIR/<stage>.json``; the shell script records each stage's exit code and time in
``DIR/stages.tsv``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## GPU check (bench/gpu_check.sh)"
# seconds per trial on one H200 (torch import and CUDA start included): 1e6 parameters, 5e5
# bytes; a batch of 1 sequence (the space's floor) is 3,900 steps, ~10 s (4e6 bytes: ~90 s)
SCALE = ("N=1e6", "D=5e5")
CPU_SCALE = ("N=2e4", "D=3e4")


def run_sweep(out: Path, name: str, flags: list[str], scale: tuple[str, ...]) -> tuple[int, str]:
    """``python -m raylaw.tune sweep`` in its own process (its own embedded Ray); rc, log path."""
    log = out / f"{name}-run.log"  # {name}.log is the stage's own (the shell script's)
    args = [sys.executable, "-m", "raylaw.tune", "sweep", "--space", "search_spaces/lm.yaml",
            "--store", f"sqlite:///{out / name}.db", "--law", str(out / f"{name}.law.json"),
            "--results", str(out / f"{name}-results"), "--verbose", "1", *flags]
    for s in scale:
        args += ["--scale", s]
    with log.open("w") as f:
        rc = subprocess.run(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    return rc, log.name  # beside the stage's JSON in DIR


def store_trials(out: Path, name: str) -> list:
    import optuna

    storage = f"sqlite:///{out / name}.db"
    (study,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def check_sweep(out: Path, name: str, rc: int, device: str, samples: int,
                min_at_once: int) -> dict:
    """What the store says about a sweep: devices, statuses, trials at once, trial seconds."""
    from raylaw.records import most_at_once

    ts = store_trials(out, name)
    spans = [t.user_attrs["ran"] for t in ts if "ran" in t.user_attrs]
    devices = sorted({t.user_attrs.get("device", "?") for t in ts})
    statuses: dict[str, int] = {}
    for t in ts:
        statuses[t.user_attrs.get("raylaw_status", "?")] = statuses.get(
            t.user_attrs.get("raylaw_status", "?"), 0) + 1
    at_once = most_at_once(ts)
    seconds = sorted(round(e - s, 1) for s, e in spans)
    problems = []
    if rc != 0:
        problems.append(f"sweep exited {rc}")
    if len(ts) != samples:
        problems.append(f"{len(ts)} trials in the store, expected {samples}")
    if devices != [device]:
        problems.append(f"devices {devices}, expected only {device}")
    if at_once < min_at_once:
        problems.append(f"at most {at_once} trials ran at once, expected >= {min_at_once}")
    return {"ok": not problems, "problems": problems, "trials": len(ts), "devices": devices,
            "statuses": statuses, "at_once": at_once, "trial_seconds": seconds,
            "resources": ts[0].user_attrs.get("resources") if ts else None}


def stage_sweep(args: argparse.Namespace) -> dict:
    gpu = ["--gpus-per-trial", "0", "--cpus-per-trial", "0.5"] if args.cpu else [
        "--gpus-per-trial", "0.25", "--cpus-per-trial", "1"]
    rc, log = run_sweep(args.out, "sweep", ["--samples", "8", *gpu],
                        CPU_SCALE if args.cpu else SCALE)
    return {**check_sweep(args.out, "sweep", rc, "cpu" if args.cpu else "cuda", 8, 4),
            "log": log}


def stage_workers(args: argparse.Namespace) -> dict:
    gpu = ["--gpus-per-trial", "0", "--cpus-per-trial", "0.5"] if args.cpu else [
        "--gpus-per-trial", "0.25", "--cpus-per-trial", "1"]
    # a worker group took ~43 s to start on the H200 machine, and DDP over gloo copies every
    # gradient through the host: 2e5 bytes keep the trials to a minute
    rc, log = run_sweep(args.out, "workers", ["--samples", "2", "--workers-per-trial", "2",
                                              "--grace-fraction", "1", *gpu],
                        CPU_SCALE if args.cpu else (SCALE[0], "D=2e5"))
    return {**check_sweep(args.out, "workers", rc, "cpu" if args.cpu else "cuda", 2, 2),
            "log": log}


def stage_optuna(args: argparse.Namespace) -> dict:
    scale = CPU_SCALE if args.cpu else SCALE
    cmd = [sys.executable, "examples/optuna_lm.py", "--trials", "4" if args.cpu else "6",
           "--json", *(a for s in scale for a in ("--scale", s))]
    log = args.out / "optuna-run.log"
    with log.open("w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    lines = log.read_text().splitlines()
    r = json.loads(lines[-1]) if rc == 0 and lines and lines[-1].startswith("{") else {}
    device = "cpu" if args.cpu else "cuda"
    problems = [f"exited {rc}"] if rc else []
    if r and r["devices"] != [device]:
        problems.append(f"devices {r['devices']}, expected only {device}")
    return {"trials": 0, "completed": 0, "pruned": 0, "devices": [], "best": None,
            "seconds": 0, **r, "ok": not problems, "problems": problems, "log": log.name}


def stage_summary(args: argparse.Namespace) -> dict:
    """Print the table of stages; write DIR/gpu_check.md (the BENCHMARKS.md section)."""
    rows = []
    tsv = args.out / "stages.tsv"
    for line in tsv.read_text().splitlines() if tsv.exists() else []:
        name, status, seconds = line.split("\t")[:3]
        detail = ""
        result = args.out / f"{name}.json"
        if result.exists():
            r = json.loads(result.read_text())
            detail = describe(name, r)
            if status == "ok" and not r.get("ok", True):
                status = "FAILED"
        elif name == "throughput":
            detail = describe_throughput(args.out / "throughput.log")
        rows.append((name, status, seconds, detail))
    device = (args.out / "device.txt").read_text().strip() if (
        args.out / "device.txt").exists() else "unknown device"
    lines = [SECTION, "",
             "Command: `bench/gpu_check.sh`  ",
             f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}  ",
             f"Device: {device}", "",
             "| stage | status | seconds | what it found |", "|---|---|---:|---|"]
    lines += [f"| {n} | {s} | {sec} | {d} |" for n, s, sec, d in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    (args.out / "gpu_check.md").write_text(text)
    return {"ok": all(r[1] in ("ok", "skipped") for r in rows)}


def describe_throughput(log: Path) -> str:
    """MFU per width and variant, from the benchmark's progress lines."""
    found = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        m = re.match(r"width (\d+) (.+?): .*MFU (\d+%)", line)
        if m:
            found.setdefault(int(m.group(1)), []).append(f"{m.group(2)} {m.group(3)}")
    return "MFU: " + "; ".join(f"{w}: {', '.join(v)}" for w, v in sorted(found.items())) if (
        found) else ""


def describe(name: str, r: dict) -> str:
    """One cell: what a stage found."""
    if name in ("sweep", "workers"):
        secs = r.get("trial_seconds") or [0]
        text = (f"{r['trials']} trials, devices {'/'.join(r['devices'])}, statuses "
                f"{', '.join(f'{k} {v}' for k, v in sorted(r['statuses'].items()))}; at most "
                f"{r['at_once']} at once; {min(secs):.0f}-{max(secs):.0f} s per trial")
        return text + ("; " + "; ".join(r["problems"]) if r["problems"] else "")
    if name == "optuna":
        best = f"{r['best']:.4f}" if isinstance(r.get("best"), float) else "-"
        return (f"{r['trials']} trials ({r['completed']} completed, {r['pruned']} pruned) on "
                f"{'/'.join(r['devices'])}, best loss {best}, {r['seconds']} s"
                + ("; " + "; ".join(r["problems"]) if r.get("problems") else ""))
    return r.get("note", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["sweep", "workers", "optuna", "summary"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu", action="store_true", help="rehearse without a GPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {"sweep": stage_sweep, "workers": stage_workers, "optuna": stage_optuna,
              "summary": stage_summary}[args.stage](args)
    if args.stage != "summary":
        result["seconds"] = round(time.perf_counter() - t0, 1)
        (args.out / f"{args.stage}.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
    sys.exit(0 if result.get("ok", True) else 1)


if __name__ == "__main__":
    main()
