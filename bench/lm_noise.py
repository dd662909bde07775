"""Run-to-run noise of the built-in LM's final loss at the LM ladder's target scale (CPU).

Run ``python bench/lm_noise.py [--seeds 5]`` (``--smoke``: a tiny model, seconds, prints only).
It trains the best region of an exhaustive lr x batch-size grid at the LM ladder's target
(N = 1e5, D = 2e6, depth 2; weight decay 0.03, warmup 0.05 as there) once per trial seed
(``seed`` sets the initialization and the data order) and reports, per configuration, the mean
and spread of the final validation loss (on the ladder's 2**19-byte final slice). The last
columns count how many of all runs land within 0.5% of the luckiest one: a target that close
to a single run is a lottery. The space's declared ``noise`` comes from here.

At the grid's best configuration it also varies the initialization alone (``init_seed``, data
order 0) and the data order alone (``data_seed``, initialization 0), and asks how early a run's
luck shows: the correlation, within each group of runs of one configuration, between the loss
at a quarter, half and three quarters of the tokens and the final loss.

No Ray: two plain processes, one torch thread each. Writes the section
"## LM final-loss noise (bench/lm_noise.py)" of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks_md import update_section  # noqa: E402
from lm_common import FULL, ROOT, SMOKE, Plan, train_all  # noqa: E402

SECTION = "## LM final-loss noise (bench/lm_noise.py)"
CONFIGS = [(0.004, 1), (0.004, 2), (0.004, 4), (0.008, 8)]  # (lr, batch size): the grid's top
TOL = 0.005
Run = tuple[float, int, int, int]  # lr, batch size, init seed, data seed



def rel_sd(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else math.nan

def run_config(plan: Plan, run: Run) -> dict:
    """One full-length run at the plan's target, as the ladder's trials train (evaluating
    changes no training)."""
    lr, bs, init_seed, data_seed = run
    return {"lr": lr, "batch_size": bs, "scale": plan.target, **plan.constants(),
            "init_seed": init_seed, "data_seed": data_seed}


def early_correlation(groups: list[list[list[float]]], share: float) -> float:
    """Pearson correlation of the loss at ``share`` of the run with the final loss, both taken
    as deviations from their group's mean (a group: runs of one configuration, seeds varied)."""
    xs, ys = [], []
    for curves in groups:
        at = max(0, round(share * len(curves[0])) - 1)
        early = [c[at] for c in curves]
        final = [c[-1] for c in curves]
        xs += [e - statistics.fmean(early) for e in early]
        ys += [f - statistics.fmean(final) for f in final]
    return statistics.correlation(xs, ys)


