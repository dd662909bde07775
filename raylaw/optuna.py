"""Scaling-law priors for Optuna: a prior-aware sampler, narrowing helpers, and laws from studies.

``LawSampler`` proposes the law's predicted optimum first, then runs a model-based sampler
(multivariate TPE by default) inside a window that starts as the law's interval and grows
toward an edge whenever the best trial sits there, so a wrong law still reaches the optimum
inside the objective's declared range. The window is recomputed from the study's trials, so
the sampler keeps no state of its own and works with several workers sharing an RDB storage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from raylaw.errors import RaylawError
from raylaw.law import Optimum, ScalingLaw
from raylaw.optimum import extract_optimum
from raylaw.space import SearchSpace

STATUS_ATTR = "raylaw_status"  # trial user attribute: completed / stopped / diverged / errored
SCALE_ATTR = "scale"  # study user attribute: {"N": ..., "D": ...}
SPACE_ATTR = "space"  # study user attribute: the search space's name
LAW_CENTER_ATTR = "law_center"  # trial user attribute: the trial is the law's prediction


class LawSampler(BaseSampler):
    """An Optuna sampler guided by a scaling law's prediction at a target scale.

    ``optuna.create_study(sampler=LawSampler(law, space, scale={"N": 1e9, "D": 2e10}, seed=0))``

    Governed hyperparameters (those the law predicts) get law-guided values inside whatever
    distribution the objective declares; every other parameter is left to ``base_sampler``.
    The window grows by its span on both sides after ``patience`` completed trials without a
    new best (pruned trials do not count: they could not have become the best). The first
    trial, the law's prediction, gets user attribute ``law_center`` (a sweep never stops it).
    """

    def __init__(self, law: ScalingLaw | None, space: SearchSpace | None,
                 scale: dict[str, float], *, coverage: float = 0.9, seed: int | None = None,
                 base_sampler: BaseSampler | None = None, n_startup_trials: int = 4,
                 edge: float = 0.2, patience: int = 12) -> None:
        self._preds = law.predict(scale, coverage, observed=True) if law is not None else {}
        if space is not None:
            self._preds = {k: v for k, v in self._preds.items() if k in space.governed}
        self._edge = edge
        self._patience = patience
        self._n_startup = n_startup_trials
        self._rng = np.random.RandomState(seed)
        self._base = base_sampler or TPESampler(
            seed=seed, multivariate=True, n_startup_trials=n_startup_trials)

    @property
    def predictions(self) -> dict[str, Any]:
        return dict(self._preds)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._base.reseed_rng()

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._base.after_trial(study, trial, state, values)

    def infer_relative_search_space(self, study: Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space or self._is_first(study, trial):
            return {}  # first trial: sample_independent proposes the law's center
        narrowed = {n: self._window(study, trial, n, d) for n, d in search_space.items()}
        # a window of one value is no choice: sample_independent returns it
        narrowed = {n: d for n, d in narrowed.items() if not d.single()}
        return self._base.sample_relative(study, trial, narrowed)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        pred = self._preds.get(param_name)
        if pred is not None and _numeric(param_distribution) and self._is_first(study, trial):
            # marked in the store: the sweep runs the law's own recommendation to full length
            study._storage.set_trial_user_attr(trial._trial_id, LAW_CENTER_ATTR, True)
            return _snap(pred.center, param_distribution)
        dist = self._window(study, trial, param_name, param_distribution)
        if dist.single():
            return dist.low
        if pred is not None and _numeric(dist) and self._in_startup(study):
            return self._sample_near_center(pred, dist, param_distribution)
        return self._base.sample_independent(study, trial, param_name, dist)

    def _in_startup(self, study: Study) -> bool:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        return len(done) < self._n_startup

    def _sample_near_center(self, pred: Any, dist: BaseDistribution,
                            declared: BaseDistribution) -> float | int:
        """Startup draws: the law's predictive distribution (log space) inside the window
        ``dist``; a draw beyond a bound the objective ``declared`` lands on that bound (the
        optimum may lie past it: the best value there is the bound), not redrawn."""
        to, back = _warp(dist)
        lo, hi = to(dist.low), to(dist.high)
        lo_d, hi_d = to(declared.low), to(declared.high)
        center = to(pred.center)
        sd = pred.log_sd if dist.log else pred.log_sd * pred.center
        for _ in range(64):
            v = min(max(self._rng.normal(center, max(sd, 1e-12)), lo_d), hi_d)
            if lo <= v <= hi:
                return _snap(back(v), dist)
        return _snap(back(self._rng.uniform(lo, hi)), dist)

    # the window ---------------------------------------------------------------------------
    def _is_first(self, study: Study, trial: FrozenTrial) -> bool:
        others = study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL))
        return all(t.number == trial.number for t in others)

    def _window(self, study: Study, trial: FrozenTrial, name: str,
                dist: BaseDistribution) -> BaseDistribution:
        """The law's interval inside ``dist``, grown to cover past values and edge-sitting bests."""
        pred = self._preds.get(name)
        if pred is None or not _numeric(dist):
            return dist
        to, back = _warp(dist)
        lo_d, hi_d = to(dist.low), to(dist.high)
        lo, hi = _clip(to(pred.low), to(pred.high), lo_d, hi_d)
        width = hi - lo
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        trials = [t for t in study.get_trials(deepcopy=False, states=states)
                  if t.number != trial.number and name in t.params]
        seen = [to(t.params[name]) for t in trials]
        if seen:  # past values stay inside, so the model's observations do too
            lo, hi = min(lo, *seen), max(hi, *seen)
        best = _best(study, trials)
        if best is not None:  # the best sits at an edge: grow that side by the window's span
            v = to(best.params[name])
            span = max(hi - lo, width)
            if v >= hi - self._edge * span:
                hi = v + span
            if v <= lo + self._edge * span:
                lo = v - span
            # only completed trials could have beaten the best: under ASHA most trials are
            # pruned, and counting them widened the window after a dozen early stops
            stalled = sum(t.number > best.number and t.state == TrialState.COMPLETE
                          for t in trials)
            if stalled >= self._patience:  # no progress inside the window: look wider
                lo, hi = lo - span, hi + span
        lo, hi = max(lo, lo_d), min(hi, hi_d)
        if isinstance(dist, IntDistribution):  # the values the window's ends round to
            return IntDistribution(_snap(back(lo), dist), _snap(back(hi), dist), log=dist.log,
                                   step=dist.step)
        if dist.step is not None:
            return dist  # discretized floats keep their declared grid
        return FloatDistribution(back(lo), back(hi), log=dist.log)


