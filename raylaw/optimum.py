"""Estimate one scale's optimum of the governed hyperparameters from its trials, robustly.

The loss landscape over log-hyperparameters is a convex bowl with a flat plateau (Step Law),
so the single best trial is a noisy estimate of the optimum. Where there are enough
near-optimal trials we fit a cubic surface to them (the bowl is lopsided: steeper towards
divergence) and take its minimum; with fewer, a quadratic and its vertex; both come with a
delta-method uncertainty and the bowl's curvature at the optimum, which the law uses to weigh
misses by the loss they cost. When neither fit is convex we fall back to a weighted centroid of
the best trials. Diverged and errored trials are excluded and counted; trials stopped early
are excluded (their metric is at a lower fidelity) and counted. Where the best trial sits on the
space's hard bound, the optimum may lie beyond it: the estimate is marked as a bound (censored).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize

from raylaw.errors import RaylawError
from raylaw.law import Optimum

STATUSES = ("completed", "stopped", "diverged", "errored")
THRESHOLDS = (0.005, 0.01, 0.02, 0.04, 0.08)  # relative metric gaps to the best trial
CUBIC_THRESHOLDS = (0.01, 0.02, 0.04)  # cubic fits, averaged over these neighbourhoods
CUBIC_WEIGHT = 5.0  # a trial at gap g in neighbourhood t weighs exp(-CUBIC_WEIGHT g / t)
MIN_SIGMA = 0.02


def extract_optimum(trials: pd.DataFrame | list[dict[str, Any]], space: Any,
                    scale: dict[str, float] | None = None, source: str = "") -> Optimum:
    """One scale's optimum from its trials (columns: hyperparameters, metric, ``status``).

    Rows whose ``status`` is not ``completed`` or whose metric is not finite are excluded; with
    a single completed trial the others still say where the sweep looked (its uncertainty).
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
    ok = (status.to_numpy() == "completed") & np.isfinite(y) & np.all(np.isfinite(z_all), axis=1)
    n_excluded = int((~ok).sum())
    y, z = y[ok], z_all[ok]
    if len(y) == 0:
        raise RaylawError(f"no completed trial with a finite '{metric}' at scale {scale} "
                          f"({n_excluded} excluded)")
    if space.mode == "max":
        y = -y
    varying = [j for j in range(len(names)) if len(y) == 1 or np.ptp(z[:, j]) > 0]
    zv = z[:, varying]
    tried = z_all[np.all(np.isfinite(z_all), axis=1)][:, varying]
    center, sigma, method, hess = _estimate(zv, y, tried)
    values, sigmas = {}, {}
    for k, j in enumerate(varying):
        values[names[j]] = float(math.exp(center[k]))
        sigmas[names[j]] = float(sigma[k])
    if not values:
        raise RaylawError(f"at scale {scale} every trial has the same {names}: nothing to "
                          "locate an optimum from")
    curvature = None if hess is None else {
        names[a]: {names[b]: float(hess[i, k]) for k, b in enumerate(varying)}
        for i, a in enumerate(varying)}
    best = z[int(np.argmin(y))]
    censored = {n: side for n, v in zip(names, best) if n in values
                and (side := _bound_side(space, n, v))}
    everyone = z_all[np.all(np.isfinite(z_all), axis=1)]
    for j in set(range(len(names))) - set(varying):
        # every completed trial has one value, but the sweep tried others (ASHA stopped them):
        # on the space's bound that value bounds the optimum; elsewhere it locates nothing
        side = _bound_side(space, names[j], best[j])
        if side and np.ptp(everyone[:, j]) > 0:
            values[names[j]] = float(math.exp(best[j]))
            sigmas[names[j]] = float(max(0.5, everyone[:, j].std()))
            censored[names[j]] = side
    return Optimum(dict(scale or {}), values, sigmas, int(len(y)), n_excluded, method, source,
                   curvature, censored)


def _bound_side(space: Any, name: str, log_value: float) -> str | None:
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


def _estimate(z: np.ndarray, y: np.ndarray, tried: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, str, np.ndarray | None]:
    """Center, std (log space), method and curvature of the optimum from points z (n x d)
    with metric y (minimized); ``tried`` (m x d) holds every trial's point, finished or not.
    The curvature is the Hessian of the relative gap y/y_best - 1."""
    n, d = z.shape
    best = int(np.argmin(y))
    gap = (y - y[best]) / max(abs(y[best]), 1e-12)
    spacing = np.array([_spacing(z[:, j]) for j in range(d)])
    floor = np.maximum(spacing / 4, MIN_SIGMA)
    # cubic: averaged over neighbourhood sizes, each weighted towards its best trials
    fits = []
    for thr in CUBIC_THRESHOLDS:
        sel = gap <= thr
        if (sel.sum() >= _n_terms(d, 3) + 5
                and all(len(np.unique(z[sel, j])) >= 4 for j in range(d))):
            fit = _surface_minimum(z[sel], gap[sel], np.exp(-CUBIC_WEIGHT * gap[sel] / thr), 3)
            if fit is not None:
                fits.append((thr, *fit))
    if fits:
        v = np.mean([f[1] for f in fits], axis=0)
        spread = np.std([f[1] for f in fits], axis=0)
        sd = np.sqrt(np.mean([f[2] for f in fits], axis=0) ** 2 + spread**2)
        used = ",".join(f"{f[0]:g}" for f in fits)
        return v, np.maximum(sd, floor), f"cubic@{used}", np.mean([f[3] for f in fits], axis=0)
    # quadratic: the vertex of the narrowest neighbourhood that gives a convex fit
    for thr in THRESHOLDS:
        sel = gap <= thr
        if sel.sum() < _n_terms(d, 2) + 2 or any(len(np.unique(z[sel, j])) < 3
                                                 for j in range(d)):
            continue
        fit = _surface_minimum(z[sel], gap[sel], np.ones(int(sel.sum())), 2)
        if fit is not None:
            return fit[0], np.maximum(fit[1], floor), f"quadratic@{thr:g}", fit[2]
    # fallback: centroid of the near-best trials, weighted towards the best
    k = min(n, max(3, 2 * d + 1))
    idx = np.argsort(y)[:k]
    w = 1.0 / (1.0 + gap[idx] / max(np.median(gap[idx]), 1e-9))
    c = (w[:, None] * z[idx]).sum(axis=0) / w.sum()
    spread = np.sqrt((w[:, None] * (z[idx] - c) ** 2).sum(axis=0) / w.sum())
    if n == 1:  # locates nothing by itself (under ASHA often the first trial, which always
        # runs to the end): the optimum is anywhere the sweep looked
        return z[0], np.maximum(0.5, tried.std(axis=0)), "single", None
    return c, np.maximum(spread, np.maximum(spacing / 2, MIN_SIGMA)), "centroid", None


