"""How good a search's answer is after 8, 16 and 64 trials on Step Law data, under noise.

Run ``python bench/hpo_efficiency.py [--seeds 20] [--first-seed 0] [--workers 2] [--smoke]``.

Protocol. The objective at each of the 17 dense-model scales of the Step Law sweeps
(``examples/data/steplaw_dense_lr_bs_loss.csv``) is the ``smooth loss`` interpolated linearly in
(log lr, log bs) over that scale's grid (``bench/steplaw_data.py``), times (1 + e) with
e ~ N(0, sigma^2) drawn afresh at every trial (sigma 0, 0.1% or 0.5%; the built-in LM's final
loss varies 0.6% from run to run); the same noise sequence for every method (common random
numbers). Every search asks for ``lr`` in [2.4e-4, 2.2e-2] and ``bs`` in [16, 2048] (log, the
data's hard ranges) in an Optuna ask/tell loop. A method's *answer* after k trials is scored by
its noiseless regret, loss / the scale's best loss - 1:

1. ``raylaw``: ``LawSampler(law, space, scale, seed=seed)``, its answer ``recommend(study)``
   (the model's optimum, possibly never tried); beside it, for comparison, the best observed
   of its own trials (what a noise-blind answer would return). The law is fitted
   leave-one-scale-out: no prior, ``optima_pooled`` of the other 16 scales' smooth trials.
2. ``center``: the law's predicted optimum alone (no trial is needed).
3. ``tpe``: ``TPESampler(seed=seed)`` over the full ranges; its answer the best observed trial.
4. ``tpe-window``: the same inside the law's interval for a measured optimum, +-1 sd in log
   space around its center (clipped to the ranges).
5. ``gp``: ``GPSampler(seed=seed)`` over the full ranges, best observed (16 trials: 64 cost
   ~27 s a run here).
6. ``raylaw, wrong law`` / ``tpe``, at sigma 0.1%: the LOSO law with every intercept moved by
   log 4 (its center 4x too high in lr and bs); and the same with the noise declared
   (``LawSampler(..., noise=0.001)``: what a user who measured it, as ``bench/lm_noise.py``
   does for the built-in LM, would pass).
7. ``floor``, a reference, not a search: the vertex of raylaw's bowl fitted to every run of the
   scale, noiseless (``optima_pooled`` of all 17 scales, in-sample). It is what a model's answer
   scores with perfect information: the scorer interpolates linearly between grid points, so
   any point off the best grid run pays for the distance, and a smooth bowl's vertex rarely
   sits on that run.

A comparative target also gets the paired mean difference of the two methods' regrets (same
scale, seed and noise draws) with a 90% interval from a bootstrap over scales: runs at one
scale share its landscape, so the scale is the unit that varies.

Per run it also records the first trial (1-based) whose configuration is within 0.05% regret.
The tables are printed and written to the section
"## Prior-aware search under noise on Step Law data (bench/hpo_efficiency.py)" of BENCHMARKS.md;
the median answer regret against trials is plotted to ``bench/hpo_efficiency.png``.
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
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import optuna  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

import steplaw_data  # noqa: E402
from benchmarks_md import publish  # noqa: E402

from raylaw.law import Optimum, ScalingLaw  # noqa: E402
from raylaw.optimum import optima_pooled  # noqa: E402
from raylaw.sampler import LawSampler  # noqa: E402
from raylaw.space import SearchSpace  # noqa: E402

SECTION = "## Prior-aware search under noise on Step Law data (bench/hpo_efficiency.py)"
REPLICATE = ("## Prior-aware search under noise, replicate on fresh seeds "
             "(bench/hpo_efficiency.py --first-seed)")
LR_RANGE = (2.4e-4, 2.2e-2)  # the data's hard ranges
BS_RANGE = (16, 2048)
SIGMAS = (0.0, 0.001, 0.005)
CHECKPOINTS = (1, 2, 4, 8, 16, 32, 64)
BUDGET = 64
GP_BUDGET = 16
NEAR = 0.0005  # a tried configuration this close (regret) counts as found
WRONG_FACTOR = 4.0
METHODS = {  # key -> label
    "raylaw": "raylaw: LawSampler, recommend()",
    "raylaw-best": "raylaw's own trials, best observed (not its answer)",
    "center": "the law's center alone",
    "tpe": "TPE, full range, best observed",
    "tpe-window": "TPE in the law's +-1 sd window, best observed",
    "gp": "GPSampler, full range, best observed",
    "wrong": "raylaw, wrong law (4x lr, 4x bs), recommend()",
    "wrong-best": "raylaw, wrong law: its own trials, best observed (not its answer)",
    "wrong-declared": "raylaw, wrong law, noise declared (0.1%), recommend()",
    "floor": "reference: raylaw's bowl on every run of the scale, noiseless (in-sample)",
}


@dataclass
class Run:
    method: str
    sigma: float
    scale: int
    seed: int
    answers: dict[int, float]  # trials -> noiseless regret of the answer then
    first: int | None  # first trial whose configuration is within NEAR
    observed: dict[int, float] | None = None  # raylaw: its own best observed trial's regret


# worker side ----------------------------------------------------------------------------------
_STATE: dict = {}


def _init() -> None:
    """Per process: the data, the space and every LOSO law (a few seconds; once)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*greenlet.*")
    space = SearchSpace.load(steplaw_data.SPACE)
    _STATE.update(space=space, scales=steplaw_data.scales(), laws={})


