"""How many trials a prior-aware search needs to find a near-optimal (lr, bs) on Step Law data.

Run ``python bench/hpo_efficiency.py [--seeds 20] [--budget 64] [--workers 2]``.

Protocol. The objective at each of the 17 dense-model scales of the Step Law sweeps
(``examples/data/steplaw_dense_lr_bs_loss.csv``, metric ``smooth loss``) is the loss
interpolated linearly in (log lr, log bs) over that scale's grid (nearest grid point outside its
hull), ``bench/steplaw_data.py``; regret = loss / the scale's best loss - 1. For each scale the
law is fitted leave-one-scale-out: ``ScalingLaw.for_space(space, prior=None)`` fitted to the
``extract_optimum`` optima of the other 16 scales. Each search asks for
``trial.suggest_float("lr", 2.4e-4, 2.2e-2, log=True)`` and
``trial.suggest_int("bs", 16, 2048, log=True)`` (the data's hard ranges) in an Optuna ask/tell
loop of at most ``--budget`` trials, told the interpolated loss, once per seed (the sampler's
seed) and method:

1. ``raylaw``: ``LawSampler(law, space, scale, seed=seed)`` with its defaults;
2. ``raylaw, wrong law``: the same with the law's predicted center moved 4x up in lr and 4x up in
   batch size (every term's intercept shifted by log 4 on a freshly fitted copy);
3. ``TPE``: ``TPESampler(seed=seed)`` (defaults) over the full ranges;
4. ``random``: ``RandomSampler(seed=seed)`` over the full ranges.

Per run we record the first trial (1-based) whose regret is <= 0.10% and <= 0.05%; a run stops
once both are reached, and a run that never reaches a threshold within the budget counts as
infinitely many trials. Per method we report the median and 90th percentile of those counts
('>budget' when the percentile is infinite) and the share of runs that never reach them, plus
the ratios TPE / raylaw and wrong law / TPE of the medians. Scales (x methods) run in parallel
on ``--workers`` processes. The table is printed and written to the section
"## Prior-aware search efficiency on Step Law data (bench/hpo_efficiency.py)" of BENCHMARKS.md,
and the share of runs that reached each threshold against the number of trials is plotted to
``bench/hpo_efficiency.png``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread per worker process: workers fill the cores

import argparse  # noqa: E402
import datetime  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import optuna  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

import steplaw_data  # noqa: E402
from benchmarks_md import update_section  # noqa: E402

from raylaw.law import ScalingLaw  # noqa: E402
from raylaw.optimum import extract_optimum  # noqa: E402
from raylaw.optuna import LawSampler  # noqa: E402
from raylaw.space import SearchSpace  # noqa: E402

SECTION = "## Prior-aware search efficiency on Step Law data (bench/hpo_efficiency.py)"
LR_RANGE = (2.4e-4, 2.2e-2)  # the data's hard ranges
BS_RANGE = (16, 2048)
THRESHOLDS = (0.001, 0.0005)  # regret: 0.10% and 0.05%
MAIN = 0.0005  # the threshold the targets are judged on
WRONG_FACTOR = 4.0
METHODS = {  # key -> label
    "raylaw": "raylaw (LawSampler, LOSO law)",
    "wrong": "raylaw, wrong law (center 4x lr, 4x bs)",
    "tpe": "TPE, full range",
    "random": "random, full range",
}
ORDER = ("tpe", "wrong", "raylaw", "random")  # submission order: slowest tasks first
TARGET_MEDIAN = 7.0  # raylaw median trials to 0.05%
TARGET_SPEEDUP = 5.0  # TPE median / raylaw median at 0.05%
TARGET_FAIL = 0.05  # raylaw share of runs never reaching 0.05%
TARGET_WRONG = 1.5  # wrong-law median / TPE median at 0.05%


@dataclass
class Run:
    method: str
    scale: int
    seed: int
    first: dict[float, int | None]  # threshold -> first trial (1-based) reaching it
    regret1: float  # regret of the first trial


# worker side ----------------------------------------------------------------------------------
_STATE: dict = {}


def _init() -> None:
    """Per process: the data, the space and every scale's optimum (cheap; done once)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    space = SearchSpace.load(steplaw_data.SPACE)
    scales = steplaw_data.scales()
    _STATE.update(space=space, scales=scales,
                  optima=[extract_optimum(s.rows, space, s.scale) for s in scales])


