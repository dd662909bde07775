"""One scale's optimum of the governed hyperparameters, from a model of all its trials.

The single best trial is a noisy estimate of the optimum: the metric is noisy and the bowl's
bottom is flat. ``extract_optimum`` fits the scale's bowl (``raylaw.landscape``) to every
completed trial, in log coordinates (the law is a power law), and returns its vertex with the
vertex's uncertainty, the bowl's curvature and the metric's estimated noise. The vertex prior
is flat here: the optimum is the law's *evidence*, so it must not already contain the law.
Curvature and noise may come from other scales (``optima_by_scale`` pools them).
Diverged, errored and early-stopped trials are excluded and counted (a stopped trial's metric
is at a lower fidelity). Where the vertex lies beyond the space's hard bound, the optimum is
kept as a bound (censored): the law fits it as "at most" / "at least" that value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raylaw.errors import RaylawError
from raylaw.landscape import BowlPrior, fit_bowl
from raylaw.law import Optimum

if TYPE_CHECKING:
    from raylaw.space import SearchSpace

MIN_SIGMA = 0.02  # log-space floor of an optimum's sd
MIN_POOLED = 4  # optima needed to measure how much the bowl's shape varies between scales
DEFAULT_CURVATURE_SD = 0.7  # relative sd of a pooled curvature from fewer optima
DEFAULT_SKEW_SD = 0.5  # sd of pooled third derivatives from fewer optima, in the bowl's units
UNBOUND_SIGMA = 0.5  # log-space sd of an optimum bounded only by the hard range


def extract_optimum(trials: pd.DataFrame | list[dict[str, Any]], space: SearchSpace,
                    scale: dict[str, float] | None = None, source: str = "", *,
                    shape: Shape | None = None, noise: float | None = None) -> Optimum:
    """One scale's optimum from its trials (columns: hyperparameters, metric, ``status``).

    Rows whose ``status`` is not ``completed`` or whose metric is not finite are excluded.
    ``shape`` (the bowl's shape seen at other scales, ``pooled_shape``) and ``noise`` (the
    metric's relative sd) are priors; without them the trials alone set them.
    """
    df = pd.DataFrame(trials)
    metric = space.metric
    names = [n for n in space.governed if n in df.columns]
    if metric not in df.columns:
        raise RaylawError(f"trials have no column '{metric}' (the space's metric)")
    if not names:
        raise RaylawError(f"trials have none of the governed hyperparameters "
                          f"{list(space.governed)}")
    status = df["status"] if "status" in df.columns else pd.Series("completed", index=df.index)
    y = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=float)
    z_all = np.log(df[names].to_numpy(dtype=float))
    tried = z_all[np.all(np.isfinite(z_all), axis=1)]
    ok = (status.to_numpy() == "completed") & np.isfinite(y) & np.all(np.isfinite(z_all), axis=1)
    n_excluded = int((~ok).sum())
    y, z = y[ok], z_all[ok]
    if len(y) == 0:
        raise RaylawError(f"no completed trial with a finite '{metric}' at scale {scale} "
                          f"({n_excluded} excluded)")
    if space.mode == "max":
        y = -y
    varying = [j for j in range(len(names)) if np.ptp(z[:, j]) > 0]
    values, sigmas, censored = {}, {}, {}
    best = z[int(np.argmin(y))]
    curv_out, skew_out, method, noise_out = None, None, "single", None
    if varying:
        vn = [names[j] for j in varying]
        low = np.array([_log_bound(space, n, "low") for n in vn])
        high = np.array([_log_bound(space, n, "high") for n in vn])
        prior = shape.prior(vn) if shape is not None else BowlPrior()
        bowl = fit_bowl(z[:, varying], y, low, high, replace(prior, noise=noise))
        sd = np.maximum(bowl.sd, MIN_SIGMA)
        for k, name in enumerate(vn):
            values[name] = float(math.exp(bowl.center[k]))
            sigmas[name] = float(sd[k])
            side = ("upper" if bowl.unclipped[k] < low[k] else
                    "lower" if bowl.unclipped[k] > high[k] else None)
            if side and side == _bound_side(space, name, best[varying[k]]):
                censored[name] = side  # the vertex is past the bound the best trial is on
        if bowl.curvature is not None and len(y) >= _quadratic_terms(len(vn)):
            # the scale's own shape: too few trials show only the prior's, and a shape pooled
            # from it would count those trials twice (a 2-trial sweep moved a right law 3x)
            curv_out = {a: {b: float(bowl.curvature[i, k]) for k, b in enumerate(vn)}
                        for i, a in enumerate(vn)}
            skew_out = {a: {b: {c: float(bowl.skew[i, k, m]) for m, c in enumerate(vn)}
                            for k, b in enumerate(vn)} for i, a in enumerate(vn)}
        method, noise_out = "bowl", bowl.noise
    for j in set(range(len(names))) - set(varying):
        # no completed trial moved it: a lone trial locates nothing by itself (under ASHA
        # often the first one, which always runs to the end), so its value is as uncertain as
        # the sweep was wide; on the space's bound it is a bound (ASHA stopped the others)
        side = _bound_side(space, names[j], best[j])
        spread = float(tried[:, j].std()) if len(tried) else 0.0
        if len(y) == 1 or (side and spread > 0):
            values[names[j]] = float(math.exp(best[j]))
            sigmas[names[j]] = max(UNBOUND_SIGMA, spread)
            if side and spread > 0:
                censored[names[j]] = side
    if not values:
        raise RaylawError(f"at scale {scale} every trial has the same {names}: nothing to "
                          "locate an optimum from")
    return Optimum(dict(scale or {}), values, sigmas, int(len(y)), n_excluded, method, source,
                   curv_out, censored, noise_out, skew_out)


def _quadratic_terms(d: int) -> int:
    """Coefficients of a quadratic in ``d`` variables: the trials a bowl's shape needs."""
    return 1 + d + d * (d + 1) // 2


def _log_bound(space: SearchSpace, name: str, which: str) -> float:
    p = space.governed[name]
    v = getattr(p, which)
    if v is None or v <= 0:
        return -math.inf if which == "low" else math.inf
    return math.log(v)


def _matrix(curvature: dict[str, dict[str, float]] | None, names: list[str]) -> np.ndarray | None:
    """The curvature over ``names`` as a positive definite matrix, or None."""
    if not curvature or any(a not in curvature or b not in curvature[a]
                            for a in names for b in names):
        return None
    h = np.array([[curvature[a][b] for b in names] for a in names], dtype=float)
    h = (h + h.T) / 2
    if not np.all(np.isfinite(h)) or np.any(np.linalg.eigvalsh(h) <= 0):
        return None
    return h


def _tensor(skew: dict[str, dict[str, dict[str, float]]] | None, names: list[str]
            ) -> np.ndarray | None:
    """The third derivatives over ``names`` as a d x d x d array, or None."""
    try:
        t = np.array([[[skew[a][b][c] for c in names] for b in names] for a in names],
                     dtype=float) if skew else None
    except KeyError:
        return None
    return t if t is not None and np.all(np.isfinite(t)) else None


def _bound_side(space: SearchSpace, name: str, log_value: float) -> str | None:
    """"upper" where ``log_value`` sits on the hard floor of the space's governed ``name`` (the
    optimum is at most there), "lower" on its ceiling, else None."""
    p = getattr(space, "governed", {}).get(name)
    if p is None or p.low is None or p.high is None or p.low <= 0:
        return None
    if log_value <= math.log(p.low) + 1e-9:
        return "upper"
    if log_value >= math.log(p.high) - 1e-9:
        return "lower"
    return None


@dataclass(frozen=True)
class Shape:
    """The bowl's shape pooled over scales: a prior for the bowl at another scale.

    The median curvature and third derivatives of the optima that estimated them, and how much
    they vary between scales (relative sd of the curvature, sd of the third derivatives in the
    bowl's own units): the tighter the scales agree, the more the next scale leans on them.
    """

    curvature: dict[str, dict[str, float]]
    skew: dict[str, dict[str, dict[str, float]]] | None
    curvature_sd: float
    skew_sd: float

    def prior(self, names: list[str]) -> BowlPrior:
        """The shape over ``names`` as a bowl prior (empty where it does not cover them)."""
        h = _matrix(self.curvature, names)
        if h is None:
            return BowlPrior()
        return BowlPrior(curvature=h, skew=_tensor(self.skew, names),
                         curvature_sd=self.curvature_sd, skew_sd=self.skew_sd)


def pooled_shape(optima: list[Optimum]) -> Shape | None:
    """The typical bowl shape over the optima that estimated one, and its spread."""
    curved = [o for o in optima if o.curvature]
    if not curved:
        return None
    names = sorted(set.intersection(*(set(o.curvature) for o in curved)))
    mats = [m for o in curved if (m := _matrix(o.curvature, names)) is not None]
    if not names or not mats:
        return None
    h = np.median(mats, axis=0)
    if np.any(np.linalg.eigvalsh(h) <= 0):
        return None
    curvature = {a: {b: float(h[i, k]) for k, b in enumerate(names)} for i, a in enumerate(names)}
    diag = np.log([np.diag(m) for m in mats])
    curvature_sd = _robust_sd(diag) if len(mats) >= MIN_POOLED else DEFAULT_CURVATURE_SD
    tensors = [t for o in curved if (t := _tensor(o.skew, names)) is not None]
    skew, skew_sd = None, DEFAULT_SKEW_SD
    if tensors:
        t = np.median(tensors, axis=0)
        skew = {a: {b: {c: float(t[i, k, m]) for m, c in enumerate(names)}
                    for k, b in enumerate(names)} for i, a in enumerate(names)}
        if len(tensors) >= MIN_POOLED:  # in the bowl's units: third derivative * width^3
            width = 1 / np.sqrt(np.diag(h))
            unit = width[:, None, None] * width[None, :, None] * width[None, None, :]
            skew_sd = _robust_sd(np.array(tensors).reshape(len(tensors), -1)
                                 * unit.reshape(-1))
    return Shape(curvature, skew, float(np.clip(curvature_sd, 0.15, 1.0)),
                 float(np.clip(skew_sd, 0.1, 1.0)))


def _robust_sd(x: np.ndarray) -> float:
    """Median over columns of each column's spread between rows (1.4826 MAD)."""
    mad = np.median(np.abs(x - np.median(x, axis=0)), axis=0)
    return float(np.median(1.4826 * mad))


def pooled_noise(optima: list[Optimum]) -> float | None:
    """The typical relative noise of the metric over the optima that estimated it (median)."""
    vals = [o.noise for o in optima if o.noise is not None and o.noise > 0]
    return float(np.median(vals)) if vals else None


def optima_by_scale(df: pd.DataFrame, space: SearchSpace, source: str = "") -> list[Optimum]:
    """Group trials by the space's scale variables and extract each scale's optimum.

    The bowl's shape (curvature, lopsidedness) and the metric's noise are shared across scales:
    a first pass fits each scale alone, a second refits each with the pooled ones as priors.
    """
    keys = list(space.scale)
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise RaylawError(f"no column '{missing[0]}' for scale variable '{missing[0]}' "
                          f"(columns: {list(df.columns)}; use --rename COLUMN={missing[0]})")
    groups = []
    for vals, group in df.groupby(keys, sort=True):
        vals = vals if isinstance(vals, tuple) else (vals,)
        groups.append(({k: float(v) for k, v in zip(keys, vals)}, group))
    return optima_pooled(groups, space, source, noise=getattr(space, "noise", None))


def optima_pooled(groups: list[tuple[dict[str, float], pd.DataFrame]], space: SearchSpace,
                  source: str = "", noise: float | None = None,
                  skip_empty: bool = False) -> list[Optimum]:
    """``extract_optimum`` for each (scale, trials) group, curvature and noise pooled.

    ``noise`` (declared) replaces the pooled estimate; with ``skip_empty``, a group with no
    completed trial is left out instead of being an error.
    """
    first, kept = [], []
    for scale, trials in groups:
        try:
            first.append(extract_optimum(trials, space, scale, source, noise=noise))
        except RaylawError:
            if not skip_empty:
                raise
            continue
        kept.append((scale, trials))
    shape = pooled_shape(first)
    shared = noise if noise is not None else pooled_noise(first)
    if shape is None and shared is None:
        return first
    return [extract_optimum(g, space, s, source, shape=shape, noise=shared) for s, g in kept]