def _numeric(dist: BaseDistribution) -> bool:
    return isinstance(dist, (FloatDistribution, IntDistribution)) and dist.low < dist.high


def _warp(dist: BaseDistribution) -> tuple[Any, Any]:
    """Maps to and from the space the window lives in: log for log-scaled, else linear."""
    if dist.log:
        return math.log, math.exp
    return float, float


def _clip(lo: float, hi: float, lo_d: float, hi_d: float) -> tuple[float, float]:
    """Clip [lo, hi] into [lo_d, hi_d]; an interval outside keeps its width at the near edge."""
    width = min(hi - lo, hi_d - lo_d)
    if hi <= lo_d:
        return lo_d, lo_d + width
    if lo >= hi_d:
        return hi_d - width, hi_d
    return max(lo, lo_d), min(hi, hi_d)


def _snap(value: float, dist: BaseDistribution) -> float | int:
    """A value inside ``dist``: clipped, and on its integer/step grid."""
    v = min(max(value, dist.low), dist.high)
    if isinstance(dist, IntDistribution):
        return int(dist.low + round((v - dist.low) / dist.step) * dist.step)
    if dist.step is not None:
        return float(dist.low + round((v - dist.low) / dist.step) * dist.step)
    return float(v)


def _best(study: Study, trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value)]
    if not done:
        return None
    sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
    return min(done, key=lambda t: sign * t.value)


