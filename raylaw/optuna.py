"""Scaling-law priors for Optuna: the prior-aware sampler, narrowing helpers, laws from studies.

``LawSampler`` (``raylaw.sampler``) searches the law's prediction with a noise-aware model of
the landscape; users who keep their own sampler can narrow its distributions to the law's
interval or enqueue the law's prediction; studies with a recorded scale become a law's evidence.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import optuna
import pandas as pd
from optuna.distributions import BaseDistribution
from optuna.study import Study
from optuna.trial import TrialState

from raylaw.errors import RaylawError
from raylaw.law import Optimum, ScalingLaw
from raylaw.optimum import optima_pooled
from raylaw.sampler import LAW_CENTER_ATTR, LawSampler, _snap
from raylaw.space import SearchSpace

__all__ = ["LAW_CENTER_ATTR", "LawSampler", "enqueue_prediction", "law_from_studies",
           "narrowed_distributions", "optima_from_studies", "trials_frame"]

STATUS_ATTR = "raylaw_status"  # trial user attribute: completed / stopped / diverged / errored
SCALE_ATTR = "scale"  # study user attribute: {"N": ..., "D": ...}
SPACE_ATTR = "space"  # study user attribute: the search space's name


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
    groups = [(scales[key], pd.concat(frames, ignore_index=True))
              for key, frames in sorted(by_scale.items())]
    # a scale with no completed trial is no evidence
    return optima_pooled(groups, space, source="optuna", noise=space.noise, skip_empty=True)


def law_from_studies(storage: str | optuna.storages.BaseStorage, space: SearchSpace,
                     prior: str | None = "steplaw",
                     study_names: Iterable[str] | None = None) -> ScalingLaw:
    """Fit a law from Optuna studies (scale in study user attributes): sweeps become evidence."""
    optima = optima_from_studies(storage, space, study_names)
    if not optima and prior is None:
        raise RaylawError("no study with a recorded scale and completed trials to fit from")
    return ScalingLaw.for_space(space, prior=prior).fit(optima, source="optuna studies")
