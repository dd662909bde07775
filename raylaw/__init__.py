"""raylaw: hyperparameter search on Ray Tune, narrowed around scaling-law priors.

The names below load on first use (PEP 562): a Ray worker that runs a trainable
(``raylaw.trainables.lm``, ``raylaw.workers``) imports neither Optuna nor SciPy for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raylaw.errors import RaylawError
    from raylaw.law import Optimum, Prediction, ScalingLaw
    from raylaw.optimum import extract_optimum, optima_by_scale
    from raylaw.sampler import LawSampler, enqueue_prediction, narrowed_distributions
    from raylaw.space import Param, SearchSpace
    from raylaw.store import law_from_studies
    from raylaw.sweep import SweepConfig, SweepResult, run_sweep

_WHERE = {
    "RaylawError": "errors",
    "Optimum": "law", "Prediction": "law", "ScalingLaw": "law",
    "extract_optimum": "optimum", "optima_by_scale": "optimum",
    "LawSampler": "sampler", "enqueue_prediction": "sampler", "narrowed_distributions": "sampler",
    "Param": "space", "SearchSpace": "space",
    "law_from_studies": "store",
    "SweepConfig": "sweep", "SweepResult": "sweep", "run_sweep": "sweep",
}
__all__ = [
    "LawSampler", "Optimum", "Param", "Prediction", "RaylawError", "ScalingLaw", "SearchSpace",
    "SweepConfig", "SweepResult", "enqueue_prediction", "extract_optimum", "law_from_studies",
    "narrowed_distributions", "optima_by_scale", "run_sweep",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'raylaw' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"raylaw.{_WHERE[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})  # a loaded name is in both
