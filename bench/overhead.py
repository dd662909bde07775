"""Per-trial overhead of a raylaw sweep against raw Ray Tune, timed side by side in one run.

Run ``python bench/overhead.py [--trials 40] [--replicates 3]`` from the repository root. Each
replicate runs the same search twice, in alternating order, each in a fresh process with its
own embedded Ray (so both pay Ray's start-up once):

* **raylaw**: ``python -m raylaw.tune sweep`` over ``search_spaces/lm.yaml`` with the trivial
  trainable below (the law's prior narrows the space; the store is a SQLite file);
* **raw Ray Tune**: ``Tuner`` + ``OptunaSearch`` (its default TPE) + ``ASHAScheduler`` over
  the same hard ranges, at Ray's defaults otherwise.

Both run the same trainable (about ``--seconds`` of sleep per full-length trial, reported in 9
steps of ``tokens``), the same number of trials, 1 CPU per trial on a 2-CPU Ray, and the same
ASHA rungs (first at 1/9 of the budget, reduction factor 3). The table gives each side's wall
time (process start to exit), the trials' own time (``time_total_s`` summed over trials, divided
by the 2 slots), and the ratio raylaw / raw per replicate. Writes the section
"## Sweep overhead against raw Ray Tune (bench/overhead.py)" of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Sweep overhead against raw Ray Tune (bench/overhead.py)"
SPACE = ROOT / "search_spaces" / "lm.yaml"
SCALE = {"N": 5e4, "D": 5e5}
REPORTS = 9  # ASHA's rungs at 1/9 and 1/3 of the budget fall on reports 1 and 3


def trivial(config: dict) -> None:
    """About ``seconds`` of sleep in ``REPORTS`` steps: a loss bowl over lr and batch size."""
    import math

    from ray import tune

    budget = float(config.get("scale", SCALE)["D"])
    final = (2.0 + 0.05 * math.log(config["lr"] / 3e-3) ** 2
             + 0.02 * math.log(config["batch_size"] / 4) ** 2)
    for i in range(1, REPORTS + 1):
        time.sleep(float(config.get("seconds", 1.0)) / REPORTS)
        tune.report({"loss": final + 1.0 / i, "tokens": budget * i / REPORTS})


def run_raw(trials: int, seconds: float, workdir: Path) -> dict:
    """Tuner + OptunaSearch + ASHAScheduler over the space's hard ranges, Ray's defaults."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from raylaw.ray_start import loopback_ray_env

    loopback_ray_env(None)
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _node_ip_address="127.0.0.1", configure_logging=False)
    space = {"lr": tune.loguniform(1e-4, 0.3), "batch_size": tune.lograndint(1, 257),
             "weight_decay": tune.loguniform(1e-3, 0.3), "warmup": tune.uniform(0.0, 0.05),
             "seconds": seconds}
    budget = SCALE["D"]
    tuner = tune.Tuner(
        tune.with_resources(trivial, {"cpu": 1}), param_space=space,
        tune_config=tune.TuneConfig(
            metric="loss", mode="min", num_samples=trials, search_alg=OptunaSearch(seed=0),
            scheduler=ASHAScheduler(time_attr="tokens", max_t=budget, grace_period=budget / 9,
                                    reduction_factor=3)),
        run_config=tune.RunConfig(storage_path=str(workdir / "results"), verbose=0))
    grid = tuner.fit()
    return {"trial_s": sum(r.metrics.get("time_total_s", 0.0) for r in grid),
            "trials": len(grid)}


def run_raylaw(trials: int, seconds: float, workdir: Path) -> tuple[list[str], Path]:
    """The raylaw command line and the store it writes."""
    store = workdir / "raylaw.db"
    return [sys.executable, "-m", "raylaw.tune", "sweep", "--space", str(SPACE),
            "--scale", f"N={SCALE['N']:g}", "--scale", f"D={SCALE['D']:g}",
            "--samples", str(trials), "--trainable", "bench.overhead:trivial",
            "--config", f"seconds={seconds}", "--store", f"sqlite:///{store}",
            "--law", str(workdir / "lm.law.json"), "--results", str(workdir / "results")], store


def raylaw_trial_seconds(store: Path) -> float:
    """Sum of the trials' own time, from the Tune results the sweep left (result.json)."""
    total = 0.0
    for path in store.parent.joinpath("results").rglob("result.json"):
        lines = path.read_text().splitlines()
        if lines:
            total += json.loads(lines[-1]).get("time_total_s", 0.0)
    return total


SIDES = {  # name: what it runs
    "raw": "raw Ray Tune: Tuner + OptunaSearch + ASHAScheduler, Ray's defaults",
    "raylaw": "raylaw sweep, defaults (a finished trial's worker runs the next trial)",
    "raylaw-fresh": "raylaw sweep --no-reuse-actors (a new worker per trial, as Ray's default)",
}


