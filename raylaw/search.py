"""A Ray Tune searcher that drives an Optuna study (ask/tell) and records every trial in it.

Unlike Ray's own ``OptunaSearch``, a trial that ASHA stopped early is told to Optuna as
PRUNED (its learning curve is in the intermediate values, keyed by fidelity), never as
COMPLETE with a low-fidelity value; a diverged trial is FAIL with status ``diverged``; a
crashed one FAIL with status ``errored``. The study's storage is the durable store: each
result is written as it arrives, so a crash of the driver loses no finished trial. What each
trial records besides (its Tune id, resources, status, fidelity reached, cost, device, when it
ran) is listed in ``raylaw.records``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from raylaw import records
from raylaw.records import RAY_TRIAL_ATTR  # noqa: F401 - importable from here, as before


def trial_status(result: dict[str, Any] | None, error: bool, metric: str,
                 fidelity: str | None, budget: float | None) -> str:
    """completed / stopped / diverged / errored, from a trial's last result."""
    if error:
        return "errored"
    if not result or metric not in result:
        return "errored"
    value = result[metric]
    if result.get("diverged") or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "diverged"
    if fidelity is None or budget is None:
        return "completed"
    reached = result.get(fidelity)
    return "completed" if reached is not None and reached >= budget * (1 - 1e-9) else "stopped"


class LawSearch(Searcher):
    """Suggest configs from ``study``'s sampler over fixed distributions; tell results back.

    ``constants`` (e.g. ``{"scale": {...}}``) are merged into every config. Trials already
    in the study but never finished (a crashed driver) are suggested again first, as the same
    Optuna trial, so a resumed sweep runs each of them once more and records it once; when
    ``experiment_dir`` (Tune's folder of this sweep) still holds the last checkpoint of its
    earlier run, its config gets ``restore_from``, that checkpoint's directory. The Tune id of
    the trial that runs the law's prediction is added to ``keep`` (``LawASHA.keep``).

    A step of a learning curve holds the value of the latest run that reported it: a retried
    trial (restored by Tune from its last checkpoint) or a rerun one repeats the steps after
    that checkpoint, and their values replace the earlier run's, so the stored curve is the
    one lineage of the model that finished.

    Args:
        study: the sweep's study; its sampler suggests, and every result is written to it.
        distributions: the parameters' Optuna distributions.
        metric: the result key of the metric.
        mode: "min" or "max".
        constants: merged into every config.
        fidelity: the result key of a trial's progress (e.g. "tokens"; None: iterations).
        budget: the fidelity of a full-length trial (None: every trial is full-length).
        resources: what each trial asked Ray for, recorded with it.
        keep: the set the law's trial's Tune id is added to (``LawASHA.keep``).
        experiment_dir: Tune's folder of this sweep, where a rerun trial's checkpoint is.
    """

    def __init__(self, study: optuna.Study, distributions: dict[str, BaseDistribution],
                 metric: str, mode: str, constants: dict[str, Any] | None = None,
                 fidelity: str | None = None, budget: float | None = None,
                 resources: dict[str, float] | None = None,
                 keep: set[str] | None = None, experiment_dir: str | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        self.study = study
        self.distributions = distributions
        self.constants = dict(constants or {})
        self.fidelity = fidelity
        self.budget = budget
        self.resources = dict(resources or {})
        self.keep = keep if keep is not None else set()
        self._live: dict[str, optuna.Trial] = {}
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self.experiment_dir = experiment_dir
        self._last: dict[int, tuple[int, float]] = {}  # the point written last, per trial number
        self._rerun = list(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        self.counts = dict.fromkeys(records.STATUSES, 0)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        extra = {}
        if self._rerun:  # an unfinished trial of an interrupted sweep: run it again, same record
            before = self._rerun.pop(0)
            trial = records.reopen(self.study, before, self.distributions)
            restore = last_checkpoint(self.experiment_dir, records.ray_trial_id(before))
            extra = {"restore_from": restore} if restore else {}
        else:
            trial = self.study.ask(self.distributions)
        records.record_start(trial, trial_id, self.resources)
        self.numbers[trial_id] = trial.number
        if records.marked_law_center(self.study, trial):
            self.keep.add(trial_id)
        self._live[trial_id] = trial
        return {**trial.params, **self.constants, **extra}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study in the store is this searcher's whole state."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: a resumed sweep reloads its study from the store."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        trial = self._live.get(trial_id)
        if trial is not None:
            self._report(trial, result)

    def _report(self, trial: optuna.Trial, result: dict[str, Any]) -> None:
        """Add one point of the learning curve (finite, not diverged) to the trial."""
        value = result.get(self.metric)
        if result.get("diverged") or not isinstance(value, (int, float)):
            return
        if not math.isfinite(value):
            return
        step = result.get(self.fidelity) if self.fidelity else None
        if step is None:
            step = result.get("training_iteration", 0)
        point = (int(step), float(value))
        if self._last.get(trial.number) != point:  # the last result comes again at the end
            self._last[trial.number] = point
            records.set_curve_point(self.study, trial, *point)  # a later run's replaces it

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        trial = self._live.pop(trial_id, None)
        if trial is None:
            return
        if result:  # Tune hands the last result (where ASHA stopped it) only to this hook
            self._report(trial, result)
        self._last.pop(trial.number, None)
        status = trial_status(result, error, self.metric, self.fidelity, self.budget)
        self.counts[status] += 1
        records.record_end(trial, status, result, self.fidelity)
        if status == "completed":
            self.study.tell(trial, float(result[self.metric]))
        elif status == "stopped":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)


def last_checkpoint(experiment_dir: str | None, tune_trial_id: str | None) -> str | None:
    """The newest ``checkpoint_*`` directory of a Tune trial under ``experiment_dir``, if any.

    Tune names a trial's folder ``<trainable>_<trial id>_<n>_<params>_<date>``."""
    if not experiment_dir or not tune_trial_id or not Path(experiment_dir).is_dir():
        return None
    found = sorted(Path(experiment_dir).glob(f"*_{tune_trial_id}_*/checkpoint_*"),
                   key=lambda p: p.name)
    return str(found[-1]) if found else None