# helpers for users who keep their own sampler ------------------------------------------------
def narrowed_distributions(law: ScalingLaw | None, space: SearchSpace, scale: dict[str, float],
                           coverage: float = 0.9) -> dict[str, BaseDistribution]:
    """Optuna distributions for ``space``, governed ones narrowed to the law's interval."""
    return space.optuna_distributions(law, scale, coverage)


def enqueue_prediction(study: Study, law: ScalingLaw, space: SearchSpace,
                       scale: dict[str, float], extra: dict[str, Any] | None = None) -> dict:
    """Enqueue the law's predicted optimum (snapped to the space's bounds) as the next trial."""
    params = {}
    for name, pred in law.predict(scale).items():
        if name in space.governed:
            params[name] = _snap(pred.center, space.governed[name].optuna())
    params.update(extra or {})
    study.enqueue_trial(params, skip_if_exists=True)
    return params


# laws from existing studies ----------------------------------------------------------------
def trials_frame(study: Study) -> pd.DataFrame:
    """A study's finished trials as rows: params, ``value``, ``status``, the fidelity reached
    (``step``, ``fidelity``) and what the trial cost in its units (``spent``)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING or t.state == TrialState.WAITING:
            continue
        status = t.user_attrs.get(STATUS_ATTR)
        if status is None:
            status = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "stopped",
                      TrialState.FAIL: "errored"}[t.state]
        steps = t.intermediate_values
        step = max(steps) if steps else None
        fidelity = t.user_attrs.get("fidelity")
        spent = t.user_attrs.get("spent", fidelity if fidelity is not None else step)
        rows.append({**t.params, "value": t.value, "status": status, "number": t.number,
                     "step": step, "fidelity": fidelity, "spent": spent})
    return pd.DataFrame(rows)


def study_scale(study: Study | optuna.study.StudySummary, space: SearchSpace) -> dict | None:
    """The scale a study ran at, from its user attributes (``scale`` or one per variable)."""
    attrs = study.user_attrs
    raw = attrs.get(SCALE_ATTR)
    if not isinstance(raw, dict):
        raw = {k: attrs[k] for k in space.scale if k in attrs}
    if set(raw) != set(space.scale):
        return None
    return space.check_scale(raw, where=f"study '{study.study_name}' user attribute 'scale'")


def optima_from_studies(storage: str | optuna.storages.BaseStorage, space: SearchSpace,
                        study_names: Iterable[str] | None = None) -> list[Optimum]:
    """One optimum per scale from the studies in ``storage`` whose scale is recorded.

    Studies recorded at the same scale are pooled; studies whose ``space`` attribute names
    another search space, or with no scale, are skipped.
    """
    if isinstance(storage, str):  # as --store: postgresql:// is psycopg 3, one-line errors
        from raylaw.store import open_store

        storage = open_store(storage)
    names = list(study_names) if study_names is not None else [
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    by_scale: dict[tuple, list[pd.DataFrame]] = {}
    scales: dict[tuple, dict[str, float]] = {}
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        if study.user_attrs.get(SPACE_ATTR, space.name) != space.name:
            continue
        scale = study_scale(study, space)
        if scale is None:
            continue
        df = trials_frame(study)
        if df.empty or not set(space.governed) & set(df.columns):
            continue
        key = tuple(sorted(scale.items()))
        scales[key] = scale
        by_scale.setdefault(key, []).append(df.rename(columns={"value": space.metric}))
    out = []
    for key, frames in sorted(by_scale.items()):
        df = pd.concat(frames, ignore_index=True)
        try:
            out.append(extract_optimum(df, space, scales[key], source="optuna"))
        except RaylawError:
            continue  # a scale with no completed trial is no evidence
    return out


def law_from_studies(storage: str | optuna.storages.BaseStorage, space: SearchSpace,
                     prior: str | None = "steplaw",
                     study_names: Iterable[str] | None = None) -> ScalingLaw:
    """Fit a law from Optuna studies (scale in study user attributes): sweeps become evidence."""
    optima = optima_from_studies(storage, space, study_names)
    if not optima and prior is None:
        raise RaylawError("no study with a recorded scale and completed trials to fit from")
    return ScalingLaw.for_space(space, prior=prior).fit(optima, source="optuna studies")
