"""Scaling laws: each governed hyperparameter's optimum as a power law of scale, with intervals.

For a hyperparameter h that depends on scale variables x_k, the law is
``log h* = a + sum_k b_k log x_k``. Coefficients get a Gaussian prior (flat, or a published
fit such as Step Law's) and are updated by per-scale optima weighted by their uncertainty.
The scatter of optima around the law (tau) is unknown; it is integrated over a grid with its
restricted likelihood, so intervals stay honest with few scales and widen when extrapolating.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, stats

from raylaw.errors import RaylawError
from raylaw.files import atomic_write_text

FORMAT = "raylaw.law"
FORMAT_VERSION = 1
TAU_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 3.0, 80)])
TAU_PRIOR_SCALE = 0.3  # half-Cauchy scale on the scatter of log-optima around the law
MIN_SIGMA = 1e-3


@dataclass(frozen=True)
class Optimum:
    """One scale's estimated optimum: hyperparameter values and the std of their logs."""

    scale: dict[str, float]
    values: dict[str, float]
    sigmas: dict[str, float]
    n_trials: int = 0
    n_excluded: int = 0
    method: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale, "values": self.values, "sigmas": self.sigmas,
            "n_trials": self.n_trials, "n_excluded": self.n_excluded,
            "method": self.method, "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "optimum") -> Optimum:
        try:
            scale = {str(k): _positive(v, f"{where}.scale.{k}") for k, v in d["scale"].items()}
            values = {str(k): _positive(v, f"{where}.values.{k}") for k, v in d["values"].items()}
            sigmas = {str(k): _nonneg(v, f"{where}.sigmas.{k}") for k, v in d["sigmas"].items()}
        except (KeyError, AttributeError, TypeError) as e:
            raise RaylawError(f"{where}: expected scale, values and sigmas mappings ({e})") from e
        return cls(scale, values, sigmas, int(d.get("n_trials", 0)), int(d.get("n_excluded", 0)),
                   str(d.get("method", "")), str(d.get("source", "")))


@dataclass(frozen=True)
class Prior:
    """Gaussian prior on one hyperparameter's coefficients [a, b_1, ..., b_k]."""

    mean: np.ndarray
    cov: np.ndarray
    source: str = ""


@dataclass(frozen=True)
class Prediction:
    """A hyperparameter's predicted optimum with its interval at ``coverage``."""

    center: float
    low: float
    high: float
    coverage: float
    log_sd: float

    def to_dict(self) -> dict[str, float]:
        return {"center": self.center, "low": self.low, "high": self.high}


