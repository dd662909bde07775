"""What raylaw records in Optuna studies: every attribute's name and meaning, and the
functions that write and read them.

A sweep is one Optuna study. Optuna's own fields keep their meaning (params, state, value, and
the learning curve as intermediate values keyed by the fidelity); what raylaw adds is user
attributes, each declared here with a line saying what it means. ``attribute_table()`` renders
them as docs/store.md's table for optuna-dashboard users (a test keeps the two equal).

Where no public Optuna API does the job, a function below uses Optuna's private storage
handle; each says why, and tests/test_records.py fails when Optuna changes what it relies on.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.study import Study, StudySummary
from optuna.trial import FrozenTrial, TrialState

from raylaw.errors import RaylawError

if TYPE_CHECKING:
    from raylaw.space import SearchSpace

ATTRIBUTES: list[tuple[str, str, str]] = []  # (name, "trial" or "study", meaning), in order


def _attr(name: str, on: str, meaning: str) -> str:
    ATTRIBUTES.append((name, on, meaning))
    return name


# trial user attributes --------------------------------------------------------------------------
STATUS_ATTR = _attr(
    "raylaw_status", "trial", "`completed` (ran to the budget), `stopped` (ASHA stopped it "
    "early), `diverged` (its loss blew up; left out of the fit), `errored` (crashed, after "
    "`--max-failures` retries)")
FIDELITY_ATTR = _attr(
    "fidelity", "trial", "how far the trial got, in the space's fidelity units (e.g. tokens at "
    "its last report)")
SPENT_ATTR = _attr(
    "spent", "trial", "what the trial cost in those units, extra training included (the "
    "built-in LM's cooldowns at rungs: `tokens_spent`); the sweep summary's \"tokens trained\" "
    "adds these up")
DEVICE_ATTR = _attr("device", "trial", "where the trainable says it ran (`cpu`, `cuda`)")
RESOURCES_ATTR = _attr(
    "resources", "trial", "what the trial asked Ray for: `{\"cpu\": ..., \"gpu\": ...}`, per "
    "worker with `\"workers\": K` (`--workers-per-trial`)")
RAY_TRIAL_ATTR = _attr(
    "ray_trial_id", "trial", "its Ray Tune trial id: Tune's results folder for the sweep has a "
    "folder per trial named after it (logs, `error.txt`, checkpoints)")
RAN_ATTR = _attr(
    "ran", "trial", "when it ran: `[start, end]`, seconds since the epoch (Ray Tune's clock)")
LAW_CENTER_ATTR = _attr(
    "law_center", "trial", "`true` on the trial that ran the law's predicted optimum; it is "
    "never stopped early (the law's own evidence at this scale)")

# study user attributes --------------------------------------------------------------------------
SCALE_ATTR = _attr(
    "scale", "study", "the target scale, e.g. `{\"N\": 100000.0, \"D\": 2000000.0}`; "
    "`law_from_studies` groups studies by it")
SPACE_ATTR = _attr(
    "space", "study", "the search space's name; refits use only the studies of their space")
STATE_ATTR = _attr(
    "raylaw_sweep", "study", "`running` or `finished`; `--resume` continues the last `running` "
    "sweep at that scale")
CREATED_ATTR = _attr("created", "study", "when the sweep started (UTC, ISO 8601)")
FIXED_ATTR = _attr(
    "fixed", "study", "hyperparameters held with `--config NAME=VALUE`: every trial ran with "
    "them, so they are not among the trials' params")
RECOMMENDED_ATTR = _attr(
    "recommended", "study", "the sweep's answer: the estimated optimum of the governed "
    "hyperparameters with its interval")

STATUSES = ("completed", "stopped", "diverged", "errored")  # the values of STATUS_ATTR


def attribute_table() -> str:
    """docs/store.md's table of raylaw's user attributes (Markdown)."""
    rows = ["| attribute | on | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{name}` | {on} | {meaning} |" for name, on, meaning in ATTRIBUTES]
    return "\n".join(rows)


# a sweep's study ------------------------------------------------------------------------------
def scale_key(scale: dict[str, float]) -> str:
    """A scale as text, the same for equal scales: ``D=2e+06,N=100000``."""
    return ",".join(f"{k}={v:.6g}" for k, v in sorted(scale.items()))


def sweep_studies(storage: BaseStorage, space_name: str,
                  scale: dict[str, float] | None = None) -> list[StudySummary]:
    """Summaries of the sweeps of a space (optionally at one scale), oldest first."""
    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if s.user_attrs.get(SPACE_ATTR) != space_name:
            continue
        if scale is not None and scale_key(s.user_attrs.get(SCALE_ATTR, {})) != scale_key(scale):
            continue
        out.append(s)
    return sorted(out, key=_creation_order)


def create_sweep(storage: BaseStorage, space: SearchSpace, scale: dict[str, float], mode: str,
                 sampler: optuna.samplers.BaseSampler, resume: bool,
                 name: str | None = None) -> tuple[Study, bool]:
    """The study for this sweep: a new one, or with ``resume`` the last unfinished one.

    Returns (study, resumed).
    """
    if resume:
        previous = [s for s in sweep_studies(storage, space.name, scale)
                    if s.user_attrs.get(STATE_ATTR) != "finished"]
        if name is not None:
            previous = [s for s in previous if s.study_name == name]
        if previous:
            study = optuna.load_study(study_name=previous[-1].study_name, storage=storage,
                                      sampler=sampler)
            return study, True
    direction = "minimize" if mode == "min" else "maximize"
    n = len(sweep_studies(storage, space.name, scale)) + 1
    for attempt in range(20):
        try:
            study = optuna.create_study(
                study_name=name or f"{space.name}[{scale_key(scale)}]#{n + attempt}",
                storage=storage, sampler=sampler, direction=direction)
            break
        except optuna.exceptions.DuplicatedStudyError:
            if name is not None:
                raise RaylawError(f"--study {name}: a sweep of that name exists in the store "
                                  "(use --resume to continue it, or another name)") from None
            # another driver started a sweep at this scale at the same time: take the next number
    else:
        raise RaylawError(f"no free name for a new sweep at {scale_key(scale)} (tried 20)")
    study.set_user_attr(SPACE_ATTR, space.name)
    study.set_user_attr(SCALE_ATTR, dict(scale))
    study.set_user_attr(STATE_ATTR, "running")
    study.set_user_attr(CREATED_ATTR,
                        _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return study, False


def finish_sweep(study: Study) -> None:
    study.set_user_attr(STATE_ATTR, "finished")


def record_fixed(study: Study, fixed: dict[str, Any]) -> None:
    """The free hyperparameters held for every trial (so they are not in ``trial.params``)."""
    if fixed:
        study.set_user_attr(FIXED_ATTR, fixed)


def fixed_params(study: Study) -> dict[str, Any]:
    return dict(study.user_attrs.get(FIXED_ATTR, {}))


def record_recommended(study: Study, recommended: dict[str, Any]) -> None:
    study.set_user_attr(RECOMMENDED_ATTR, recommended)


def study_scale(study: Study | StudySummary, space: SearchSpace) -> dict[str, float] | None:
    """The scale a study ran at, from its user attributes (``scale`` or one per variable)."""
    attrs = study.user_attrs
    raw = attrs.get(SCALE_ATTR)
    if not isinstance(raw, dict):
        raw = {k: attrs[k] for k in space.scale if k in attrs}
    if set(raw) != set(space.scale):
        return None
    return space.check_scale(raw, where=f"study '{study.study_name}' user attribute 'scale'")


def of_space(study: Study | StudySummary, space: SearchSpace) -> bool:
    """Whether a study may be evidence for ``space``: it names that space, or none."""
    return study.user_attrs.get(SPACE_ATTR, space.name) == space.name


# a sweep's trials -------------------------------------------------------------------------------
def record_start(trial: optuna.Trial, ray_trial_id: str,
                 resources: dict[str, float] | None) -> None:
    """What a trial is known by when Ray Tune starts it."""
    trial.set_user_attr(RAY_TRIAL_ATTR, ray_trial_id)
    if resources:
        trial.set_user_attr(RESOURCES_ATTR, resources)


def record_end(trial: optuna.Trial, status: str, result: dict[str, Any] | None,
               fidelity: str | None) -> None:
    """What a finished trial's last result says: its status, how far it got and what that
    cost (a trainable reports ``<fidelity>_spent`` when it trained more than its fidelity
    says), where it ran, and when (Tune's ``timestamp`` and ``time_total_s``)."""
    trial.set_user_attr(STATUS_ATTR, status)
    result = result or {}
    if fidelity and result.get(fidelity) is not None:
        trial.set_user_attr(FIDELITY_ATTR, float(result[fidelity]))
        spent = result.get(f"{fidelity}_spent")
        if isinstance(spent, (int, float)):
            trial.set_user_attr(SPENT_ATTR, float(spent))
    if isinstance(result.get("device"), str):
        trial.set_user_attr(DEVICE_ATTR, result["device"])
    end, took = result.get("timestamp"), result.get("time_total_s")
    if isinstance(end, (int, float)) and isinstance(took, (int, float)):
        trial.set_user_attr(RAN_ATTR, [end - took, float(end)])


def ray_trial_id(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get(RAY_TRIAL_ATTR)


def recorded_status(trial: FrozenTrial) -> str | None:
    """The status raylaw recorded when the trial finished (None: not finished under raylaw)."""
    return trial.user_attrs.get(STATUS_ATTR)


def status(trial: FrozenTrial) -> str:
    """A finished trial's status; for a trial raylaw did not record, from its Optuna state."""
    recorded = recorded_status(trial)
    if recorded is not None:
        return recorded
    return {TrialState.COMPLETE: "completed", TrialState.PRUNED: "stopped",
            TrialState.FAIL: "errored"}[trial.state]


def is_law_center(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(LAW_CENTER_ATTR))


def marked_law_center(study: Study, trial: optuna.Trial) -> bool:
    """Whether the sampler marked ``trial`` (just asked, so running) as the law's prediction:
    read from the storage, as the ``Trial``'s own ``user_attrs`` are a copy taken before."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return any(t.number == trial.number and is_law_center(t) for t in running)


def trials_frame(study: Study) -> pd.DataFrame:
    """A study's finished trials as rows: params, ``value``, ``status``, the fidelity reached
    (``step``, ``fidelity``) and what the trial cost in its units (``spent``)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING or t.state == TrialState.WAITING:
            continue
        steps = t.intermediate_values
        step = max(steps) if steps else None
        fidelity = t.user_attrs.get(FIDELITY_ATTR)
        spent = t.user_attrs.get(SPENT_ATTR, fidelity if fidelity is not None else step)
        rows.append({**t.params, "value": t.value, "status": status(t), "number": t.number,
                     "step": step, "fidelity": fidelity, "spent": spent})
    return pd.DataFrame(rows)


def most_at_once(trials: list[FrozenTrial]) -> int:
    """The most trials that ran at one instant, from their ``ran`` = [start, end] attributes."""
    events = sorted((t, step) for tr in trials if RAN_ATTR in tr.user_attrs
                    for t, step in ((tr.user_attrs[RAN_ATTR][0], 1),
                                    (tr.user_attrs[RAN_ATTR][1], -1)))
    now = best = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start (+1)
        now += step
        best = max(best, now)
    return best


# Optuna internals: no public API does these -----------------------------------------------------
def mark_law_center(study: Study, trial: FrozenTrial) -> None:
    """Mark ``trial`` as the law's prediction from inside a sampler, which gets a read-only
    ``FrozenTrial``: Optuna offers samplers no public way to set a user attribute, so it goes
    to the study's storage by the trial's storage id."""
    study._storage.set_trial_user_attr(trial._trial_id, LAW_CENTER_ATTR, True)


def set_curve_point(study: Study, trial: optuna.Trial, step: int, value: float) -> None:
    """The learning curve's value at ``step``, replacing an earlier one: ``Trial.report``
    keeps a step's first value, and a retried trial's later run must replace it."""
    study._storage.set_trial_intermediate_value(trial._trial_id, step, value)


def reopen(study: Study, trial: FrozenTrial,
           distributions: dict[str, BaseDistribution]) -> optuna.Trial:
    """A running trial of an interrupted sweep as a live ``Trial``, every parameter set, so it
    can run again as the same record. Optuna's ``study.ask`` only makes new trials; a
    ``Trial`` built from the storage id is what ``ask`` itself returns, and its ``_suggest``
    is what ``ask(fixed_distributions)`` calls (a driver killed mid-ask left some unset)."""
    live = optuna.Trial(study, trial._trial_id)
    for name, dist in distributions.items():
        live._suggest(name, dist)  # a parameter already set keeps its value
    return live


def _creation_order(summary: StudySummary) -> int:
    """A study's place in the order the store created them: its storage id (Optuna's study
    summaries have no public creation time, and ``created`` is to the second)."""
    return summary._study_id
