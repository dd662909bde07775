"""ASHA that never stops the law's own recommendation: every sweep trains it to full length."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import ASHAScheduler

if TYPE_CHECKING:
    import optuna


class LawASHA(ASHAScheduler):
    """Ray's ASHA, except that the trials in ``keep`` (Tune trial ids) are never stopped early.

    ``LawSearch`` adds the trial that runs the law's predicted optimum: its full-length result
    is the law's own evidence at this scale, and a sweep is never worse than following the law.
    Its results still enter the rungs, so the other trials are compared against it.

    Args:
        *args, **kwargs: as ``ray.tune.schedulers.ASHAScheduler`` (``time_attr``, ``max_t``,
            ``grace_period``, ``reduction_factor``, ...).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if (action == self.STOP and trial.trial_id in self.keep
                and result.get(self._time_attr, 0) < self._max_t):
            self._num_stopped -= 1  # Ray counted it as stopped
            return self.CONTINUE
        return action

    def rungs(self) -> list[float]:
        """The fidelity values at which trials are compared, short of ``max_t`` (the sweep
        tells the trainable, so it can evaluate there)."""
        milestones = {float(m) for m, _ in self._rung_tables()}
        return sorted(m for m in milestones if m < self._max_t * (1 - 1e-9))

    def restore(self, study: optuna.Study, mode: str) -> None:
        """Seed the rungs with the learning curves of ``study``'s finished trials.

        A resumed sweep's new Tune run starts with empty rungs (Ray's ``Tuner.restore`` loses
        them too, ray-project/ray#30838); the store has every finished trial's intermediate
        values, so the cutoffs carry over. ``mode``: the metric's "min" or "max".
        """
        from optuna.trial import TrialState

        sign = -1.0 if mode == "min" else 1.0  # ASHA keeps rewards, larger is better
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                            TrialState.PRUNED))
        for milestone, recorded in self._rung_tables():
            for t in finished:
                steps = [s for s in t.intermediate_values if s >= milestone]
                if steps:
                    recorded[f"store-{t.number}"] = sign * t.intermediate_values[min(steps)]

    def _rung_tables(self) -> list[tuple[float, dict[str, float]]]:
        """Every bracket's rungs as (milestone, {trial id: reward}), the tables ASHA decides on.

        Ray's ASHA keeps them in private attributes (``_brackets[i]._rungs``) and has no public
        way to list its milestones or to add results: tests/test_faults.py fails when Ray
        changes them.
        """
        return [(m, recorded) for bracket in self._brackets for m, recorded in bracket._rungs]
