"""How well scaling laws predict the optimal (lr, bs) on the real Step Law sweeps.

Run ``python bench/law_accuracy.py``. It scores five ways of predicting a scale's optimal
learning rate and batch size on the 17 dense-model scales of the Step Law data
(``examples/data/steplaw_dense_lr_bs_loss.csv``, metric ``smooth loss``), all with one regret
function (``bench/steplaw_data.py``): the loss interpolated linearly in (log lr, log bs) over
that scale's grid (nearest grid point outside its hull), divided by the scale's best loss, minus 1.

Methods:

1. raylaw's law with no prior, fitted to raylaw's extracted per-scale optima;
2. the same with the published Step Law prior (``prior="steplaw"``);
3. the published Step Law formula, fixed (it was fitted on all of this data: in-sample);
4. a plain log-linear OLS fit of the per-scale grid argmins, with t prediction intervals;
5. a variant of (1) whose batch size law depends on N and D (not the shipped space).

Columns: leave-one-scale-out (LOSO) mean and max regret; extrapolation (fit on N < 1e9,
predict the two N = 1.07e9 scales); LOSO coverage of raylaw's extracted held-out optima by the
90% intervals for a measured optimum (``observed=True``; lr and bs checked separately, 34
checks) with the geometric-mean interval width factor high/low; and in-sample regret (fit on
all 17 scales). The tables are printed and written to the section
"## Law accuracy on Step Law data (bench/law_accuracy.py)" of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

import steplaw_data  # noqa: E402
from benchmarks_md import update_section  # noqa: E402

from raylaw.law import Optimum, ScalingLaw  # noqa: E402
from raylaw.optimum import extract_optimum  # noqa: E402
from raylaw.space import SearchSpace  # noqa: E402

SECTION = "## Law accuracy on Step Law data (bench/law_accuracy.py)"
COVERAGE = 0.9
HPS = ("lr", "bs")
SEQ_LEN = 2048
EXTRAP_N = 1e9  # fit below, predict at or above
TARGET_REGRET = 0.10  # % LOSO mean regret, without the published prior
TARGET_COVER = (80.0, 97.0)  # % of held-out optima inside the 90% intervals

# (centers, intervals or None) for one scale
Prediction = tuple[dict[str, float], dict[str, tuple[float, float]] | None]
Predictor = Callable[[dict[str, float]], Prediction]


@dataclass
class Data:
    scales: list[steplaw_data.Scale]
    optima: list[Optimum]  # raylaw's extracted optimum per scale
    argmins: list[dict[str, float]]  # the grid point with the lowest loss per scale


@dataclass
class Method:
    label: str
    fit: Callable[[Data, list[int]], Predictor]
    has_interval: bool = True


@dataclass
class Score:
    loso: list[float] = field(default_factory=list)  # regret (fraction) per held-out scale
    loso_lr_only: list[float] = field(default_factory=list)  # bs at the grid argmin
    loso_bs_only: list[float] = field(default_factory=list)  # lr at the grid argmin
    covered: dict[str, list[bool]] = field(default_factory=lambda: {h: [] for h in HPS})
    width: dict[str, list[float]] = field(default_factory=lambda: {h: [] for h in HPS})
    extrap: list[float] = field(default_factory=list)
    insample: list[float] = field(default_factory=list)


# methods --------------------------------------------------------------------------------------
def raylaw_method(space: SearchSpace, prior: str | None) -> Callable[[Data, list[int]], Predictor]:
    def fit(data: Data, train: list[int]) -> Predictor:
        law = ScalingLaw.for_space(space, prior=prior).fit([data.optima[i] for i in train])

        def predict(scale: dict[str, float]) -> Prediction:
            p = law.predict(scale, COVERAGE, observed=True)
            return ({h: p[h].center for h in HPS}, {h: (p[h].low, p[h].high) for h in HPS})

        return predict

    return fit


def published(data: Data, train: list[int]) -> Predictor:
    def predict(scale: dict[str, float]) -> Prediction:
        n, d = scale["N"], scale["D"]
        return {"lr": 1.79 * n**-0.713 * d**0.307, "bs": 0.58 * d**0.571 / SEQ_LEN}, None

    return predict


def ols_argmin(data: Data, train: list[int]) -> Predictor:
    """OLS of log argmin lr on [1, log N, log D] and log argmin bs on [1, log D]."""
    deps = {"lr": ("N", "D"), "bs": ("D",)}
    fits = {}
    for h, ks in deps.items():
        x = np.array([[1.0] + [math.log(data.scales[i].scale[k]) for k in ks] for i in train])
        y = np.array([math.log(data.argmins[i][h]) for i in train])
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        dof = len(y) - x.shape[1]
        s2 = float(np.sum((y - x @ coef) ** 2)) / dof
        fits[h] = (ks, coef, s2, np.linalg.inv(x.T @ x), stats.t.ppf(0.5 + COVERAGE / 2, dof))

    def predict(scale: dict[str, float]) -> Prediction:
        centers, intervals = {}, {}
        for h, (ks, coef, s2, xtx_inv, t) in fits.items():
            f = np.array([1.0] + [math.log(scale[k]) for k in ks])
            mu = float(f @ coef)
            half = t * math.sqrt(s2 * (1.0 + f @ xtx_inv @ f))
            centers[h] = math.exp(mu)
            intervals[h] = (math.exp(mu - half), math.exp(mu + half))
        return centers, intervals

    return predict


def bs_on_n_and_d_space() -> SearchSpace:
    d = yaml.safe_load(steplaw_data.SPACE.read_text())
    d["governed"]["bs"]["depends_on"] = ["N", "D"]
    return SearchSpace.from_dict(d, where="steplaw.yaml (variant: bs on N and D)")


def methods() -> list[Method]:
    space = SearchSpace.load(steplaw_data.SPACE)
    return [
        Method("1. raylaw, no prior", raylaw_method(space, None)),
        Method("2. raylaw, prior=steplaw", raylaw_method(space, "steplaw")),
        Method("3. published Step Law formula (in-sample)", published, has_interval=False),
        Method("4. OLS of grid argmins (t pred. interval)", ols_argmin),
        Method("5. variant of 1: bs on N and D (not shipped)",
               raylaw_method(bs_on_n_and_d_space(), None)),
    ]


# evaluation -----------------------------------------------------------------------------------
def load_data() -> Data:
    space = SearchSpace.load(steplaw_data.SPACE)
    scales = steplaw_data.scales()
    optima = [extract_optimum(s.rows, space, s.scale, source="steplaw") for s in scales]
    argmins = []
    for s in scales:
        row = s.rows.loc[s.rows["loss"].idxmin()]
        argmins.append({"lr": float(row["lr"]), "bs": float(row["bs"])})
    return Data(scales, optima, argmins)


def evaluate(method: Method, data: Data) -> Score:
    sc = Score()
    everyone = list(range(len(data.scales)))
    for i, s in enumerate(data.scales):
        centers, intervals = method.fit(data, [j for j in everyone if j != i])(s.scale)
        best = data.argmins[i]
        sc.loso.append(s.regret(centers["lr"], centers["bs"]))
        sc.loso_lr_only.append(s.regret(centers["lr"], best["bs"]))
        sc.loso_bs_only.append(s.regret(best["lr"], centers["bs"]))
        if intervals is not None:
            for h in HPS:
                lo, hi = intervals[h]
                sc.covered[h].append(lo <= data.optima[i].values[h] <= hi)
                sc.width[h].append(hi / lo)
    train = [j for j in everyone if data.scales[j].N < EXTRAP_N]
    predict = method.fit(data, train)
    for j in everyone:
        if data.scales[j].N >= EXTRAP_N:
            c, _ = predict(data.scales[j].scale)
            sc.extrap.append(data.scales[j].regret(c["lr"], c["bs"]))
    predict = method.fit(data, everyone)
    for s in data.scales:
        c, _ = predict(s.scale)
        sc.insample.append(s.regret(c["lr"], c["bs"]))
    return sc


# report ---------------------------------------------------------------------------------------
def pct(xs: list[float], f: Callable = np.mean) -> str:
    return f"{100 * float(f(xs)):.3f}"


def coverage(sc: Score) -> tuple[int, int]:
    hits = [c for h in HPS for c in sc.covered[h]]
    return sum(hits), len(hits)


def geo_mean(xs: list[float]) -> float:
    return float(np.exp(np.mean(np.log(xs))))


def tables(ms: list[Method], scores: list[Score], data: Data) -> list[str]:
    n_ex = len(scores[0].extrap)
    out = [
        "| Method | LOSO mean regret % | LOSO max % | Extrap. mean % "
        f"({n_ex} scales, N=1.07e9) | 90% coverage (LOSO) | width high/low lr, bs "
        "| In-sample mean % | In-sample max % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, sc in zip(ms, scores):
        if m.has_interval:
            k, n = coverage(sc)
            cov = f"{k}/{n} ({100 * k / n:.0f}%)"
            width = f"{geo_mean(sc.width['lr']):.2f}×, {geo_mean(sc.width['bs']):.2f}×"
        else:
            cov = width = "-"
        out.append(f"| {m.label} | {pct(sc.loso)} | {pct(sc.loso, np.max)} | {pct(sc.extrap)} "
                   f"| {cov} | {width} | {pct(sc.insample)} | {pct(sc.insample, np.max)} |")
    out += [
        "",
        "Where the LOSO regret comes from: the method's lr with bs at the grid argmin, and the "
        "method's bs with lr at the grid argmin; and LOSO coverage per hyperparameter.",
        "",
        "| Method | LOSO mean % (lr only) | LOSO mean % (bs only) | covered lr | covered bs |",
        "|---|---:|---:|---:|---:|",
    ]
    for m, sc in zip(ms, scores):
        cl = f"{sum(sc.covered['lr'])}/{len(sc.covered['lr'])}" if m.has_interval else "-"
        cb = f"{sum(sc.covered['bs'])}/{len(sc.covered['bs'])}" if m.has_interval else "-"
        out.append(f"| {m.label} | {pct(sc.loso_lr_only)} | {pct(sc.loso_bs_only)} "
                   f"| {cl} | {cb} |")
    floor = [s.regret(o.values["lr"], o.values["bs"]) for s, o in zip(data.scales, data.optima)]
    out += [
        "",
        "Per-scale LOSO regret (%). \"extracted opt.\" is the regret of raylaw's own extracted "
        "optimum at that scale (what a law that hit it exactly would score; the grid argmin "
        "scores 0).",
        "",
        "| N | D | " + " | ".join(m.label.split(".")[0] for m in ms) + " | extracted opt. |",
        "|---:|---:|" + "---:|" * (len(ms) + 1),
    ]
    for i, s in enumerate(data.scales):
        cells = " | ".join(f"{100 * sc.loso[i]:.3f}" for sc in scores)
        out.append(f"| {s.N:.3g} | {s.D:.3g} | {cells} | {100 * floor[i]:.3f} |")
    out.append(f"| mean | | {' | '.join(pct(sc.loso) for sc in scores)} | {pct(floor)} |")
    return out


def verdicts(ms: list[Method], scores: list[Score]) -> list[str]:
    """Targets, judged on the shipped raylaw rows (1: no prior, 2: with the published prior)."""
    nop, pri = scores[0], scores[1]
    mean = 100 * float(np.mean(nop.loso))
    lo, hi = TARGET_COVER
    lines = [f"- LOSO mean regret <= {TARGET_REGRET:.2f}% without the published prior "
             f"(row 1): {mean:.3f}% -> **{'met' if mean <= TARGET_REGRET else 'NOT met'}**."]
    for label, sc in (("row 1", nop), ("row 2", pri)):
        k, n = coverage(sc)
        share = 100 * k / n
        ok = lo <= share <= hi
        lines.append(f"- 90% intervals cover {lo:.0f}-{hi:.0f}% of held-out optima ({label}): "
                     f"{k}/{n} = {share:.0f}% -> **{'met' if ok else 'NOT met'}**.")
    return lines


def section(ms: list[Method], scores: list[Score], data: Data, command: str) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}  ",
        "Data: `examples/data/steplaw_dense_lr_bs_loss.csv` (Step Law dense sweeps, Li et al. "
        f"2025, arXiv 2503.04715), metric `smooth loss`, {len(data.scales)} scales, "
        f"{sum(len(s.rows) for s in data.scales)} runs; space `search_spaces/steplaw.yaml` "
        "(bs in sequences of 2048 tokens).  ",
        "Regret: loss interpolated linearly in (log lr, log bs) over the scale's grid (nearest "
        "grid point outside its hull) / the scale's best loss - 1 (`bench/steplaw_data.py`).",
        "",
        "LOSO: fit on 16 scales, predict the held-out one. Extrapolation: fit on the 15 scales "
        "with N < 1e9, predict the two with N = 1.07e9. Coverage: raylaw's extracted optimum "
        "(`extract_optimum`) at the held-out scale inside the predicted 90% interval, lr and bs "
        "counted separately; raylaw's interval is the one for a *measured* optimum "
        "(`predict(..., observed=True)`: it adds the typical uncertainty of an extracted "
        "optimum, as row 4's t prediction interval includes the argmins' noise); width is the "
        "geometric mean of high/low. Extraction settings (cubic neighbourhoods 1/2/4% of the "
        "best loss, weights) were chosen on this data, so they are not out-of-sample; the law "
        "fit inside each LOSO fold is. The published formula "
        "(lr = 1.79 N^-0.713 D^0.307, bs = 0.58 D^0.571 tokens) was fitted on all of this data, "
        "so every column of row 3 is in-sample; the prior of row 2 is the mean and covariance of "
        "the authors' bootstrap fits to this same data (intercept and exponents widened), so "
        "row 2 is not cleanly out-of-sample either. Row 5 is a variant, not the shipped space.",
        "",
        *tables(ms, scores, data),
        "",
        "Targets (judged on the shipped raylaw rows):",
        "",
        *verdicts(ms, scores),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Score every method, print the tables and update BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    data = load_data()
    ms = methods()
    scores = [evaluate(m, data) for m in ms]
    command = "python bench/law_accuracy.py"
    text = section(ms, scores, data, command)
    print(text)
    if not args.no_write:
        update_section(args.output, SECTION, text)
        print(f"wrote section to {args.output}")


if __name__ == "__main__":
    main()