def loso_law(i: int) -> ScalingLaw:
    """The law fitted without scale ``i`` (cached per process)."""
    if i not in _STATE["laws"]:
        train = [(s.scale, s.rows) for j, s in enumerate(_STATE["scales"]) if j != i]
        space = _STATE["space"]
        _STATE["laws"][i] = ScalingLaw.for_space(space, prior=None).fit(
            optima_pooled(train, space))
    return _STATE["laws"][i]


def floor_optima() -> list[Optimum]:
    """raylaw's optimum of every scale from all its smooth runs (cached per process)."""
    if "floor" not in _STATE:
        space = _STATE["space"]
        _STATE["floor"] = optima_pooled([(s.scale, s.rows) for s in _STATE["scales"]], space)
    return _STATE["floor"]


def wrong_law(i: int) -> ScalingLaw:
    law = ScalingLaw.from_dict(loso_law(i).to_dict())  # a fresh copy, then moved 4x up
    for t in law.terms.values():
        t.posterior.mean[0] += math.log(WRONG_FACTOR)
    return law


def search(method: str, i: int, sigma: float, seed: int, budget: int) -> Run:
    sc = _STATE["scales"][i]
    noise = np.random.default_rng([seed, i, int(round(sigma * 1e6))])
    law = wrong_law(i) if method.startswith("wrong") else loso_law(i)
    lr_range, bs_range = LR_RANGE, BS_RANGE
    ours = method in ("raylaw", "wrong", "wrong-declared")
    if ours:
        sampler = LawSampler(law, _STATE["space"], sc.scale, seed=seed,
                             noise=sigma if method == "wrong-declared" else None)
    elif method == "gp":
        sampler = optuna.samplers.GPSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    if method == "tpe-window":
        p = law.predict(sc.scale, observed=True)
        lr_range = window(p["lr"], LR_RANGE)
        bs_range = tuple(int(round(v)) for v in window(p["bs"], BS_RANGE))
    if method == "floor":
        o = floor_optima()[i].values
        regret = sc.regret(o["lr"], o["bs"])
        return Run(method, sigma, i, seed, dict.fromkeys(CHECKPOINTS, regret), None)
    if method == "center":
        p = law.predict(sc.scale)
        regret = sc.regret(*clip(p["lr"].center, LR_RANGE), *clip(p["bs"].center, BS_RANGE))
        return Run(method, sigma, i, seed, dict.fromkeys(CHECKPOINTS, regret),
                   1 if regret <= NEAR else None)
    study = optuna.create_study(sampler=sampler, direction="minimize")
    answers, observed, first = {}, {}, None
    for k in range(1, budget + 1):
        trial = study.ask()
        lr = trial.suggest_float("lr", *lr_range, log=True)
        bs = trial.suggest_int("bs", *bs_range, log=True)
        if first is None and sc.regret(lr, bs) <= NEAR:
            first = k
        study.tell(trial, sc.loss(lr, bs) * (1 + sigma * noise.standard_normal()))
        if k in CHECKPOINTS:
            best = study.best_params
            observed[k] = sc.regret(best["lr"], best["bs"])
            answer = sampler.recommend(study) if ours else best
            answers[k] = sc.regret(answer["lr"], answer["bs"])
    return Run(method, sigma, i, seed, answers, first, observed if ours else None)


def window(pred, hard: tuple[float, float]) -> tuple[float, float]:
    sd = math.exp(pred.log_sd)
    lo, hi = max(pred.center / sd, hard[0]), min(pred.center * sd, hard[1])
    return (lo, hi) if hi > lo * 1.01 else (hard[0], hard[1])


def clip(v: float, hard: tuple[float, float]) -> tuple[float]:
    return (min(max(v, hard[0]), hard[1]),)


