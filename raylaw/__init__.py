"""raylaw: hyperparameter search on Ray Tune, narrowed around scaling-law priors."""

from raylaw.errors import RaylawError
from raylaw.law import Optimum, Prediction, ScalingLaw
from raylaw.optimum import extract_optimum, optima_by_scale
from raylaw.sampler import LawSampler, enqueue_prediction, narrowed_distributions
from raylaw.space import Param, SearchSpace
from raylaw.store import law_from_studies
from raylaw.sweep import SweepConfig, SweepResult, run_sweep

__all__ = [
    "LawSampler", "Optimum", "Param", "Prediction", "RaylawError", "ScalingLaw", "SearchSpace",
    "SweepConfig", "SweepResult", "enqueue_prediction", "extract_optimum", "law_from_studies",
    "narrowed_distributions", "optima_by_scale", "run_sweep",
]
__version__ = "0.1.0"
