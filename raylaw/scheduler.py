"""ASHA that never stops the law's own recommendation: every sweep trains it to full length."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler


class LawASHA(ASHAScheduler):
    """Ray's ASHA, except that the trials in ``keep`` (Tune trial ids) are never stopped early.

    ``LawSearch`` adds the trial that runs the law's predicted optimum: its full-length result
    is the law's own evidence at this scale, and a sweep is never worse than following the law.
    Its results still enter the rungs, so the other trials are compared against it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if (action == self.STOP and trial.trial_id in self.keep
                and result.get(self._time_attr, 0) < self._max_t):
            self._num_stopped -= 1
            return self.CONTINUE
        return action