def run_task(method: str, i: int, sigma: float, seeds: range, budget: int) -> list[Run]:
    if not _STATE:
        _init()
    return [search(method, i, sigma, seed, budget) for seed in seeds]


def tasks(seeds: int) -> list[tuple[str, float, int]]:
    """(method, sigma, budget), slowest first."""
    out = [("gp", s, GP_BUDGET) for s in SIGMAS]
    out += [("raylaw", s, BUDGET) for s in SIGMAS]
    out += [("wrong", 0.001, BUDGET), ("wrong-declared", 0.001, BUDGET)]
    out += [(m, s, BUDGET) for m in ("tpe", "tpe-window") for s in SIGMAS]
    out += [("center", s, BUDGET) for s in SIGMAS] + [("floor", 0.0, BUDGET)]
    return out


# report ---------------------------------------------------------------------------------------
def answers(runs: list[Run], k: int) -> np.ndarray | None:
    v = [r.answers[k] for r in runs if k in r.answers]
    return 100 * np.array(v) if len(v) == len(runs) and v else None


def cell(runs: list[Run], k: int) -> str:
    v = answers(runs, k)
    return "-" if v is None else f"{np.median(v):.3f} / {v.mean():.3f}"


def firsts(runs: list[Run]) -> np.ndarray:
    return np.array([r.first if r.first is not None else np.inf for r in runs])


def fmt_count(v: float) -> str:
    return f">{BUDGET}" if not math.isfinite(v) else f"{v:g}"


def pick(res: list[Run], method: str, sigma: float) -> list[Run]:
    return [r for r in res if r.method == method and r.sigma == sigma]


def tables(res: list[Run]) -> list[str]:
    out = ["Noiseless regret % of each method's answer, median / mean over runs (17 scales x "
           "seeds), after 8, 16 and 64 trials:", "",
           "| sigma | method | 8 trials | 16 trials | 64 trials | median trials to a tried "
           "config within 0.05% | never |",
           "|---:|---|---:|---:|---:|---:|---:|"]
    def row(sigma: str, m: str, runs: list[Run], near: bool = True, never: bool = True) -> None:
        f = firsts(runs)
        out.append(f"| {sigma} | {METHODS[m]} | {cell(runs, 8)} | {cell(runs, 16)} | "
                   f"{cell(runs, 64)} | {fmt_count(float(np.median(f))) if near else '-'} | "
                   f"{f'{100 * np.mean(~np.isfinite(f)):.0f}%' if never else '-'} |")

    def seen(runs: list[Run]) -> list[Run]:  # raylaw's own best observed trial as the answer
        return [replace(r, answers=r.observed) for r in runs]

    for sigma in SIGMAS:
        label = f"{100 * sigma:.1f}%"
        for m in ("raylaw", "center", "tpe", "tpe-window", "gp"):
            runs = pick(res, m, sigma)
            if runs:
                row(label, m, runs, near=m != "center")
            if runs and m == "raylaw":
                row(label, "raylaw-best", seen(runs), near=False, never=False)
    if floor := pick(res, "floor", 0.0):
        row("any", "floor", floor, near=False, never=False)
    if wrong := pick(res, "wrong", 0.001):
        row("0.1%", "wrong", wrong)
        row("0.1%", "wrong-best", seen(wrong), near=False, never=False)
    if declared := pick(res, "wrong-declared", 0.001):
        row("0.1%", "wrong-declared", declared)
        if wrong:
            out += ["", "Wrong law, the noise declared minus not, after 16 trials: "
                    f"{paired(declared, wrong, 16)}; after 64: {paired(declared, wrong, 64)}."]
    return out