@dataclass
class Term:
    """The law of one hyperparameter: prior, evidence, and the posterior over coefficients."""

    depends_on: tuple[str, ...]
    prior: Prior | None = None
    # posterior, one Gaussian per tau grid point (weights sum to 1)
    tau: np.ndarray = field(default_factory=lambda: np.zeros(0))
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    means: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    covs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    n_obs: int = 0

    @property
    def fitted(self) -> bool:
        return len(self.weights) > 0

    @property
    def coef(self) -> np.ndarray:
        """Posterior mean of [a, b_1, ..., b_k]."""
        return self.weights @ self.means

    @property
    def coef_cov(self) -> np.ndarray:
        """Posterior covariance of the coefficients (total covariance over tau)."""
        m = self.coef
        d = self.means - m
        return np.einsum("j,jab->ab", self.weights, self.covs) + np.einsum(
            "j,ja,jb->ab", self.weights, d, d)

    @property
    def scatter(self) -> float:
        """Posterior mean of tau, the std of log-optima around the law."""
        return float(self.weights @ self.tau)

    def features(self, scale: dict[str, float]) -> np.ndarray:
        return np.array([1.0] + [math.log(scale[k]) for k in self.depends_on])

    def fit(self, x: np.ndarray, y: np.ndarray, s: np.ndarray, name: str) -> None:
        """Posterior over coefficients given log-features x, log-optima y and their stds s."""
        p = x.shape[1]
        n = len(y)
        if self.prior is None:
            if n < p + 1 or np.linalg.matrix_rank(x) < p:
                raise RaylawError(
                    f"law for '{name}' depends on {list(self.depends_on)}: fitting it without a "
                    f"prior needs at least {p + 1} scales whose "
                    f"{' and '.join(self.depends_on)} vary independently (got {n}); "
                    "sweep more scales or use a prior (--prior steplaw)")
            p0 = np.zeros((p, p))
            m0 = np.zeros(p)
        else:
            p0 = np.linalg.inv(self.prior.cov)
            m0 = self.prior.mean
        logl, means, covs = [], [], []
        for t in TAU_GRID:
            v = s**2 + t**2
            w = 1.0 / np.maximum(v, 1e-12)
            prec = p0 + (x.T * w) @ x
            cov = np.linalg.inv(prec)
            mean = cov @ (p0 @ m0 + (x.T * w) @ y)
            r = y - x @ mean
            # log marginal likelihood (proper prior) or REML (flat prior); both in closed form
            ll = -0.5 * (np.sum(np.log(v)) + r @ (w * r) + np.linalg.slogdet(prec)[1])
            if self.prior is not None:
                ll += -0.5 * (np.linalg.slogdet(self.prior.cov)[1] + (mean - m0) @ p0 @ (mean - m0))
            logl.append(ll)
            means.append(mean)
            covs.append(cov)
        logpost = np.array(logl) + np.log(_half_cauchy(TAU_GRID, TAU_PRIOR_SCALE))
        wts = np.exp(logpost - logpost.max()) * _grid_widths(TAU_GRID)
        wts /= wts.sum()
        keep = wts > 1e-8
        self.tau = TAU_GRID[keep]
        self.weights = wts[keep] / wts[keep].sum()
        self.means = np.array(means)[keep]
        self.covs = np.array(covs)[keep]
        self.n_obs = n

    def prior_only(self) -> None:
        """Predict from the prior alone: integrate tau over its prior."""
        assert self.prior is not None
        wts = _half_cauchy(TAU_GRID, TAU_PRIOR_SCALE) * _grid_widths(TAU_GRID)
        self.tau = TAU_GRID
        self.weights = wts / wts.sum()
        self.means = np.tile(self.prior.mean, (len(TAU_GRID), 1))
        self.covs = np.tile(self.prior.cov, (len(TAU_GRID), 1, 1))
        self.n_obs = 0

    def predict_log(self, scale: dict[str, float], coverage: float,
                    extra_sd: float = 0.0) -> tuple[float, float, float, float]:
        """(center, low, high, sd) of the log-optimum: a Gaussian mixture over tau."""
        f = self.features(scale)
        mu = self.means @ f
        sd = np.sqrt(np.einsum("a,jab,b->j", f, self.covs, f) + self.tau**2 + extra_sd**2)
        sd = np.maximum(sd, 1e-9)
        center = float(self.weights @ mu)
        total_sd = float(np.sqrt(self.weights @ (sd**2 + (mu - center) ** 2)))
        alpha = (1.0 - coverage) / 2.0

        def cdf(q: float, target: float) -> float:
            return float(self.weights @ stats.norm.cdf((q - mu) / sd)) - target

        lo_b, hi_b = center - 50 * total_sd, center + 50 * total_sd
        low = optimize.brentq(cdf, lo_b, hi_b, args=(alpha,), xtol=1e-10)
        high = optimize.brentq(cdf, lo_b, hi_b, args=(1.0 - alpha,), xtol=1e-10)
        return center, low, high, total_sd


