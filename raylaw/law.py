"""Scaling laws: each governed hyperparameter's optimum as a power law of scale, with intervals.

For a hyperparameter h that depends on scale variables x_k, the law is
``log h* = a + sum_k b_k log x_k``. Coefficients get a Gaussian prior (flat, or a published
fit such as Step Law's) and are updated by per-scale optima weighted by their uncertainty.
The scatter of optima around the law (tau) is unknown; it is integrated over a grid with its
restricted likelihood, so intervals stay honest with few scales and widen when extrapolating.

The coefficients of all hyperparameters are fitted jointly. Where an optimum carries the
curvature of its loss bowl (``Optimum.curvature``), its scatter is shaped like the bowl: optima
wander along flat valleys (e.g. lr rising with batch size), and a miss along a valley costs
little loss, so the fit weighs each miss by the loss it would cost (the bowl's Hessian) rather
than per hyperparameter in isolation. Intervals then use each hyperparameter's own scatter
around that joint fit.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import optimize, stats

from raylaw.errors import RaylawError
from raylaw.files import atomic_write_text
from raylaw.priors import Prior, prior_for

if TYPE_CHECKING:
    from raylaw.space import SearchSpace

FORMAT = "raylaw.law"
FORMAT_VERSION = 1
TAU_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 3.0, 80)])
TAU_PRIOR_SCALE = 0.3  # half-Cauchy scale on the scatter of log-optima around the law
MIN_SIGMA = 1e-3
MAX_COEF = 1e3  # a stored log-coefficient beyond this is no fitted law (a corrupt file)
CENSORED_ITERATIONS, CENSORED_TOL = 200, 1e-4  # EM for optima that are bounds (log space)
SHAPE_CLIP = (1e-2, 1e2)  # eigenvalue bounds of a normalized scatter shape


@dataclass(frozen=True)
class Optimum:
    """One scale's estimated optimum: hyperparameter values and the std of their logs.

    Args:
        scale: the scale, e.g. ``{"N": 1e9, "D": 2e10}``.
        values: each governed hyperparameter's optimum.
        sigmas: the std of each value's log.
        n_trials: trials it was estimated from.
        n_excluded: trials left out (stopped early, diverged, errored).
        method: how it was estimated.
        source: where its trials came from (a file, a store).
        curvature: the Hessian of the relative metric gap over the log-hyperparameters at
            the optimum, over the keys of ``values`` (None: the trials could not show it).
        censored: per hyperparameter whose best trial sat on the space's hard bound, "upper"
            (the optimum is at most the value) or "lower" (at least the value).
        noise: the metric's relative noise sd estimated from this scale's trials (None: not
            estimated).
        skew: the gap's third derivatives at the optimum, the bowl's lopsidedness (None: not
            estimated).
    """

    scale: dict[str, float]
    values: dict[str, float]
    sigmas: dict[str, float]
    n_trials: int = 0
    n_excluded: int = 0
    method: str = ""
    source: str = ""
    curvature: dict[str, dict[str, float]] | None = None
    censored: dict[str, str] = field(default_factory=dict)
    noise: float | None = None
    skew: dict[str, dict[str, dict[str, float]]] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "scale": self.scale, "values": self.values, "sigmas": self.sigmas,
            "n_trials": self.n_trials, "n_excluded": self.n_excluded,
            "method": self.method, "source": self.source,
        }
        if self.curvature is not None:
            d["curvature"] = self.curvature
        if self.censored:
            d["censored"] = dict(self.censored)
        if self.noise is not None:
            d["noise"] = self.noise
        if self.skew is not None:
            d["skew"] = self.skew
        return d

    def hessian(self, names: list[str]) -> np.ndarray | None:
        """The curvature over ``names`` as a matrix, if known and positive definite."""
        c = self.curvature
        if c is None or any(a not in c or b not in c[a] for a in names for b in names):
            return None
        h = np.array([[c[a][b] for b in names] for a in names], dtype=float)
        h = (h + h.T) / 2
        if not np.all(np.isfinite(h)) or np.any(np.linalg.eigvalsh(h) <= 0):
            return None
        return h

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "optimum") -> Optimum:
        try:
            scale = {str(k): _positive(v, f"{where}.scale.{k}") for k, v in d["scale"].items()}
            values = {str(k): _positive(v, f"{where}.values.{k}") for k, v in d["values"].items()}
            sigmas = {str(k): _nonneg(v, f"{where}.sigmas.{k}") for k, v in d["sigmas"].items()}
            curv = d.get("curvature")
            if curv is not None:
                curv = {str(a): {str(b): _finite(v, f"{where}.curvature.{a}.{b}")
                                 for b, v in row.items()} for a, row in curv.items()}
            censored = {str(k): str(v) for k, v in (d.get("censored") or {}).items()}
            noise = d.get("noise")
            noise = None if noise is None else _nonneg(noise, f"{where}.noise")
            skew = d.get("skew")
            if skew is not None:
                skew = {str(a): {str(b): {str(c): _finite(v, f"{where}.skew.{a}.{b}.{c}")
                                          for c, v in r2.items()} for b, r2 in r1.items()}
                        for a, r1 in skew.items()}
        except (KeyError, AttributeError, TypeError) as e:
            raise RaylawError(f"{where}: expected scale, values and sigmas mappings ({e})") from e
        for k, side in censored.items():
            if k not in values or side not in ("upper", "lower"):
                raise RaylawError(f"{where}.censored.{k}: expected 'upper' or 'lower' for one of "
                                  f"the values {list(values)}, got {side!r}")
        return cls(scale, values, sigmas, int(d.get("n_trials", 0)), int(d.get("n_excluded", 0)),
                   str(d.get("method", "")), str(d.get("source", "")), curv, censored, noise,
                   skew)

    def mark(self, name: str) -> str:
        """'<=' / '>=' before a value that is a bound, for tables; '' for a point."""
        return {"upper": "<=", "lower": ">="}.get(self.censored.get(name, ""), "")

    def inside(self, name: str, low: float, high: float) -> bool:
        """Whether [low, high] holds the optimum: for a bound, whether it reaches past it."""
        v, side = self.values[name], self.censored.get(name)
        return low <= v if side == "upper" else v <= high if side == "lower" else low <= v <= high

    def residual(self, name: str, predicted_log: float) -> float:
        """log(value / prediction); a bound the prediction respects counts as no miss."""
        r = math.log(self.values[name]) - predicted_log
        side = self.censored.get(name)
        return min(r, 0.0) if side == "upper" else max(r, 0.0) if side == "lower" else r


@dataclass(frozen=True)
class Prediction:
    """A hyperparameter's predicted optimum with its interval at ``coverage``.

    Args:
        center: the predicted optimum.
        low: the interval's lower end.
        high: its upper end.
        coverage: the interval's probability.
        log_sd: the prediction's sd in log space.
    """

    center: float
    low: float
    high: float
    coverage: float
    log_sd: float

    def to_dict(self) -> dict[str, float]:
        return {"center": self.center, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Posterior:
    """What a law knows about one hyperparameter's coefficients [a, b_1, ..., b_k].

    The scatter tau of log-optima around the law is integrated over a grid: at each grid value
    the coefficients are Gaussian, the same Gaussian at every value (raylaw's fits share one).

    Args:
        mean: the coefficients' mean.
        cov: their covariance.
        tau: the grid of scatter values (log space).
        weights: each grid value's posterior weight (they sum to 1).
    """

    mean: np.ndarray
    cov: np.ndarray
    tau: np.ndarray
    weights: np.ndarray

    @classmethod
    def of_prior(cls, prior: Prior) -> Posterior:
        """No evidence: the prior's coefficients, tau integrated over its half-Cauchy prior."""
        wts = _half_cauchy(TAU_GRID, TAU_PRIOR_SCALE) * _grid_widths(TAU_GRID)
        return cls(prior.mean.copy(), prior.cov.copy(), TAU_GRID, wts / wts.sum())

    @property
    def means(self) -> np.ndarray:
        """The coefficients' mean at each tau grid value (rows)."""
        return np.tile(self.mean, (len(self.tau), 1))

    @property
    def covs(self) -> np.ndarray:
        """The coefficients' covariance at each tau grid value."""
        return np.tile(self.cov, (len(self.tau), 1, 1))

    @property
    def scatter(self) -> float:
        """Posterior mean of tau."""
        return float(self.weights @ self.tau)

    def mixture(self, f: np.ndarray, extra_sd: float = 0.0
                ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """For features ``f`` (1, log scales): per tau grid value the log-optimum's mean and sd,
        then the mixture's mean and sd; ``extra_sd`` widens every component."""
        mu = self.means @ f
        sd = np.sqrt(np.einsum("a,jab,b->j", f, self.covs, f) + self.tau**2 + extra_sd**2)
        sd = np.maximum(sd, 1e-9)
        center = float(self.weights @ mu)
        return mu, sd, center, float(np.sqrt(self.weights @ (sd**2 + (mu - center) ** 2)))

    def predict_log(self, f: np.ndarray, coverage: float,
                    extra_sd: float = 0.0) -> tuple[float, float, float, float]:
        """(center, low, high, sd) of the log-optimum at features ``f``: the mixture's mean, its
        central ``coverage`` interval and its sd."""
        mu, sd, center, total_sd = self.mixture(f, extra_sd)
        alpha = (1.0 - coverage) / 2.0

        def cdf(q: float, target: float) -> float:
            return float(self.weights @ stats.norm.cdf((q - mu) / sd)) - target

        lo_b, hi_b = center - 50 * total_sd, center + 50 * total_sd
        low = optimize.brentq(cdf, lo_b, hi_b, args=(alpha,), xtol=1e-10)
        high = optimize.brentq(cdf, lo_b, hi_b, args=(1.0 - alpha,), xtol=1e-10)
        return center, low, high, total_sd

    def to_dict(self) -> dict[str, list[float]]:
        return {"tau": self.tau.tolist(), "weights": self.weights.tolist()}

    @classmethod
    def from_dict(cls, t: dict[str, Any], p: int, where: str) -> Posterior:
        """A law file's stored posterior of a term with ``p`` coefficients, checked: shapes, a
        symmetric positive semi-definite ``cov``, non-negative tau values with weights that
        sum to 1, and a ``scatter`` that is their mean."""
        if any(k not in t for k in ("coef", "cov", "scatter")):
            raise RaylawError(f"{where}: a scatter_posterior needs coef, cov and scatter")
        mean = _finite_array(t["coef"], (p,), f"{where}.coef")
        if np.any(np.abs(mean) > MAX_COEF):  # logs of a power law's factor and its exponents
            raise RaylawError(f"{where}.coef: {mean.tolist()} is out of range for a power law "
                              f"(|coefficient| <= {MAX_COEF:g})")
        cov = _finite_array(t["cov"], (p, p), f"{where}.cov")
        if not np.allclose(cov, cov.T) or np.any(np.linalg.eigvalsh(cov) < -1e-12):
            raise RaylawError(f"{where}.cov must be symmetric positive semi-definite")
        d = t["scatter_posterior"]
        if not isinstance(d, dict):
            raise RaylawError(f"{where}.scatter_posterior must map tau and weights to lists")
        tau = _finite_array(d.get("tau"), None, f"{where}.scatter_posterior.tau")
        weights = _finite_array(d.get("weights"), tau.shape, f"{where}.scatter_posterior.weights")
        if (tau.ndim != 1 or not len(tau) or np.any(tau < 0) or np.any(weights < 0)
                or abs(weights.sum() - 1.0) > 1e-9):
            raise RaylawError(f"{where}.scatter_posterior: expected non-negative tau values and "
                              "weights that sum to 1")
        post = cls(mean, cov, tau, weights)
        scatter = _nonneg(t["scatter"], f"{where}.scatter")
        if abs(post.scatter - scatter) > 1e-9 * max(1.0, scatter):
            raise RaylawError(f"{where}.scatter: {scatter!r} is not the mean of its "
                              f"scatter_posterior ({post.scatter!r})")
        return post


@dataclass(frozen=True)
class Term:
    """The law of one hyperparameter: the scale variables it depends on, its prior, and (set by
    ``ScalingLaw.fit``) its posterior.

    Args:
        depends_on: the scale variables of its power law, e.g. ("N", "D").
        prior: a Gaussian prior on its coefficients (None: flat).
        posterior: what a fit learned (None: not fitted).
    """

    depends_on: tuple[str, ...]
    prior: Prior | None = None
    posterior: Posterior | None = None

    @property
    def belief(self) -> Posterior | None:
        """What predictions use: the posterior, or before any fit the prior alone."""
        if self.posterior is None and self.prior is not None:
            return Posterior.of_prior(self.prior)
        return self.posterior

    @property
    def fitted(self) -> bool:
        """Whether the term predicts: it has a posterior or a prior."""
        return self.posterior is not None or self.prior is not None

    @property
    def coef(self) -> np.ndarray:
        """Mean of [a, b_1, ..., b_k]."""
        return self._belief().mean

    @property
    def coef_cov(self) -> np.ndarray:
        """Covariance of the coefficients."""
        return self._belief().cov

    @property
    def scatter(self) -> float:
        """Mean of tau, this hyperparameter's std of log-optima around the law."""
        return self._belief().scatter

    def _belief(self) -> Posterior:
        belief = self.belief
        if belief is None:
            raise RaylawError(f"the law of a hyperparameter on {list(self.depends_on)} has no "
                              "prior and is not fitted")
        return belief

    def check_identifiable(self, x: np.ndarray, name: str) -> None:
        """Without a prior, the optima must pin every coefficient down (and leave a residual)."""
        p, n = x.shape[1], x.shape[0]
        if self.prior is None and (n < p + 1 or np.linalg.matrix_rank(x) < p):
            raise RaylawError(
                f"law for '{name}' depends on {list(self.depends_on)}: fitting it without a "
                f"prior needs at least {p + 1} scales whose "
                f"{' and '.join(self.depends_on)} vary independently (got {n}); "
                "sweep more scales or use a prior (--prior steplaw)")

    def features(self, scale: dict[str, float]) -> np.ndarray:
        """[1, log x_1, ..., log x_k] for the scale variables this term depends on."""
        return np.array([1.0] + [math.log(scale[k]) for k in self.depends_on])

    def predict_log(self, scale: dict[str, float], coverage: float,
                    extra_sd: float = 0.0) -> tuple[float, float, float, float]:
        """(center, low, high, sd) of the log-optimum at ``scale``: a Gaussian mixture over tau."""
        return self._belief().predict_log(self.features(scale), coverage, extra_sd)


class ScalingLaw:
    """Power laws for a search space's governed hyperparameters, shaped like a scikit-learn
    estimator: the constructor stores each term's scale variables and prior and fits nothing;
    ``fit(optima)`` sets the fitted state (``optima`` and every term's ``posterior``) from exactly
    the optima given and returns the law; before any fit, a term with a prior predicts from it.

    ``ScalingLaw.for_space(space, prior="steplaw").fit(optima).predict({"N": 1e9, "D": 2e10})``

    Args:
        space_name: the name of the search space the law is for.
        terms: per governed hyperparameter, its scale variables and prior (a posterior they
            carry is not kept: only ``fit`` and ``load`` set one).
        provenance: where the law comes from (prior, sources, version, ...), saved with it.
    """

    def __init__(self, space_name: str, terms: dict[str, Term], *,
                 provenance: dict[str, Any] | None = None) -> None:
        self.space_name = space_name
        self.terms = {name: Term(t.depends_on, t.prior) for name, t in terms.items()}
        self.provenance: dict[str, Any] = dict(provenance or {})
        self.optima: list[Optimum] = []

    # construction -------------------------------------------------------------------------
    @classmethod
    def for_space(cls, space: SearchSpace, prior: str | None = "steplaw") -> ScalingLaw:
        """An unfitted law for a SearchSpace's governed hyperparameters, optionally with a prior."""
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
        return cls(space.name, terms,
                   provenance={"prior": prior or "none", "prior_terms": sources})

    @property
    def scale_names(self) -> list[str]:
        return sorted({k for t in self.terms.values() for k in t.depends_on})

    def fit(self, optima: list[Optimum], source: str = "") -> ScalingLaw:
        """Fit every term to exactly ``optima`` (what earlier fits saw is replaced); returns self.

        Fitting twice with the same optima gives the same law; to add evidence, pass it with
        the old: ``law.fit(law.optima + new)``. ``source`` is recorded in the provenance.
        """
        optima = list(optima)
        missing = [(o.scale, k) for o in optima for t in self.terms.values()
                   for k in t.depends_on if k not in o.scale]
        if missing:
            raise RaylawError(f"optimum at scale {missing[0][0]} lacks scale variable "
                              f"'{missing[0][1]}'")
        self._set_fit(optima, _posteriors(self.terms, optima))
        self.provenance.update({
            "fitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "n_optima": len(self.optima),
        })
        sources = list(self.provenance.get("sources", []))
        if source and source not in sources:
            self.provenance["sources"] = [*sources, source]
        return self

    def _set_fit(self, optima: list[Optimum], posteriors: dict[str, Posterior]) -> None:
        """The fitted state: the evidence and each term's posterior (None: unobserved, no prior)."""
        self.optima = optima
        self.terms = {name: dataclasses.replace(t, posterior=posteriors.get(name))
                      for name, t in self.terms.items()}

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

    def budget_exponents(self, budget: str) -> dict[str, tuple[float, float]]:
        """Per hyperparameter whose law depends on the scale variable ``budget`` (e.g. D): its
        exponent of it and that exponent's sd. A run stopped at f of the budget is like a full
        run at f times it, whose optimum sits ``f ** exponent`` times the full run's."""
        out = {}
        for name, term in self.terms.items():
            if term.fitted and budget in term.depends_on:
                k = 1 + term.depends_on.index(budget)
                out[name] = (float(term.coef[k]), math.sqrt(max(float(term.coef_cov[k, k]), 0.0)))
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
            mine = [o for o in self.optima if name in o.values]
            resid = [o.residual(name, float(term.features(o.scale) @ term.coef)) for o in mine]
            out[name] = {
                "fitted": True,
                "coef": dict(zip(names, term.coef.tolist())),
                "se": dict(zip(names, se.tolist())),
                "scatter": term.scatter,
                "n_obs": len(mine),
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
                if term.prior.pivot is not None:
                    d["prior"]["pivot"] = dict(zip(term.depends_on,
                                                   np.exp(term.prior.pivot).tolist()))
                    d["prior"]["exponent_sd"] = term.prior.exponent_sd
            belief = term.belief
            if belief is not None:  # coef, cov and scatter summarize it for readers
                d["coef"] = belief.mean.tolist()
                d["cov"] = belief.cov.tolist()
                d["scatter"] = belief.scatter
                d["scatter_posterior"] = belief.to_dict()
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
        """Validate a parsed law file and restore its fit as stored.

        A file written before raylaw stored each term's ``scatter_posterior`` gets the fit
        recomputed from its prior and optima, as the raylaw that wrote it did.
        """
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise RaylawError(f"{where}: not a raylaw law file (expected \"format\": \"{FORMAT}\")")
        ver = d.get("format_version")
        if ver != FORMAT_VERSION:
            raise RaylawError(f"{where}: unknown format_version {ver!r} "
                              f"(this raylaw reads version {FORMAT_VERSION})")
        terms_d = d.get("terms")
        if not isinstance(terms_d, dict) or not terms_d:
            raise RaylawError(f"{where}: field 'terms' must be a non-empty mapping")
        terms: dict[str, Term] = {}
        stored: dict[str, Posterior] = {}
        written_before_posteriors = False
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
                pivot, esd = None, 0.0
                if t["prior"].get("pivot") is not None:
                    pv = t["prior"]["pivot"]
                    if not isinstance(pv, dict) or set(pv) != set(deps):
                        raise RaylawError(f"{tw}.prior.pivot must map each of {deps} to a scale")
                    pivot = np.log([_positive(pv[k], f"{tw}.prior.pivot.{k}") for k in deps])
                    esd = _nonneg(t["prior"].get("exponent_sd", 0.0), f"{tw}.prior.exponent_sd")
                prior = Prior(mean, cov, str(t["prior"].get("source", "")), pivot, esd)
            for key in ("coef", "cov"):
                if key in t:
                    _finite_array(t[key], None, f"{tw}.{key}")
            if "scatter" in t:
                _nonneg(t["scatter"], f"{tw}.scatter")
            if "scatter_posterior" in t:
                stored[str(name)] = Posterior.from_dict(t, len(deps) + 1, tw)
            elif "coef" in t:
                written_before_posteriors = True
            terms[str(name)] = Term(tuple(deps), prior)
        optima_d = d.get("optima", [])
        if not isinstance(optima_d, list):
            raise RaylawError(f"{where}: field 'optima' must be a list")
        optima = [Optimum.from_dict(o, f"{where}: optima[{i}]") for i, o in enumerate(optima_d)]
        space = d.get("space")
        if not isinstance(space, str):
            raise RaylawError(f"{where}: field 'space' must be a string")
        prov = d.get("provenance", {})
        law = cls(space, terms, provenance=prov if isinstance(prov, dict) else {})
        if written_before_posteriors:
            stored = _posteriors(law.terms, optima)
        for name in law.terms:
            if name not in stored and any(name in o.values for o in optima):
                raise RaylawError(f"{where}: terms.{name} has optima but no fit (coef, cov, "
                                  "scatter and scatter_posterior)")
        law._set_fit(optima, stored)
        return law

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


def _posteriors(terms: dict[str, Term], optima: list[Optimum]) -> dict[str, Posterior]:
    """Each term's posterior given ``optima``: observed terms fitted jointly, the others their
    prior alone (no entry for a term with neither)."""
    observed = {n: t for n, t in terms.items() if any(n in o.values for o in optima)}
    out = {n: Posterior.of_prior(t.prior) for n, t in terms.items()
           if n not in observed and t.prior is not None}
    if observed:
        out.update(_fit_censored(observed, optima))
    return out


def _fit_censored(terms: dict[str, Term], optima: list[Optimum]) -> dict[str, Posterior]:
    """``_fit_joint``, where a censored optimum (a bound) counts as the expected log-optimum
    beyond its bound under the current fit (EM for a Tobit model), refitted until it settles.

    An optimum on the space's floor says "here or lower": as a point it would hold the law up;
    as a bound it lets the law go below.
    """
    work = list(optima)
    for _ in range(CENSORED_ITERATIONS):
        fit = _fit_joint(terms, work)
        moved = 0.0
        for i, o in enumerate(optima):
            sides = {n: s for n, s in o.censored.items() if n in terms}
            if not sides:
                continue
            values = dict(work[i].values)
            for name, side in sides.items():
                _, _, center, sd = fit[name].mixture(terms[name].features(o.scale))
                s = math.hypot(sd, max(o.sigmas.get(name, 0.0), MIN_SIGMA))
                a = (math.log(o.values[name]) - center) / s
                # truncated normal mean: below the bound (upper) or above it (lower)
                if side == "upper":
                    z = center - s * math.exp(stats.norm.logpdf(a) - stats.norm.logcdf(a))
                else:
                    z = center + s * math.exp(stats.norm.logpdf(a) - stats.norm.logsf(a))
                moved = max(moved, abs(z - math.log(values[name])))
                values[name] = math.exp(z)
            work[i] = dataclasses.replace(work[i], values=values)
        if moved < CENSORED_TOL:
            break
    return fit


def _fit_joint(terms: dict[str, Term], optima: list[Optimum]) -> dict[str, Posterior]:
    """Posterior of all terms' coefficients together, then each term's own scatter.

    Each optimum's log-values y_s = X_s beta + e_s with e_s ~ N(0, diag(sigma_s^2) + tau^2 M_s):
    M_s is the inverse of the optimum's bowl curvature, normalized by the typical curvature of
    all optima, or the identity where the curvature is unknown. Flat prior blocks make the
    likelihood a restricted one (REML); tau gets a half-Cauchy prior and is integrated out.
    Each term then gets the coefficients' posterior mean and covariance, and a posterior over
    its own scatter tau_h from its residuals around that fit (REML, same prior): the bowl's
    shape says how to weigh misses, not how far each hyperparameter's optima stray.
    """
    names = list(terms)
    offs = np.cumsum([0] + [len(t.depends_on) + 1 for t in terms.values()])
    dim = int(offs[-1])
    for name, term in terms.items():
        x = np.array([term.features(o.scale) for o in optima if name in o.values])
        term.check_identifiable(x, name)
    p0, m0, proper = np.zeros((dim, dim)), np.zeros(dim), np.zeros(dim, dtype=bool)
    for k, (name, term) in enumerate(terms.items()):
        if term.prior is not None:
            blk = slice(offs[k], offs[k + 1])
            center = np.mean([term.features(o.scale)[1:] for o in optima if name in o.values],
                             axis=0)
            p0[blk, blk] = np.linalg.inv(term.prior.cov_at(center))
            m0[blk] = term.prior.mean
            proper[blk] = True
    p0m0 = p0 @ m0
    rows = []
    for o in optima:
        idx = [k for k, n in enumerate(names) if n in o.values]
        if not idx:
            continue
        obs = [names[k] for k in idx]
        x = np.zeros((len(idx), dim))
        for r, k in enumerate(idx):
            x[r, offs[k]:offs[k + 1]] = terms[names[k]].features(o.scale)
        y = np.array([math.log(o.values[n]) for n in obs])
        s2 = np.array([max(o.sigmas.get(n, 0.0), MIN_SIGMA) ** 2 for n in obs])
        h = o.hessian(obs)
        rows.append((idx, x, y, s2, None if h is None else np.linalg.inv(h)))
    known = [r[4] for r in rows if r[4] is not None]
    norm = math.exp(np.mean([np.linalg.slogdet(h)[1] / len(h) for h in known])) if known else 1.0
    shapes = [np.eye(len(r[0])) if r[4] is None else _clip_shape(r[4] / norm) for r in rows]
    logl, means, covs = [], [], []
    for t in TAU_GRID:
        prec, rhs, logdet, fits = p0.copy(), p0m0.copy(), 0.0, []
        for (_, x, y, s2, _), m in zip(rows, shapes):
            c = np.diag(s2) + t * t * m
            w = np.linalg.inv(c)
            fits.append((x, y, w))
            prec += x.T @ w @ x
            rhs += x.T @ w @ y
            logdet += np.linalg.slogdet(c)[1]
        cov = np.linalg.inv(prec)
        mean = cov @ rhs
        quad = sum(float((y - x @ mean) @ w @ (y - x @ mean)) for x, y, w in fits)
        d = np.where(proper, mean - m0, 0.0)
        # log marginal likelihood (proper blocks) / restricted likelihood (flat blocks)
        logl.append(-0.5 * (logdet + quad + np.linalg.slogdet(prec)[1] + d @ p0 @ d))
        means.append(mean)
        covs.append(cov)
    post = _tau_posterior(np.array(logl))
    means_a, covs_a = np.array(means), np.array(covs)
    mean = post @ means_a
    dev = means_a - mean
    cov = np.einsum("j,jab->ab", post, covs_a) + np.einsum("j,ja,jb->ab", post, dev, dev)
    out = {}
    for k, (name, term) in enumerate(terms.items()):
        # each hyperparameter's own scatter around the joint center, for honest intervals
        blk = slice(offs[k], offs[k + 1])
        mine = [o for o in optima if name in o.values]
        x = np.array([term.features(o.scale) for o in mine])
        r = np.array([math.log(o.values[name]) for o in mine]) - x @ mean[blk]
        s2 = np.array([max(o.sigmas.get(name, 0.0), MIN_SIGMA) ** 2 for o in mine])
        logl_k = []
        for t in TAU_GRID:
            w = 1.0 / (s2 + t * t)
            info = (x.T * w) @ x + p0[blk, blk]  # REML: the coefficients were estimated
            logl_k.append(-0.5 * (np.sum(np.log(s2 + t * t)) + r @ (w * r)
                                  + np.linalg.slogdet(info)[1]))
        wk = _tau_posterior(np.array(logl_k))
        keep = wk > 1e-8
        out[name] = Posterior(mean[blk].copy(), cov[blk, blk].copy(), TAU_GRID[keep],
                              wk[keep] / wk[keep].sum())
    return out


def _tau_posterior(logl: np.ndarray) -> np.ndarray:
    """Normalized weights of the tau grid points from their log-likelihoods (half-Cauchy prior)."""
    logpost = logl + np.log(_half_cauchy(TAU_GRID, TAU_PRIOR_SCALE))
    wts = np.exp(logpost - logpost.max()) * _grid_widths(TAU_GRID)
    return wts / wts.sum()


def _clip_shape(m: np.ndarray) -> np.ndarray:
    """Bound a scatter shape's eigenvalues so a near-flat bowl cannot make it singular."""
    ev, vec = np.linalg.eigh(m)
    return (vec * np.clip(ev, *SHAPE_CLIP)) @ vec.T


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


def _finite(v: Any, where: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise RaylawError(f"{where}: expected a number, got {v!r}") from None
    if not math.isfinite(f):
        raise RaylawError(f"{where}: expected a finite number, got {v!r}")
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
