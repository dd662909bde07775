"""raylaw: hyperparameter search on Ray Tune, narrowed around scaling-law priors."""

from raylaw.errors import RaylawError
from raylaw.law import Optimum, Prediction, ScalingLaw
from raylaw.optimum import extract_optimum, optima_by_scale
from raylaw.space import Param, SearchSpace

__all__ = [
    "Optimum", "Param", "Prediction", "RaylawError", "ScalingLaw", "SearchSpace",
    "extract_optimum", "optima_by_scale",
]
__version__ = "0.1.0"