class ScalingLaw:
    """Power laws for a search space's governed hyperparameters, with a fit/predict interface.

    ``ScalingLaw.for_space(space, prior="steplaw").fit(optima).predict({"N": 1e9, "D": 2e10})``
    """

    def __init__(self, space_name: str, terms: dict[str, Term],
                 optima: list[Optimum] | None = None, provenance: dict[str, Any] | None = None):
        self.space_name = space_name
        self.terms = terms
        self.optima: list[Optimum] = list(optima or [])
        self.provenance: dict[str, Any] = dict(provenance or {})
        self._refresh()

    # construction -------------------------------------------------------------------------
    @classmethod
    def for_space(cls, space: Any, prior: str | None = "steplaw") -> ScalingLaw:
        """An unfitted law for a SearchSpace's governed hyperparameters, optionally with a prior."""
        from raylaw.priors import prior_for

        terms = {}
        sources = []
        for name, hp in space.governed.items():
            pr = prior_for(prior, name, hp) if prior else None
            if pr is not None:
                sources.append(f"{name}: {pr.source}")
            terms[name] = Term(tuple(hp.depends_on), pr)
        if prior and not sources:
            raise RaylawError(
                f"prior '{prior}' applies to none of space '{space.name}' governed hyperparameters "
                f"{list(space.governed)} (it covers lr on N and D, and batch size on D)")
        return cls(space.name, terms, provenance={"prior": prior or "none", "prior_terms": sources})

    @property
    def scale_names(self) -> list[str]:
        return sorted({k for t in self.terms.values() for k in t.depends_on})

    def _refresh(self) -> None:
        """Recompute every term's posterior from its prior and the stored optima."""
        for name, term in self.terms.items():
            rows = [o for o in self.optima if name in o.values]
            if rows:
                x = np.array([term.features(o.scale) for o in rows])
                y = np.array([math.log(o.values[name]) for o in rows])
                s = np.array([max(o.sigmas.get(name, 0.0), MIN_SIGMA) for o in rows])
                term.fit(x, y, s, name)
            elif term.prior is not None:
                term.prior_only()
            else:
                term.tau = np.zeros(0)
                term.weights = np.zeros(0)
                term.n_obs = 0

    def fit(self, optima: list[Optimum], source: str = "") -> ScalingLaw:
        """Add per-scale optima as evidence and refit every term; returns self."""
        missing = [(o.scale, k) for o in optima for t in self.terms.values()
                   for k in t.depends_on if k not in o.scale]
        if missing:
            raise RaylawError(f"optimum at scale {missing[0][0]} lacks scale variable "
                              f"'{missing[0][1]}'")
        self.optima.extend(optima)
        self._refresh()
        self.provenance.update({
            "fitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "n_optima": len(self.optima),
        })
        if source:
            self.provenance.setdefault("sources", []).append(source)
        return self

    # prediction ---------------------------------------------------------------------------
    def predict(self, scale: dict[str, float], coverage: float = 0.9,
                observed: bool = False) -> dict[str, Prediction]:
        """Each fitted hyperparameter's predicted optimum and interval at ``scale``.

        With ``observed``, the interval is for the optimum a sweep will *measure* there: it adds
        the typical uncertainty of the optima the law was fitted from (a search targets that).
        """
        if not 0.0 < coverage < 1.0:
            raise RaylawError(f"coverage must be in (0, 1), got {coverage}")
        need = [k for k in self.scale_names if k not in scale]
        if need:
            raise RaylawError(f"scale is missing {need} (law '{self.space_name}' needs "
                              f"{self.scale_names})")
        for k, v in scale.items():
            _positive(v, f"scale {k}")
        out = {}
        for name, term in self.terms.items():
            if not term.fitted:
                continue
            extra = 0.0
            if observed:
                sig = [o.sigmas[name] for o in self.optima if name in o.sigmas]
                extra = float(np.median(sig)) if sig else 0.0
            c, lo, hi, sd = term.predict_log(scale, coverage, extra)
            out[name] = Prediction(math.exp(c), math.exp(lo), math.exp(hi), coverage, sd)
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per hyperparameter: coefficients with standard errors, scatter, and fit residuals."""
        out = {}
        for name, term in self.terms.items():
            if not term.fitted:
                out[name] = {"fitted": False}
                continue
            names = ["log_a"] + [f"b_{k}" for k in term.depends_on]
            se = np.sqrt(np.diag(term.coef_cov))
            resid = [math.log(o.values[name]) - float(term.features(o.scale) @ term.coef)
                     for o in self.optima if name in o.values]
            out[name] = {
                "fitted": True,
                "coef": dict(zip(names, term.coef.tolist())),
                "se": dict(zip(names, se.tolist())),
                "scatter": term.scatter,
                "n_obs": term.n_obs,
                "rms_residual": float(np.sqrt(np.mean(np.square(resid)))) if resid else None,
                "prior": term.prior.source if term.prior is not None else None,
            }
        return out

    # files --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        terms = {}
        for name, term in self.terms.items():
            d: dict[str, Any] = {"depends_on": list(term.depends_on)}
            if term.prior is not None:
                d["prior"] = {"mean": term.prior.mean.tolist(), "cov": term.prior.cov.tolist(),
                              "source": term.prior.source}
            if term.fitted:
                d["coef"] = term.coef.tolist()
                d["cov"] = term.coef_cov.tolist()
                d["scatter"] = term.scatter
            terms[name] = d
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "space": self.space_name,
            "terms": terms, "optima": [o.to_dict() for o in self.optima],
            "provenance": self.provenance,
        }

    def save(self, path: str | Path) -> None:
        """Write the law as JSON, atomically (a crash leaves the previous file intact)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def from_dict(cls, d: Any, where: str = "law") -> ScalingLaw:
        """Validate a parsed law file; the posterior is recomputed from prior and optima."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise RaylawError(f"{where}: not a raylaw law file (expected \"format\": \"{FORMAT}\")")
        ver = d.get("format_version")
        if ver != FORMAT_VERSION:
            raise RaylawError(f"{where}: unknown format_version {ver!r} "
                              f"(this raylaw reads version {FORMAT_VERSION})")
        terms_d = d.get("terms")
        if not isinstance(terms_d, dict) or not terms_d:
            raise RaylawError(f"{where}: field 'terms' must be a non-empty mapping")
        terms = {}
        for name, t in terms_d.items():
            tw = f"{where}: terms.{name}"
            deps = t.get("depends_on") if isinstance(t, dict) else None
            if not isinstance(deps, list) or not all(isinstance(k, str) for k in deps):
                raise RaylawError(f"{tw}.depends_on must be a list of scale variable names")
            prior = None
            if t.get("prior") is not None:
                p = len(deps) + 1
                mean = _finite_array(t["prior"].get("mean"), (p,), f"{tw}.prior.mean")
                cov = _finite_array(t["prior"].get("cov"), (p, p), f"{tw}.prior.cov")
                if not np.allclose(cov, cov.T) or np.any(np.linalg.eigvalsh(cov) <= 0):
                    raise RaylawError(f"{tw}.prior.cov must be symmetric positive definite")
                prior = Prior(mean, cov, str(t["prior"].get("source", "")))
            for key in ("coef", "cov"):
                if key in t:
                    _finite_array(t[key], None, f"{tw}.{key}")
            if "scatter" in t:
                _nonneg(t["scatter"], f"{tw}.scatter")
            terms[str(name)] = Term(tuple(deps), prior)
        optima_d = d.get("optima", [])
        if not isinstance(optima_d, list):
            raise RaylawError(f"{where}: field 'optima' must be a list")
        optima = [Optimum.from_dict(o, f"{where}: optima[{i}]") for i, o in enumerate(optima_d)]
        space = d.get("space")
        if not isinstance(space, str):
            raise RaylawError(f"{where}: field 'space' must be a string")
        prov = d.get("provenance", {})
        return cls(space, terms, optima, prov if isinstance(prov, dict) else {})

    @classmethod
    def load(cls, path: str | Path) -> ScalingLaw:
        """Read a law file; JSON only (never pickle or eval), refusing NaN and unknown versions."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise RaylawError(f"{path}: cannot read law file ({e.strerror})") from e
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except ValueError as e:
            raise RaylawError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(data, where=str(path))


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed in a law file")


def _half_cauchy(t: np.ndarray, scale: float) -> np.ndarray:
    return 1.0 / (1.0 + (t / scale) ** 2)


def _grid_widths(t: np.ndarray) -> np.ndarray:
    """Quadrature widths for a non-uniform grid (trapezoid-like)."""
    edges = np.concatenate([[t[0]], (t[1:] + t[:-1]) / 2, [t[-1]]])
    return np.diff(edges)


def _positive(v: Any, where: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise RaylawError(f"{where}: expected a positive number, got {v!r}") from None
    if not math.isfinite(f) or f <= 0:
        raise RaylawError(f"{where}: expected a positive finite number, got {v!r}")
    return f


def _nonneg(v: Any, where: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise RaylawError(f"{where}: expected a non-negative number, got {v!r}") from None
    if not math.isfinite(f) or f < 0:
        raise RaylawError(f"{where}: expected a non-negative finite number, got {v!r}")
    return f


def _finite_array(v: Any, shape: tuple[int, ...] | None, where: str) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        raise RaylawError(f"{where}: expected numbers, got {v!r}") from None
    if shape is not None and a.shape != shape:
        raise RaylawError(f"{where}: expected shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise RaylawError(f"{where}: contains NaN or infinite values")
    return a