def verdicts(res: list[Run]) -> list[str]:
    def ok(flag: bool) -> str:
        return "**met**" if flag else "**NOT met**"

    lines = []
    r5, c5 = answers(pick(res, "raylaw", 0.005), 16), answers(pick(res, "center", 0.005), 16)
    lines.append(f"- sigma 0.5%, 16 trials: median <= 0.07%: {np.median(r5):.3f}% -> "
                 f"{ok(np.median(r5) <= 0.07)}; mean no worse than the law's center alone: "
                 f"{r5.mean():.3f}% vs {c5.mean():.3f}% -> {ok(r5.mean() <= c5.mean())} "
                 f"({paired(pick(res, 'raylaw', 0.005), pick(res, 'center', 0.005), 16)}).")
    r1 = answers(pick(res, "raylaw", 0.001), 16)
    lines.append(f"- sigma 0.1%, 16 trials: median <= 0.04%: {np.median(r1):.3f}% -> "
                 f"{ok(np.median(r1) <= 0.04)}.")
    f0 = float(np.median(firsts(pick(res, "raylaw", 0.0))))
    lines.append(f"- sigma 0: median trials until a tried configuration is within 0.05% <= 4: "
                 f"{fmt_count(f0)} -> {ok(f0 <= 4)}.")
    r0 = answers(pick(res, "raylaw", 0.0), 8)
    lines.append(f"- sigma 0: recommend() after 8 trials, median <= 0.03%: "
                 f"{np.median(r0):.3f}% -> {ok(np.median(r0) <= 0.03)}.")
    w, t = answers(pick(res, "wrong", 0.001), 64), answers(pick(res, "tpe", 0.001), 64)
    if w is not None and t is not None:
        lines.append(f"- wrong law, sigma 0.1%, 64 trials: recommend() no worse than full-range "
                     f"TPE's best observed: median {np.median(w):.3f}% vs {np.median(t):.3f}%, "
                     f"mean {w.mean():.3f}% vs {t.mean():.3f}% -> "
                     f"{ok(np.median(w) <= np.median(t) and w.mean() <= t.mean())} "
                     f"({paired(pick(res, 'wrong', 0.001), pick(res, 'tpe', 0.001), 64)}).")
    return lines


def granularity() -> str:
    """How finely this scorer resolves an answer: what the grid's second-best run, and a point
    1.1x from the best run, score (medians over scales)."""
    second, ring = [], []
    for sc in _STATE["scales"]:
        second.append(100 * (np.sort(sc.rows["loss"].to_numpy())[1] / sc.best - 1))
        best = sc.rows.loc[sc.rows["loss"].idxmin()]
        ring.append(np.mean([100 * sc.regret(best.lr * 1.1 ** np.cos(a), best.bs * 1.1 ** np.sin(a))
                             for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)]))
    return ("What the scorer can resolve: regret is 0 only at a scale's best grid run and grows "
            "linearly away from it (the interpolation), so a point 1.1x from that run in lr and bs "
            f"scores {np.median(ring):.3f}% (median over scales, mean over 8 directions) and the "
            f"grid's second-best run {np.median(second):.3f}%. The reference row is the vertex "
            "of raylaw's bowl fitted to every run of the scale without noise: what a smooth "
            "model's answer scores with perfect information, since the vertex rarely sits on the "
            "best run. A target below it asks an answer to find the best run itself, whose lead "
            "over the next is smaller than the noise at sigma 0.1% and 0.5%.")


def paired(a: list[Run], b: list[Run], k: int, draws: int = 4000) -> str:
    """The mean of a's regret minus b's, paired by (scale, seed), with a 90% interval from a
    bootstrap over scales (the unit that varies: runs at one scale share its landscape)."""
    mine = {(r.scale, r.seed): r.answers[k] for r in b}
    diff: dict[int, list[float]] = {}
    for r in a:
        diff.setdefault(r.scale, []).append(100 * (r.answers[k] - mine[(r.scale, r.seed)]))
    per_scale = np.array([np.mean(v) for v in diff.values()])
    weights = np.array([len(v) for v in diff.values()], dtype=float)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(per_scale), (draws, len(per_scale)))
    boot = (per_scale[idx] * weights[idx]).sum(axis=1) / weights[idx].sum(axis=1)
    lo, hi = np.quantile(boot, [0.05, 0.95])
    mean = float((per_scale * weights).sum() / weights.sum())
    return f"paired difference {mean:+.3f}%, 90% interval [{lo:+.3f}, {hi:+.3f}]"


