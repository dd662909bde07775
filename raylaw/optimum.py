"""Estimate one scale's optimum of the governed hyperparameters from its trials, robustly.

The loss landscape over log-hyperparameters is a convex bowl with a flat plateau (Step Law),
so the single best trial is a noisy estimate of the optimum. We fit a quadratic to the
near-optimal trials and take its vertex, with the delta-method uncertainty; when the fit is
not convex, or too few trials are good enough, we fall back to a weighted centroid of the best
trials. Diverged and errored trials are excluded and counted; trials stopped early are
excluded (their metric is at a lower fidelity) and counted.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from raylaw.errors import RaylawError
from raylaw.law import Optimum

STATUSES = ("completed", "stopped", "diverged", "errored")
THRESHOLDS = (0.005, 0.01, 0.02, 0.04, 0.08)  # relative metric gaps to the best trial
MIN_SIGMA = 0.02


def extract_optimum(trials: pd.DataFrame | list[dict[str, Any]], space: Any,
                    scale: dict[str, float] | None = None, source: str = "") -> Optimum:
    """One scale's optimum from its trials (columns: hyperparameters, metric, ``status``).

    Rows whose ``status`` is not ``completed`` or whose metric is not finite are excluded.
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
    z = np.log(df[names].to_numpy(dtype=float))
    ok = (status.to_numpy() == "completed") & np.isfinite(y) & np.all(np.isfinite(z), axis=1)
    n_excluded = int((~ok).sum())
    y, z = y[ok], z[ok]
    if len(y) == 0:
        raise RaylawError(f"no completed trial with a finite '{metric}' at scale {scale} "
                          f"({n_excluded} excluded)")
    if space.mode == "max":
        y = -y
    varying = [j for j in range(len(names)) if len(y) == 1 or np.ptp(z[:, j]) > 0]
    zv = z[:, varying]
    center, sigma, method = _estimate(zv, y)
    values, sigmas = {}, {}
    for k, j in enumerate(varying):
        values[names[j]] = float(math.exp(center[k]))
        sigmas[names[j]] = float(sigma[k])
    if not values:
        raise RaylawError(f"at scale {scale} every trial has the same {names}: nothing to "
                          "locate an optimum from")
    return Optimum(dict(scale or {}), values, sigmas, int(len(y)), n_excluded, method, source)


def _estimate(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Center and std (log space) of the optimum from points z (n x d) with metric y (min)."""
    n, d = z.shape
    best = int(np.argmin(y))
    scale_y = max(abs(y[best]), 1e-12)
    gap = (y - y[best]) / scale_y
    spacing = np.array([_spacing(z[:, j]) for j in range(d)])
    q = 1 + d + d * (d + 1) // 2
    for thr in THRESHOLDS:
        sel = gap <= thr
        if sel.sum() < q + 2 or any(len(np.unique(z[sel, j])) < 3 for j in range(d)):
            continue
        fit = _quadratic_vertex(z[sel], y[sel])
        if fit is None:
            continue
        v, sd = fit
        lo, hi = z[sel].min(axis=0), z[sel].max(axis=0)
        margin = 0.25 * (hi - lo)
        if np.all(v >= lo - margin) and np.all(v <= hi + margin):
            return v, np.maximum(sd, np.maximum(spacing / 4, MIN_SIGMA)), f"quadratic@{thr:g}"
    # fallback: centroid of the near-best trials, weighted towards the best
    k = min(n, max(3, 2 * d + 1))
    idx = np.argsort(y)[:k]
    w = 1.0 / (1.0 + gap[idx] / max(np.median(gap[idx]), 1e-9))
    c = (w[:, None] * z[idx]).sum(axis=0) / w.sum()
    spread = np.sqrt((w[:, None] * (z[idx] - c) ** 2).sum(axis=0) / w.sum())
    if n == 1:
        return z[0], np.full(d, 0.5), "single"
    return c, np.maximum(spread, np.maximum(spacing / 2, MIN_SIGMA)), "centroid"


def _quadratic_vertex(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Vertex of a least-squares quadratic fit and its delta-method std; None if not convex."""
    n, d = z.shape
    mu = z.mean(axis=0)
    x = z - mu
    cols = [np.ones(n)] + [x[:, i] for i in range(d)]
    pairs = [(i, j) for i in range(d) for j in range(i, d)]
    cols += [x[:, i] * x[:, j] for i, j in pairs]
    a = np.column_stack(cols)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    dof = n - a.shape[1]
    if dof <= 0:
        return None
    resid = y - a @ coef
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.pinv(a.T @ a)

    def vertex(c: np.ndarray) -> np.ndarray | None:
        g = c[1:1 + d]
        h = np.zeros((d, d))
        for (i, j), v in zip(pairs, c[1 + d:]):
            h[i, j] += v if i != j else 2 * v
            if i != j:
                h[j, i] += v
        if np.any(np.linalg.eigvalsh(h) <= 0):
            return None
        return -np.linalg.solve(h, g)

    v = vertex(coef)
    if v is None:
        return None
    jac = np.zeros((d, len(coef)))
    for k in range(len(coef)):
        eps = 1e-6 * max(1.0, abs(coef[k]))
        c2 = coef.copy()
        c2[k] += eps
        v2 = vertex(c2)
        if v2 is None:
            return None
        jac[:, k] = (v2 - v) / eps
    sd = np.sqrt(np.maximum(np.diag(jac @ cov @ jac.T), 0.0))
    return v + mu, sd


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
