"""Plot a law: each governed hyperparameter's optimum against each scale variable it depends on.

Log-log partial-dependence panels: the other scale variables are held at the observations'
geometric mean, observed optima are adjusted to it by the law's own exponents, and drawn with
error bars beside the law and its interval band.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from raylaw.files import atomic_write_bytes
from raylaw.law import ScalingLaw


def plot_law(law: ScalingLaw, out: str | Path, coverage: float = 0.9) -> None:
    """Write a PNG (atomically) with one panel per (hyperparameter, scale variable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(h, k) for h, t in law.terms.items() if t.fitted for k in t.depends_on]
    if not panels:
        panels = [(h, "") for h in law.terms]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (name, var) in zip(axes[0], panels):
        term = law.terms[name]
        ax.set_title(f"{name} vs {var}" if var else f"{name}: not fitted")
        if not var:
            continue
        obs = [o for o in law.optima if name in o.values]
        ref = {k: _gmean([o.scale[k] for o in obs if k in o.scale] or [1.0])
               for k in law.scale_names}
        coef = dict(zip(term.depends_on, term.coef[1:]))
        xs = [o.scale[var] for o in obs]
        span = (min(xs + [ref[var]]) / 3, max(xs + [ref[var]]) * 3)
        grid = np.geomspace(*span, 60)
        preds = [law.predict({**ref, var: float(x)}, coverage)[name] for x in grid]
        ax.fill_between(grid, [p.low for p in preds], [p.high for p in preds], alpha=0.25,
                        label=f"{coverage:.0%} interval")
        ax.plot(grid, [p.center for p in preds], label="law")
        if obs:
            adj = [o.values[name] * math.exp(-sum(
                coef[k] * (math.log(o.scale[k]) - math.log(ref[k]))
                for k in term.depends_on if k != var)) for o in obs]
            err = [o.sigmas.get(name, 0.0) for o in obs]
            lo = [a * (1 - math.exp(-e)) for a, e in zip(adj, err)]
            hi = [a * (math.exp(e) - 1) for a, e in zip(adj, err)]
            cens = [o.censored.get(name) for o in obs]
            pts = [i for i, c in enumerate(cens) if c is None]
            if pts:
                ax.errorbar([xs[i] for i in pts], [adj[i] for i in pts],
                            yerr=[[lo[i] for i in pts], [hi[i] for i in pts]], fmt="o", ms=4,
                            capsize=2, label="observed optima")
            for side, mark in (("upper", "v"), ("lower", "^")):
                idx = [i for i, c in enumerate(cens) if c == side]
                if idx:  # the best trial sat on the space's bound: the optimum is beyond it
                    ax.plot([xs[i] for i in idx], [adj[i] for i in idx], mark, ms=6, color="C3",
                            label="optima at " + ("most" if side == "upper" else "least"))
        others = ", ".join(f"{k}={ref[k]:.3g}" for k in term.depends_on if k != var)
        ax.set_xscale("log")
        ax.set_yscale("log")
        scale_ticks(ax.xaxis)
        ax.set_xlabel(var + (f"  ({others})" if others else ""))
        ax.set_ylabel(f"optimal {name}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"raylaw law for space '{law.space_name}'")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())


def _gmean(v: list[float]) -> float:
    return float(math.exp(np.mean(np.log(v))))


def scale_ticks(axis: Any) -> None:
    """Label a log axis of scales at 1, 2 and 5 of each decade as 2e4, 5e4, 1e5 (as scales are
    written on the command line); matplotlib's own labelled minor ticks collide."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def short(x: float, _pos: object = None) -> str:
        mant, exp = f"{x:.0e}".split("e")
        return f"{mant}e{int(exp)}"

    axis.set_major_locator(LogLocator(10, subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(short))
    axis.set_minor_formatter(NullFormatter())