def loso_law(i: int, wrong: bool = False) -> ScalingLaw:
    """The law fitted without scale ``i``; ``wrong`` moves its center 4x up in lr and bs."""
    optima = [o for j, o in enumerate(_STATE["optima"]) if j != i]
    law = ScalingLaw.for_space(_STATE["space"], prior=None).fit(optima)
    if wrong:
        for t in law.terms.values():
            t.means[:, 0] += math.log(WRONG_FACTOR)
    return law


def make_sampler(method: str, law: ScalingLaw | None, scale: dict[str, float],
                 seed: int) -> optuna.samplers.BaseSampler:
    if method in ("raylaw", "wrong"):
        return LawSampler(law, _STATE["space"], scale, seed=seed)
    if method == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(method)


def search(sampler: optuna.samplers.BaseSampler, sc: steplaw_data.Scale,
           budget: int) -> tuple[dict[float, int | None], float]:
    """One ask/tell search; the first trial reaching each threshold, and trial 1's regret."""
    study = optuna.create_study(sampler=sampler, direction="minimize")
    first: dict[float, int | None] = dict.fromkeys(THRESHOLDS)
    regret1 = math.nan
    for k in range(1, budget + 1):
        trial = study.ask()
        lr = trial.suggest_float("lr", *LR_RANGE, log=True)
        bs = trial.suggest_int("bs", *BS_RANGE, log=True)
        regret = sc.regret(lr, bs)
        study.tell(trial, sc.loss(lr, bs))
        if k == 1:
            regret1 = regret
        for th in THRESHOLDS:
            if first[th] is None and regret <= th:
                first[th] = k
        if all(v is not None for v in first.values()):
            break
    return first, regret1


def run_task(i: int, method: str, seeds: int, budget: int) -> list[Run]:
    """Every seed of one method at one scale."""
    if not _STATE:
        _init()
    sc = _STATE["scales"][i]
    law = loso_law(i, wrong=method == "wrong") if method in ("raylaw", "wrong") else None
    out = []
    for seed in range(seeds):
        first, regret1 = search(make_sampler(method, law, sc.scale, seed), sc, budget)
        out.append(Run(method, i, seed, first, regret1))
    return out


# statistics -----------------------------------------------------------------------------------
def counts(runs: list[Run], th: float) -> np.ndarray:
    return np.array([r.first[th] if r.first[th] is not None else np.inf for r in runs])


