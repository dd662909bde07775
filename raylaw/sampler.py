"""``LawSampler``: an Optuna sampler that searches where a scaling law predicts the optimum,
and helpers for studies that keep their own sampler.

It models the governed hyperparameters' landscape at the target scale as a Bayesian bowl
(``raylaw.landscape``) whose vertex prior is the law's prediction, fitted to the study's
completed trials with the metric's noise estimated. Proposals are Thompson samples of the
vertex, so they concentrate where the optimum probably is and spread as far as it is still
uncertain (once the trials doubt the law, the points that would most sharpen the answer
instead); its answer, ``recommend``, is the posterior's optimum, which may be a configuration
never tried, not the luckiest trial. Every other parameter is left to ``base_sampler``. The
sampler keeps no state between trials: it recomputes from the study, so several workers can
share an RDB storage. Users who keep their own sampler can narrow its distributions to the
law's interval (``narrowed_distributions``) or enqueue the law's prediction
(``enqueue_prediction``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from raylaw.landscape import BROAD_WEIGHT, Bowl, BowlPrior, fit_bowl
from raylaw.law import Prediction, ScalingLaw
from raylaw.optimum import pooled_shape
from raylaw.records import mark_law_center
from raylaw.space import SearchSpace

MIN_SUPPORT = 3  # trials on the bowl before the recommendation is kept near them
RUNG_SPREAD = 1.5  # stops within this factor of each other are at one rung
EXPLORE_EVERY = 8  # every 8th trial looks anywhere in the declared ranges
DECLARED_NOISE_SD = 0.5  # log-sd of the noise prior around a declared noise
DESIGN_DRAWS = 16  # vertex draws among a doubted law's candidate proposals ...
DESIGN_RADII = np.geomspace(0.05, 1.6, 10)  # ... and points this far (log) about the center ...
DESIGN_GAP = 2.0  # ... up to this many noise sds above its bottom
DOUBT_FACTOR = 1.0  # the trials doubt the law once they favour its being wrong at all ...
DOUBT_ONSET = MIN_SUPPORT  # ... from this many trials on (with fewer, the doubt is its prior)


class LawSampler(BaseSampler):
    """An Optuna sampler guided by a scaling law's prediction at a target scale.

    ``optuna.create_study(sampler=LawSampler(law, space, scale={"N": 1e9, "D": 2e10}, seed=0))``

    Args:
        law: the fitted law (None: no prior, the bowl is searched over the declared ranges).
        space: the search space; its governed hyperparameters are the ones modelled.
        scale: the target scale, e.g. ``{"N": 1e9, "D": 2e10}``.
        coverage: the interval ``predictions`` and ``recommendation`` report.
        seed: makes the proposals reproducible.
        base_sampler: samples the other (free) parameters; multivariate TPE by default.
        noise: the metric's relative sd from run to run, as a prior; default: the space's
            ``noise``, else estimated from the trials (a prior flat up to 2%: declare it where
            known, since a wrong law's cliff can pass for noise; docs/search.md).
        explore_every: every k-th trial (k - 1, 2k - 1, ...) is drawn anywhere in the declared
            ranges, in case the law is wrong where the trials cannot tell (None: never).

    The first trial is the law's prediction (user attribute ``law_center``; a sweep never
    stops it early).
    """

    def __init__(self, law: ScalingLaw | None, space: SearchSpace | None,
                 scale: dict[str, float], *, coverage: float = 0.9, seed: int | None = None,
                 base_sampler: BaseSampler | None = None, n_startup_trials: int = 4,
                 noise: float | None = None, explore_every: int | None = EXPLORE_EVERY) -> None:
        if law is not None and space is not None:
            space.check_law(law)
        fitted = law is not None and any(t.fitted for t in law.terms.values())
        governed = list(space.governed) if space is not None else (
            list(law.terms) if law is not None else [])
        self._names = governed
        self._preds: dict[str, Prediction] = {}
        self._vertex: dict[str, Prediction] = {}
        if fitted:
            self._preds = {k: v for k, v in law.predict(scale, coverage, observed=True).items()
                           if k in governed}
            self._vertex = {k: v for k, v in law.predict(scale, coverage).items()
                            if k in governed}
        self._shape = pooled_shape(law.optima) if law is not None else None
        # how the optimum moves with the budget (the scale variable a trial's steps count up
        # to): the law's exponent of it, per governed hyperparameter
        self._budget = None
        self._exponents: dict[str, tuple[float, float]] = {}  # (exponent, its sd)
        budget = getattr(space, "budget", None) if space is not None else None
        if fitted and budget and budget in scale:
            self._budget = float(scale[budget])
            self._exponents = {n: e for n, e in law.budget_exponents(budget).items()
                               if n in governed}
        # a declared noise (measured for the space) is a prior; without one the trials'
        # residuals estimate it (a law fitted from cleaner data would mislead)
        if noise is None and space is not None:
            noise = space.noise
        self._noise = noise
        self._coverage = coverage
        self._explore = explore_every
        self._seed = int(seed) if seed is not None else _fresh_seed()
        self._base = base_sampler or TPESampler(
            seed=seed, multivariate=True, n_startup_trials=n_startup_trials)
        self._proposals: dict[int, dict[str, Any]] = {}

    @property
    def predictions(self) -> dict[str, Prediction]:
        """The law's prediction for an observed optimum at the target scale, per hyperparameter."""
        return dict(self._preds)

    def reseed_rng(self) -> None:
        self._seed = _fresh_seed()
        self._base.reseed_rng()

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._proposals.pop(trial.number, None)
        self._base.after_trial(study, trial, state, values)

    def infer_relative_search_space(self, study: Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        mine = {n: d for n, d in search_space.items() if self._models(n, d)}
        others = {n: d for n, d in search_space.items() if n not in mine}
        out = self._base.sample_relative(study, trial, others) if others else {}
        if mine:
            out.update(self._propose(study, trial, mine))
        return out

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if not self._models(param_name, param_distribution):
            return self._base.sample_independent(study, trial, param_name, param_distribution)
        return self._propose(study, trial, {param_name: param_distribution})[param_name]

    # the model ------------------------------------------------------------------------------
    def posterior(self, study: Study, distributions: dict[str, BaseDistribution] | None = None,
                  stopped: bool = True) -> tuple[list[str], Bowl] | None:
        """The bowl at the target scale fitted to ``study``'s trials, with the law's prediction
        as the vertex prior: (its hyperparameter names, the bowl), or None when the study has
        no governed hyperparameter to model. Coordinates are log values.

        Completed trials count at full length. Where the space has a budget (a scale variable
        such as D that a trial's steps count up to) and the law knows how the optimum moves
        with it, a pruned trial counts too, at the step it reached: a run of f of the budget
        is like a full run at that scale, whose optimum the law puts at
        ``optimum * (f / budget) ** exponent``, so its coordinates are moved by the law's
        exponent to the full budget, and its rung (``rung_groups``) gets an offset of its own.
        The move is as unsure as the exponent: the further a rung is from the full budget, the
        less it says about where the full run's optimum is (``fit_bowl``'s ``shift``).
        ``stopped=False`` leaves pruned trials out: the answer's model (see ``recommend``).
        """
        trials = _completed(study)
        if distributions is None:
            distributions = _declared(study, self._names)
        names = [n for n in self._names if n in distributions
                 and self._models(n, distributions[n])]
        if not names:
            return None
        low = np.array([_log(distributions[n].low, -math.inf) for n in names])
        high = np.array([_log(distributions[n].high, math.inf) for n in names])
        rows = [t for t in trials if all(n in t.params for n in names)]
        z = np.log([[float(t.params[n]) for n in names] for t in rows]).reshape(len(rows),
                                                                              len(names))
        sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
        y = np.array([sign * float(t.value) for t in rows])
        group = np.zeros(len(rows), dtype=int)
        shift = np.zeros(len(rows))
        exps, sds = np.array([self._exponents.get(n, (0.0, 0.0)) for n in names]).T
        shorter = self._shorter(study, names) if stopped else None
        if shorter is not None:
            z2, y2, steps = shorter
            moved = np.log(self._budget / steps)  # in log budget, to the full one
            z = np.vstack([z, z2 + moved[:, None] * exps[None, :]])
            y = np.concatenate([y, sign * y2])
            group = np.concatenate([group, rung_groups(steps.tolist())])
            shift = np.concatenate([shift, moved])
        vertex, vertex_cov = self._vertex_prior(names)
        shape = self._shape.prior(names) if self._shape is not None else BowlPrior()
        prior = replace(shape, vertex=vertex, vertex_cov=vertex_cov, noise=self._noise,
                        noise_sd=DECLARED_NOISE_SD, transport_cov=np.diag(sds**2))
        return names, fit_bowl(z, y, low, high, prior, seed=[self._seed, len(rows)],
                               group=group, shift=shift)

    def _shorter(self, study: Study, names: list[str]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Pruned trials at their last step: (log coordinates as tried, values, steps), or
        None when they cannot count (no budget, or no law of how the optimum moves with it)."""
        if not self._budget or not self._exponents:
            return None
        pts, vals, steps = [], [], []
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
            if not t.intermediate_values or not all(n in t.params for n in names):
                continue
            step = max(t.intermediate_values)
            value = t.intermediate_values[step]
            if not (0 < step < self._budget * (1 - 1e-9)) or not math.isfinite(value):
                continue
            pts.append([math.log(float(t.params[n])) for n in names])
            vals.append(float(value))
            steps.append(float(step))
        if not pts:
            return None
        return np.array(pts), np.array(vals), np.array(steps)

    def recommend(self, study: Study) -> dict[str, Any]:
        """The estimated optimum: governed hyperparameters from the posterior (a configuration
        that may never have been tried), the others from the best completed trial.

        Its posterior counts completed trials only, as the refit does: stopped trials, moved
        to the full budget by the law's exponents, steer proposals, but where few trials
        complete they pulled the answer off (docs/search.md)."""
        return self._recommend(study, self.posterior(study, stopped=False))

    def _recommend(self, study: Study, fit: tuple[list[str], Bowl] | None) -> dict[str, Any]:
        best = _best(study)
        out = dict(best.params) if best is not None else {}
        if fit is not None:
            names, bowl = fit
            dists = _declared(study, names)
            out.update({n: _snap(math.exp(v), dists[n])
                        for n, v in zip(names, self._supported(names, bowl))})
        return out

    def _supported(self, names: list[str], bowl: Bowl) -> np.ndarray:
        """Once a few trials fit the bowl, the posterior mean's lowest point near them: an
        extrapolated vertex can sit where no trial looked, even where training diverges.
        With fewer, the bowl's center (mostly the law's prediction) unless a completed trial
        beats it for sure: two trials cannot place a vertex, but one may be far better."""
        if bowl.n_on < MIN_SUPPORT:
            return bowl.pick(bowl.center[None], bowl.tried) if len(bowl.tried) else bowl.center
        return bowl.lowest_within(*bowl.support)

    def recommendation(self, study: Study) -> dict[str, Any]:
        """``recommend`` with each governed hyperparameter's interval at ``coverage`` and the
        metric's estimated relative noise: ``{"params": {...}, "low": {...}, "high": {...},
        "coverage": ..., "noise": ...}`` (JSON-ready)."""
        fit = self.posterior(study, stopped=False)  # one fit for the answer and its intervals
        out: dict[str, Any] = {"params": self._recommend(study, fit), "low": {}, "high": {},
                               "coverage": self._coverage}
        if fit is not None:
            names, bowl = fit
            a = (1 - self._coverage) / 2
            for k, n in enumerate(names):
                lo, hi = np.clip(np.quantile(bowl.draws[:, k], [a, 1 - a]), bowl.low[k],
                                 bowl.high[k])
                out["low"][n], out["high"][n] = float(math.exp(lo)), float(math.exp(hi))
            out["noise"] = bowl.noise
        return out

    # proposals ------------------------------------------------------------------------------
    def _propose(self, study: Study, trial: FrozenTrial,
                 dists: dict[str, BaseDistribution]) -> dict[str, Any]:
        """Values for the governed parameters in ``dists``: the law's center for the first
        trial, else a Thompson sample of the vertex (cached per trial, so the parameters an
        objective asks for one at a time come from one draw)."""
        cached = self._proposals.get(trial.number, {})
        if all(n in cached for n in dists):
            return {n: cached[n] for n in dists}
        if self._vertex and _is_first(study, trial):
            # marked in the store: the sweep runs the law's own recommendation to full length
            mark_law_center(study, trial)
            values = {n: _snap(self._vertex[n].center, d) for n, d in dists.items()
                      if n in self._vertex}
        elif self._explore and trial.number % self._explore == self._explore - 1:
            values = {}  # a look anywhere in the declared ranges, in case the law is wrong
        else:
            every = {**_declared(study, self._names), **dists}
            fit = self.posterior(study, every)
            values = {}
            if fit is not None:
                names, bowl = fit
                rng = self._trial_rng(trial, 1)
                if self._vertex and rng.random() < bowl.doubt:
                    # the trials say the law is likely wrong: search the declared ranges
                    values = self._base_values(study, trial, dists)
                else:
                    point = (_informative(bowl, rng, _running(study, trial, names))
                             if self._vertex and _doubted(bowl)
                             else bowl.draw(1, rng)[0])
                    values = {n: _snap(math.exp(v), every[n]) for n, v in zip(names, point)}
        rng = self._trial_rng(trial, 2)
        values.update({n: self._draw_one(n, d, rng) for n, d in dists.items()
                       if n not in values})
        self._proposals.setdefault(trial.number, {}).update(values)
        return {n: values[n] for n in dists}

    def _base_values(self, study: Study, trial: FrozenTrial,
                     dists: dict[str, BaseDistribution]) -> dict[str, Any]:
        """The base sampler's values for the governed parameters, over their declared ranges."""
        if len(dists) > 1:
            out = self._base.sample_relative(study, trial, dists)
            if set(out) == set(dists):
                return out
        return {n: self._base.sample_independent(study, trial, n, d) for n, d in dists.items()}

    def _draw_one(self, name: str, dist: BaseDistribution, rng: np.random.Generator) -> Any:
        """A log-uniform draw inside ``dist`` (a governed parameter the model does not place)."""
        lo, hi = _log(dist.low, math.log(1e-12)), math.log(dist.high)
        return _snap(math.exp(rng.uniform(lo, hi)), dist)

    def _trial_rng(self, trial: FrozenTrial, stream: int) -> np.random.Generator:
        """Random numbers for one trial: the same for the same seed and trial, whoever asks
        (a worker, ``recommend``) and in whatever order."""
        return np.random.default_rng([self._seed, trial.number, stream])

    def _vertex_prior(self, names: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
        if not self._vertex or any(n not in self._vertex for n in names):
            return None, None
        center = np.array([math.log(self._vertex[n].center) for n in names])
        return center, np.diag([self._vertex[n].log_sd ** 2 for n in names])

    def _models(self, name: str, dist: BaseDistribution) -> bool:
        return (name in self._names and isinstance(dist, (FloatDistribution, IntDistribution))
                and dist.low < dist.high and dist.high > 0)


# helpers for users who keep their own sampler ------------------------------------------------
def narrowed_distributions(law: ScalingLaw | None, space: SearchSpace, scale: dict[str, float],
                           coverage: float = 0.9) -> dict[str, BaseDistribution]:
    """Optuna distributions for ``space``, governed ones narrowed to the law's interval."""
    return space.optuna_distributions(law, scale, coverage)


def enqueue_prediction(study: Study, law: ScalingLaw, space: SearchSpace,
                       scale: dict[str, float], extra: dict[str, Any] | None = None) -> dict:
    """Enqueue the law's predicted optimum (snapped to the space's bounds) as the next trial."""
    space.check_law(law)
    params = {}
    for name, pred in law.predict(scale).items():
        if name in space.governed:
            params[name] = _snap(pred.center, space.governed[name].optuna())
    params.update(extra or {})
    study.enqueue_trial(params, skip_if_exists=True)
    return params


def _informative(bowl: Bowl, rng: np.random.Generator, pending: np.ndarray) -> np.ndarray:
    """The proposal that buys most information about the vertex, once the trials doubt the
    law (``_doubted``): of the bowl's center, vertex draws and points about the center (no
    more than DESIGN_GAP noise sds up its walls), the one whose trial is expected to lower the
    answer's regret most (``Bowl.informative``). Thompson draws linger near a wrong prior;
    these reach the slopes that move the vertex."""
    d = len(bowl.center)
    axes = np.eye(d)
    pairs = [(axes[j] * a + axes[k] * b) / math.sqrt(2) for j in range(d)
             for k in range(j + 1, d) for a in (1, -1) for b in (1, -1)]
    dirs = np.vstack([axes, -axes, *pairs])
    around = (bowl.center + DESIGN_RADII[:, None, None] * dirs[None]).reshape(-1, d)
    around = around[bowl.value(around) - bowl.value(bowl.center)[0]
                    <= DESIGN_GAP * bowl.typical_noise]
    points = np.clip(np.vstack([bowl.center[None], bowl.draw(DESIGN_DRAWS, rng), around]),
                     bowl.low, bowl.high)
    return points[int(np.argmax(bowl.informative(points, pending)))]


def _doubted(bowl: Bowl) -> bool:
    """Whether the bowl's trials favour a wrong law over the prior's odds (a Bayes factor above
    DOUBT_FACTOR), once there are DOUBT_ONSET of them: after one or two trials the doubt hovers
    about its prior, so which side of it the doubt falls is chance."""
    if bowl.n < DOUBT_ONSET:
        return False
    prior = BROAD_WEIGHT / (1 - BROAD_WEIGHT)
    return bowl.doubt / max(1 - bowl.doubt, 1e-12) > DOUBT_FACTOR * prior


def _running(study: Study, trial: FrozenTrial, names: list[str]) -> np.ndarray:
    """Log coordinates of the other running trials (proposed, not yet reported)."""
    rows = [[math.log(float(t.params[n])) for n in names]
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number != trial.number and all(n in t.params for n in names)]
    return np.array(rows).reshape(len(rows), len(names))


def _fresh_seed() -> int:
    return int(np.random.SeedSequence().entropy % 2**32)


def _log(v: float, default: float) -> float:
    return math.log(v) if v > 0 else default


def _completed(study: Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]


def rung_groups(steps: Sequence[float]) -> list[int]:
    """Fidelity groups 1, 2, ... of stopped trials, one per rung: a trial stops at the first
    report past its rung, which overshoots by up to a report's worth of steps (more for a
    larger batch), so steps within RUNG_SPREAD of a group's smallest are one rung (ASHA's rungs
    are a reduction factor, 3 by default, apart)."""
    order = sorted(set(steps))
    first: dict[float, int] = {}
    k, start = 0, None
    for s in order:
        if start is None or s > start * RUNG_SPREAD:
            k, start = k + 1, s
        first[s] = k
    return [first[s] for s in steps]


def _declared(study: Study, names: list[str]) -> dict[str, BaseDistribution]:
    """The distributions the objective declared for ``names`` (the latest trial's)."""
    out: dict[str, BaseDistribution] = {}
    for t in reversed(study.get_trials(deepcopy=False)):
        for n, d in t.distributions.items():
            if n in names and n not in out:
                out[n] = d
        if len(out) == len(names):
            break
    return out


def _is_first(study: Study, trial: FrozenTrial) -> bool:
    others = study.get_trials(deepcopy=False, states=(
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL))
    return all(t.number == trial.number for t in others)


def _best(study: Study) -> FrozenTrial | None:
    done = _completed(study)
    if not done:
        return None
    sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
    return min(done, key=lambda t: sign * t.value)


def _snap(value: float, dist: BaseDistribution) -> float | int:
    """A value inside ``dist``: clipped, and on its integer/step grid."""
    v = min(max(value, dist.low), dist.high)
    if isinstance(dist, IntDistribution):
        return int(dist.low + round((v - dist.low) / dist.step) * dist.step)
    if dist.step is not None:
        return float(dist.low + round((v - dist.low) / dist.step) * dist.step)
    return float(v)