def stats_row(label: str, vals: list[float], luckiest: float, secs: list[float]) -> str:
    """One table row: spread of final losses and the runs within TOL of the luckiest."""
    mean, sd = statistics.fmean(vals), statistics.stdev(vals)
    hits = sum(v <= (1 + TOL) * luckiest for v in vals)
    return (f"| {label} | {len(vals)} | {mean:.4f} | {sd:.4f} | {100 * sd / mean:.2f}% | "
            f"{min(vals):.4f} | {max(vals):.4f} | {hits} | {statistics.fmean(secs):.0f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="trial seeds per configuration")
    ap.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--smoke", action="store_true",
                    help="2 configurations x 2 seeds of a tiny model, in seconds; prints only")
    args = ap.parse_args(argv)
    if args.seeds < 2:
        ap.error(f"--seeds: expected at least 2 (a spread needs two runs), got {args.seeds}")
    plan, configs = (SMOKE, CONFIGS[:2]) if args.smoke else (FULL, CONFIGS)
    if args.smoke:
        args.seeds, args.no_write = 2, True
    seeds = range(args.seeds)
    lr0, bs0 = configs[0]
    both = {cfg: [(*cfg, s, s) for s in seeds] for cfg in configs}
    init_only = [(lr0, bs0, s, 0) for s in seeds]
    data_only = [(lr0, bs0, 0, s) for s in seeds]
    jobs: list[Run] = list(dict.fromkeys([*(r for rs in both.values() for r in rs),
                                          *init_only, *data_only]))
    t0 = time.time()
    results = dict(zip(jobs, train_all([run_config(plan, r) for r in jobs]), strict=True))
    wall = time.time() - t0

    def finals(runs: list[Run]) -> list[float]:
        return [results[r]["losses"][-1] for r in runs]

    def secs(runs: list[Run]) -> list[float]:
        return [results[r]["secs"] for r in runs]

    luckiest = min(finals(jobs))
    head = ["| runs | mean | sd | sd / mean | min | max | runs <= 1.005 x luckiest | s per run |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = ["| lr | bs " + head[0], "|---:|---:" + head[1]]
    sds = []
    for (lr, bs), runs in both.items():
        vals = finals(runs)
        sds.append(rel_sd(vals))
        rows.append(stats_row(f"{lr:g} | {bs}", vals, luckiest, secs(runs)))
    pooled = math.sqrt(statistics.fmean([s * s for s in sds]))
    hits = sum(v <= (1 + TOL) * luckiest for v in finals(list(results)))
    split = ["| seeds varied " + head[0], "|---" + head[1]]
    for label, runs in [("initialization and data order (`seed`)", both[(lr0, bs0)]),
                        ("initialization alone (`init_seed`; data order 0)", init_only),
                        ("data order alone (`data_seed`; initialization 0)", data_only)]:
        split.append(stats_row(label, finals(runs), luckiest, secs(runs)))
    groups = [[results[r]["losses"] for r in runs]  # run (seed 0, seed 0) counted once
              for runs in [*both.values(), init_only[1:], data_only[1:]] if len(runs) > 1]
    n_curve = len(results[jobs[0]]["losses"])
    corr = {share: early_correlation(groups, share) for share in (0.25, 0.5, 0.75)}
    print(f"Which seed matters, at lr {lr0:g}, bs {bs0} (seed 0 is one run in every row):\n"
          + "\n".join(split) + "\n")
    lines = [SECTION, "",
             "How much the built-in LM's final loss varies from run to run with the trial seed "
             "alone, at the LM ladder's target scale; this is the noise every sweep's answer "
             "must see through.", "",
             f"Command: `python bench/lm_noise.py --seeds {args.seeds}"
             f"{' --smoke' * args.smoke}`  ",
             f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
             f"{wall / 60:.0f} min wall, 2 processes, 1 torch thread each "
             f"(load average {os.getloadavg()[0]:.1f} at the end)  ",
             f"Scale N = {plan.target['N']:g}, D = {plan.target['D']:g} (the LM ladder's "
             f"target); " + ", ".join(f"{k}={v:g}" for k, v in plan.fixed.items())
             + f"; final loss on {plan.final_eval_tokens} validation bytes; trial seeds "
             f"0..{args.seeds - 1} "
             "(each sets the initialization and the data order).", "", *rows, "",
             f"Pooled run-to-run sd: **{100 * pooled:.2f}%** of the loss. Runs within 0.5% "
             f"of the luckiest ({luckiest:.4f}): {hits} of all "
             f"{len(results)} runs.", "",
             f"Varying the initialization alone (`init_seed`) at lr {lr0:g}, bs {bs0} gives "
             f"{100 * rel_sd(finals(init_only)):.2f}% sd, the data order alone (`data_seed`) "
             f"{100 * rel_sd(finals(data_only)):.2f}% ({len(init_only)} runs each). "
             + "How early a run's luck shows: correlation, over runs of one configuration, of the "
             f"loss at a share of the tokens ({n_curve} evaluations, on {plan.eval_tokens} "
             "validation bytes) with the final loss, both as deviations from their "
             "configuration's mean: " + ", ".join(f"{share:.0%} of the run {c:+.2f}"
                                                  for share, c in corr.items()) + ".", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        update_section(args.output, SECTION, text)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