def quantile(v: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile (numpy's default) that keeps infinities (no NaN)."""
    x = np.sort(v)
    pos = q * (len(x) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    g = pos - lo
    if g == 0 or x[lo] == x[hi]:
        return float(x[lo])
    if not np.isfinite(x[hi]):
        return math.inf
    return float(x[lo] + g * (x[hi] - x[lo]))


def fmt(v: float, budget: int) -> str:
    return f">{budget}" if not math.isfinite(v) else f"{v:g}"


def ratio(a: float, b: float, budget: int) -> float:
    """a / b for trial counts where either may be infinite (> budget): the bound it is known
    to lie on the safe side of for our targets, or NaN when both are infinite."""
    if math.isinf(a) and math.isinf(b):
        return math.nan
    if math.isinf(b):
        return a / budget  # the ratio is below this
    if math.isinf(a):
        return budget / b  # the ratio is above this
    return a / b


def fmt_ratio(a: float, b: float, budget: int) -> str:
    if math.isinf(a) and math.isinf(b):
        return "undefined (both > budget)"
    if math.isinf(b):
        return f"< {a / budget:.2f}x"
    if math.isinf(a):
        return f"> {budget / b:.2f}x"
    return f"{a / b:.2f}x"


def stats_row(runs: list[Run], th: float) -> tuple[float, float, float]:
    v = counts(runs, th)
    return quantile(v, 0.5), quantile(v, 0.9), float(np.mean(~np.isfinite(v)))


# report ---------------------------------------------------------------------------------------
def table(res: dict[str, list[Run]], budget: int) -> list[str]:
    lines = [
        "| method | runs | median to 0.10% | p90 to 0.10% | never 0.10% "
        "| median to 0.05% | p90 to 0.05% | never 0.05% |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, label in METHODS.items():
        cells = []
        for th in THRESHOLDS:
            med, p90, fail = stats_row(res[m], th)
            cells += [fmt(med, budget), fmt(p90, budget), f"{100 * fail:.1f}%"]
        lines.append(f"| {label} | {len(res[m])} | " + " | ".join(cells) + " |")
    return lines


def per_scale_table(res: dict[str, list[Run]], scales: list, budget: int) -> list[str]:
    lines = [
        "| N | D | raylaw trial-1 regret (median) | raylaw median / never to 0.05% "
        "| wrong law median to 0.05% | TPE median to 0.05% |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, sc in enumerate(scales):
        by = {m: [r for r in res[m] if r.scale == i] for m in res}
        r1 = float(np.median([r.regret1 for r in by["raylaw"]]))
        med, _, fail = stats_row(by["raylaw"], MAIN)
        lines.append(
            f"| {sc.N:.3g} | {sc.D:.3g} | {100 * r1:.3f}% | {fmt(med, budget)} / "
            f"{100 * fail:.0f}% | {fmt(stats_row(by['wrong'], MAIN)[0], budget)} "
            f"| {fmt(stats_row(by['tpe'], MAIN)[0], budget)} |")
    return lines


def ratios(res: dict[str, list[Run]], budget: int) -> tuple[list[str], dict[str, float]]:
    lines, vals = [], {}
    for th in THRESHOLDS:
        med = {m: stats_row(res[m], th)[0] for m in METHODS}
        vals[f"speedup{th}"] = ratio(med["tpe"], med["raylaw"], budget)
        vals[f"wrong{th}"] = ratio(med["wrong"], med["tpe"], budget)
        lines.append(
            f"- regret <= {100 * th:.2f}%: TPE median / raylaw median = "
            f"{fmt_ratio(med['tpe'], med['raylaw'], budget)}; wrong-law median / TPE median = "
            f"{fmt_ratio(med['wrong'], med['tpe'], budget)}.")
    return lines, vals


def verdicts(res: dict[str, list[Run]], vals: dict[str, float], budget: int) -> list[str]:
    med, _, fail = stats_row(res["raylaw"], MAIN)
    tpe = stats_row(res["tpe"], MAIN)[0]
    wrong = stats_row(res["wrong"], MAIN)[0]
    sp, wr = vals[f"speedup{MAIN}"], vals[f"wrong{MAIN}"]

    def ok(flag: bool) -> str:
        return "**met**" if flag else "**NOT met**"

    return [
        f"- raylaw reaches 0.05% regret in a median of <= {TARGET_MEDIAN:g} trials: "
        f"{fmt(med, budget)} -> {ok(med <= TARGET_MEDIAN)}.",
        f"- >= {TARGET_SPEEDUP:g}x fewer trials than full-range TPE (medians): "
        f"{fmt(tpe, budget)} / {fmt(med, budget)} = {fmt_ratio(tpe, med, budget)} -> "
        f"{ok(sp >= TARGET_SPEEDUP)}.",
        f"- raylaw never reaches 0.05% in < {100 * TARGET_FAIL:g}% of runs: "
        f"{100 * fail:.1f}% -> {ok(fail < TARGET_FAIL)}.",
        f"- with the wrong law, no more than {TARGET_WRONG:g}x the trials of full-range TPE "
        f"(medians): {fmt(wrong, budget)} / {fmt(tpe, budget)} = "
        f"{fmt_ratio(wrong, tpe, budget)} -> {ok(wr <= TARGET_WRONG)}.",
    ]


def section(res: dict[str, list[Run]], scales: list, args: argparse.Namespace, command: str,
            wall: float) -> str:
    budget = args.budget
    rl, vals = ratios(res, budget)
    n = len(scales)
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}  ",
        f"Runtime: {wall / 60:.1f} min wall on {args.workers} worker process(es) "
        f"(optuna {optuna.__version__}).",
        "",
        f"Protocol: the objective at each of the {n} Step Law dense scales is the interpolated "
        "`smooth loss` (`bench/steplaw_data.py`); regret = loss / the scale's best loss - 1. "
        f"Each scale's law is fitted leave-one-scale-out (no prior, `extract_optimum` optima of "
        f"the other {n - 1} scales). Every method searches `lr` in [2.4e-4, 2.2e-2] and `bs` in "
        f"[16, 2048] (log, the data's hard ranges) with an ask/tell loop of at most {budget} "
        f"trials, {args.seeds} sampler seeds per scale ({n * args.seeds} runs per method). "
        "Counted: the first trial (1-based) whose regret is <= 0.10% / <= 0.05%; a run that "
        f"never gets there within {budget} trials counts as infinite ('>{budget}' when a "
        "percentile lands on it). The wrong law is the LOSO law with every intercept shifted "
        f"by log {WRONG_FACTOR:g} (predicted center {WRONG_FACTOR:g}x higher in both lr and bs).",
        "",
        *table(res, budget),
        "",
        "Ratios of medians:",
        "",
        *rl,
        "",
        "Targets (at 0.05% regret):",
        "",
        *verdicts(res, vals, budget),
        "",
        "Reference points from the issue: full-range TPE needs a median of ~36 trials to reach "
        "0.05% (~24 for 0.10%); random search fails in most runs within 64.",
        "",
        "Per held-out scale (raylaw's trial 1 is the LOSO law's predicted optimum):",
        "",
        *per_scale_table(res, scales, budget),
        "",
        "![Share of runs within 0.05% (solid) and 0.10% (dashed) regret against trials]"
        "(bench/hpo_efficiency.png)",
    ]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, list[Run]], budget: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ks = np.arange(1, budget + 1)
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    handles = []
    for (m, label), color in zip(METHODS.items(), ("C0", "C3", "C2", "C7")):
        for th, style in ((MAIN, "-"), (0.001, "--")):
            v = counts(res[m], th)
            share = (v[None, :] <= ks[:, None]).mean(axis=1)
            ax.step(ks, share, where="post", color=color, linestyle=style)
        handles.append(Line2D([], [], color=color, label=label))
    handles += [Line2D([], [], color="k", linestyle="-", label="regret <= 0.05%"),
                Line2D([], [], color="k", linestyle="--", label="regret <= 0.10%")]
    ax.set_xlabel("trials (log scale)")
    ax.set_ylabel("share of runs within the regret threshold")
    ax.set_xlim(1, budget)
    ax.set_ylim(0, 1.01)
    ax.set_xscale("log", base=2)
    ax.set_xticks([k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= budget])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.grid(alpha=0.3)
    n = len(next(iter(res.values())))
    ax.set_title(f"Step Law data, leave-one-scale-out laws: {n} runs per method", fontsize=10)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    """Run every (scale, method) search, print the table, plot, and update BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="sampler seeds per scale")
    parser.add_argument("--budget", type=int, default=64, help="max trials per run")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "hpo_efficiency.png")
    parser.add_argument("--no-write", action="store_true", help="print only (no file written)")
    args = parser.parse_args()
    _init()
    scales = _STATE["scales"]
    t0 = time.time()
    res: dict[str, list[Run]] = {m: [] for m in METHODS}
    with ProcessPoolExecutor(max_workers=args.workers, initializer=_init) as pool:
        futures = [pool.submit(run_task, i, m, args.seeds, args.budget)
                   for m in ORDER for i in range(len(scales))]
        for f in futures:
            for r in f.result():
                res[r.method].append(r)
    wall = time.time() - t0
    for m in res:
        res[m].sort(key=lambda r: (r.scale, r.seed))
    command = (f"python bench/hpo_efficiency.py --seeds {args.seeds} --budget {args.budget} "
               f"--workers {args.workers}")
    text = section(res, scales, args, command, wall)
    print(text)
    print(f"wall time {wall:.0f} s")
    if not args.no_write:
        plot(res, args.budget, args.plot)
        print(f"wrote {args.plot}")
        update_section(args.output, SECTION, text)
        print(f"wrote section to {args.output}")


if __name__ == "__main__":
    main()