def _monomials(x: np.ndarray, degree: int) -> np.ndarray:
    """All monomials of the columns of x (n x d) up to ``degree``, constant first."""
    d = x.shape[1]
    cols = [np.ones(len(x))]
    for deg in range(1, degree + 1):
        cols += [np.prod(x[:, list(c)], axis=1)
                 for c in itertools.combinations_with_replacement(range(d), deg)]
    return np.column_stack(cols)


def _n_terms(d: int, degree: int) -> int:
    return math.comb(d + degree, degree)


def _surface_minimum(z: np.ndarray, y: np.ndarray, w: np.ndarray, degree: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Minimum of a weighted least-squares polynomial surface inside the points' box.

    Returns (minimum, its delta-method std, Hessian there), or None when the minimum is on the
    box's edge or the surface is not convex there.
    """
    n, d = z.shape
    mu = z.mean(axis=0)
    x = z - mu
    a = _monomials(x, degree)
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)
    dof = n - a.shape[1]
    if dof <= 0:
        return None
    resid = y - a @ coef
    s2 = float(w @ resid**2) / dof
    cov = s2 * np.linalg.pinv((a.T * w) @ a)
    lo, hi = x.min(axis=0), x.max(axis=0)
    eps = 1e-4

    def value(p: np.ndarray) -> float:
        return float(_monomials(p[None, :], degree)[0] @ coef)

    def grads(p: np.ndarray) -> np.ndarray:
        """d x terms: the gradient of every monomial at p (central differences)."""
        e = np.eye(d) * eps
        return np.array([(_monomials((p + e[i])[None, :], degree)[0]
                          - _monomials((p - e[i])[None, :], degree)[0]) / (2 * eps)
                         for i in range(d)])

    if degree == 2:  # closed form: solve grad = 0 from the constant-free part
        g0 = grads(np.zeros(d)) @ coef
        h = (np.array([grads(np.eye(d)[i]) @ coef for i in range(d)]) - g0).T
        h = (h + h.T) / 2
        if np.any(np.linalg.eigvalsh(h) <= 0):
            return None
        p = -np.linalg.solve(h, g0)
        margin = 0.25 * (hi - lo)
        if np.any(p < lo - margin) or np.any(p > hi + margin):
            return None
    else:
        start = x[int(np.argmin(a @ coef))]
        res = optimize.minimize(value, start, method="L-BFGS-B", bounds=list(zip(lo, hi)))
        p = res.x
        if np.any(p <= lo + 1e-6 * (hi - lo)) or np.any(p >= hi - 1e-6 * (hi - lo)):
            return None
        h = np.array([(grads(p + np.eye(d)[i] * eps) - grads(p - np.eye(d)[i] * eps)) @ coef
                      / (2 * eps) for i in range(d)])
        h = (h + h.T) / 2
        if np.any(np.linalg.eigvalsh(h) <= 0):
            return None
    # implicit function theorem: grad f(p; coef) = 0  =>  dp/dcoef = -H^-1 d(grad f)/dcoef
    jac = -np.linalg.solve(h, grads(p))
    sd = np.sqrt(np.maximum(np.diag(jac @ cov @ jac.T), 0.0))
    return p + mu, sd, h


def _spacing(col: np.ndarray) -> float:
    """Median gap between distinct sorted values: the grid's resolution in that dimension."""
    u = np.unique(col)
    return float(np.median(np.diff(u))) if len(u) > 1 else 0.0


def optima_by_scale(df: pd.DataFrame, space: Any, source: str = "") -> list[Optimum]:
    """Group trials by the space's scale variables and extract each scale's optimum."""
    keys = list(space.scale)
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise RaylawError(f"no column '{missing[0]}' for scale variable '{missing[0]}' "
                          f"(columns: {list(df.columns)}; use --rename COLUMN={missing[0]})")
    out = []
    for vals, group in df.groupby(keys, sort=True):
        vals = vals if isinstance(vals, tuple) else (vals,)
        scale = {k: float(v) for k, v in zip(keys, vals)}
        out.append(extract_optimum(group, space, scale, source))
    return out