def one(side: str, trials: int, seconds: float) -> dict:
    """Run one side in a fresh process; its wall time from start to exit."""
    with tempfile.TemporaryDirectory(prefix=f"raylaw-overhead-{side}-") as tmp:
        workdir = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # trainable importable by Ray's workers
        if side == "raw":
            cmd = [sys.executable, str(Path(__file__)), "--raw", "--trials", str(trials),
                   "--seconds", str(seconds), "--workdir", str(workdir)]
        else:
            cmd, store = run_raylaw(trials, seconds, workdir)
            cmd += ["--no-reuse-actors"] if side == "raylaw-fresh" else []
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{side} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        if side == "raw":
            out = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            out = {"trial_s": raylaw_trial_seconds(store), "trials": trials}
        return {**out, "wall": wall}


def spread(values: list[float]) -> str:
    """median [min, max]"""
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--replicates", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0,
                    help="sleep of a full-length trial (default 1)")
    ap.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--smoke", action="store_true",
                    help="3 trials of 0.2 s, one replicate, print only (a check of the script)")
    ap.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)  # the raw side's process
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.raw:
        print(json.dumps(run_raw(args.trials, args.seconds, args.workdir)))
        return
    if args.smoke:
        args.trials, args.replicates, args.seconds, args.no_write = 3, 1, 0.2, True
    if args.trials < 1 or args.replicates < 1 or args.seconds <= 0:
        ap.error("--trials and --replicates must be >= 1, --seconds > 0")
    names = list(SIDES)
    runs: list[dict[str, dict]] = []
    t0 = time.time()
    for rep in range(args.replicates):
        order = names[rep % len(names):] + names[:rep % len(names)]  # each side goes first once
        load = os.getloadavg()[0]  # others' work on the machine: the ratios' noise
        runs.append({"load": load, **{side: one(side, args.trials, args.seconds)
                                      for side in order}})
        print(f"replicate {rep + 1} ({' -> '.join(order)}): " + ", ".join(
            f"{side} {runs[-1][side]['wall']:.1f} s" for side in names), flush=True)
    wall = time.time() - t0
    rows = ["| replicate | load before | " + " | ".join(f"{n} (s)" for n in names)
            + " | raylaw / raw | raylaw-fresh / raw |", "|---:|---:|" + "---:|" * (len(names) + 2)]
    ratios: dict[str, list[float]] = {n: [] for n in names[1:]}
    for i, r in enumerate(runs):
        for n in names[1:]:
            ratios[n].append(r[n]["wall"] / r["raw"]["wall"])
        rows.append(f"| {i + 1} | {r['load']:.1f} | "
                    + " | ".join(f"{r[n]['wall']:.1f}" for n in names) + " | "
                    + " | ".join(f"{ratios[n][-1]:.2f}x" for n in names[1:]) + " |")
    work = {n: statistics.fmean(r[n]["trial_s"] / 2 for r in runs) for n in names}
    lines = [SECTION, "",
             "What a raylaw sweep costs beyond its trials, against raw Ray Tune (Tuner + "
             "OptunaSearch + ASHAScheduler) running the same trivial trainable with the same "
             "trial count and resources, side by side in one run.", "",
             f"Command: `python bench/overhead.py --trials {args.trials} --replicates "
             f"{args.replicates} --seconds {args.seconds:g}`  ",
             f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
             f"{wall / 60:.0f} min wall; {os.cpu_count()} CPUs, Ray given 2, 1 per trial; "
             "'load before': the 1-minute load average when a replicate started (other work "
             "on the machine stretches both sides, not always alike)  ",
             f"{args.trials} trials of a trivial trainable ({args.seconds:g} s of sleep per "
             "full-length trial in 9 reports), ASHA (first rung 1/9, reduction factor 3), each "
             "side in a fresh process with its own embedded Ray; wall time from process start "
             "to exit, sides in rotating order.", "",
             *(f"- **{n}**: {what}" for n, what in SIDES.items()), "", *rows, "",
             "Ratio to raw Ray Tune, median [min, max] over replicates: raylaw "
             f"**{spread(ratios['raylaw'])}** (target <= 1.10, stretch <= 0.8); raylaw with a "
             f"new worker per trial {spread(ratios['raylaw-fresh'])}.", "",
             "The trials' own time (sum of `time_total_s` / 2 slots), mean: " + ", ".join(
                 f"{n} {work[n]:.1f} s" for n in names) + "." + (
                 " raylaw trains more: its law's prediction always runs to full length, and "
                 "its narrowed trials survive ASHA's rungs more often than the full range's."
                 if work["raylaw"] > work["raw"] else ""), ""]
    from benchmarks_md import publish

    publish("\n".join(lines), args.output, SECTION, write=not args.no_write)


if __name__ == "__main__":
    main()
