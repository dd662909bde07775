"""``raylaw.optuna``: the names Optuna users import, kept here for them.

``from raylaw.optuna import LawSampler, enqueue_prediction, law_from_studies,
narrowed_distributions`` keeps working. The code lives in ``raylaw.sampler`` (the sampler and
the narrowing helpers), ``raylaw.store`` (laws from the studies in a store) and
``raylaw.records`` (what raylaw records in a study); new code imports from those, whose names
do not shadow the ``optuna`` package.
"""

from raylaw.records import (
    LAW_CENTER_ATTR,
    SCALE_ATTR,
    SPACE_ATTR,
    STATUS_ATTR,
    study_scale,
    trials_frame,
)
from raylaw.sampler import LawSampler, enqueue_prediction, narrowed_distributions
from raylaw.store import law_from_studies, optima_from_studies

__all__ = ["LAW_CENTER_ATTR", "SCALE_ATTR", "SPACE_ATTR", "STATUS_ATTR", "LawSampler",
           "enqueue_prediction", "law_from_studies", "narrowed_distributions",
           "optima_from_studies", "study_scale", "trials_frame"]