def section(res: list[Run], args: argparse.Namespace, wall: float) -> str:
    """The BENCHMARKS section; a replicate (``--first-seed``) gets its verdicts only, under the
    main section's table."""
    n = len(_STATE["scales"])
    last = args.first_seed + args.seeds - 1
    run = [
        f"Command: `python bench/hpo_efficiency.py --seeds {args.seeds}"
        + (f" --first-seed {args.first_seed}" if args.first_seed else "")
        + f" --workers {args.workers}`  ",
        f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {wall / 60:.0f} min "
        f"wall on {args.workers} processes (optuna {optuna.__version__}).",
    ]
    if args.first_seed:
        return "\n".join([
            REPLICATE,
            "",
            f"The protocol above on sampler seeds {args.first_seed}-{last} (fresh noise draws "
            "too): how far each verdict moves with the seeds alone.",
            "",
            *run,
            "",
            *verdicts(res),
        ]) + "\n"
    return "\n".join([
        SECTION,
        "",
        "What a search at a new scale answers after 8, 16 and 64 trials, scored by the "
        "noiseless regret of the answer, when every trial's metric carries 0, 0.1% or 0.5% "
        "noise: raylaw's recommendation (the model's optimum) against the law's prediction "
        "alone and the best observed trial of TPE and GP searches.",
        "",
        run[0],
        run[1] + "  ",
        f"Protocol: {n} Step Law dense scales x {args.seeds} seeds (sampler seeds "
        f"{args.first_seed}-{last}) per method and noise level; "
        "the objective is the scale's interpolated `smooth loss` x (1 + e), e ~ N(0, sigma^2) "
        "per trial (the same draws for every method); `lr` in [2.4e-4, 2.2e-2], `bs` in "
        "[16, 2048] (log). The law is fitted leave-one-scale-out (no prior, raylaw's optima of "
        "the other 16 scales). GP runs stop at 16 trials (time). The wrong law is the LOSO law "
        "moved 4x up in lr and bs; its center is outside the scale's grid at 4 scales (there "
        "the objective is the nearest grid point's loss: flat), and at 10 of the other 13 an lr "
        "1.22x higher scores over 25% regret (a cliff towards diverged runs), so near it "
        "there is no bowl to follow. In-sample: raylaw's settings were chosen while developing on "
        "this data (2-seed runs of these conditions; the recommendation's support rule after a "
        "first 20-seed run, on seeds 100-104; a doubted law's proposals on seeds 100-104, a "
        "looser version run once on seeds 0-19, this one confirmed on seeds 40-59; the noise "
        "prior's ceiling on seeds 0-9, confirmed on seeds 20-39; the doubt's onset on seeds 0-9, "
        "tested on seeds 40-49, confirmed on seeds 0-39), so its rows are not out-of-sample.",
        "",
        granularity(),
        "",
        *tables(res),
        "",
        "Targets (issue 22):",
        "",
        *verdicts(res),
        "",
        "![Median regret of each method's answer against trials, per noise level]"
        "(bench/hpo_efficiency.png)",
    ]) + "\n"


def plot(res: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SIGMAS), figsize=(12, 3.8), sharey=True)
    for ax, sigma in zip(axes, SIGMAS):
        for m, color in zip(("raylaw", "center", "tpe", "tpe-window", "gp"),
                            ("C0", "k", "C2", "C1", "C4")):
            runs = pick(res, m, sigma)
            ks = [k for k in CHECKPOINTS if answers(runs, k) is not None] if runs else []
            if ks:
                ax.plot(ks, [np.median(answers(runs, k)) for k in ks], "o-", color=color,
                        ms=3, label=METHODS[m], ls="--" if m == "center" else "-")
        floor = answers(pick(res, "floor", 0.0), 64)
        if floor is not None:
            ax.axhline(np.median(floor), color="0.5", ls=":", lw=1,
                       label="reference: bowl on every run, noiseless")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(CHECKPOINTS))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_title(f"noise sigma {100 * sigma:.1f}%", fontsize=10)
        ax.set_xlabel("trials")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("median regret of the answer (%)")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """Run every (method, noise, scale) search, print the tables, plot, update BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="sampler seeds per scale")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first sampler seed (a replicate on fresh seeds: --first-seed 20)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--smoke", action="store_true",
                        help="2 scales, 1 seed, 8 trials: seconds, for tests (no write)")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "hpo_efficiency.png")
    parser.add_argument("--no-write", action="store_true", help="print only (no file written)")
    args = parser.parse_args()
    _init()
    if args.smoke:
        runs = [search(m, i, 0.005, 0, 8) for m in ("raylaw", "wrong-declared", "center",
                                                     "tpe", "floor") for i in (0, 9)]
        for r in runs:
            print(r.method, r.scale, {k: round(100 * v, 3) for k, v in r.answers.items()})
        mine, center = pick(runs, "raylaw", 0.005), pick(runs, "center", 0.005)
        print("raylaw vs center:", paired(mine, center, 8))
        return
    t0 = time.time()
    res: list[Run] = []
    scales = range(len(_STATE["scales"]))
    with ProcessPoolExecutor(max_workers=args.workers, initializer=_init) as pool:
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        futures = [pool.submit(run_task, m, i, s, seeds, b)
                   for m, s, b in tasks(args.seeds) for i in scales]
        for f in futures:
            res.extend(f.result())
    wall = time.time() - t0
    text = section(res, args, wall)
    if args.first_seed:  # the replicate's section holds its verdicts; its tables go to stdout
        print("\n".join(tables(res)))
    if not args.no_write and not args.first_seed:
        plot(res, args.plot)
    publish(text, args.output, REPLICATE if args.first_seed else SECTION,
            write=not args.no_write)


if __name__ == "__main__":
    main()
