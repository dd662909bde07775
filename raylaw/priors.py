"""Published laws as priors: Step Law (Li et al., 2025, arXiv 2503.04715).

The numbers are the mean and covariance of the 1,000 bootstrap fits the authors published
(``fitted_lr_bs_bootstrap.csv`` in github.com/step-law/steplaw, folder ``data/``) of
``lr = exp(a) N^b_N D^b_D`` and ``bs_tokens = exp(a) D^b_D`` (N: non-embedding parameters,
D: training tokens). A prior describes someone else's setup, so its intercept gets an extra
``TRANSFER_SD`` of log-space uncertainty and each exponent an extra ``TRANSFER_EXPONENT_SD``
(pivoting at the centre of the scales the fit was made from, where the published law is
best known): published exponents differ between setups, and a user's own sweeps must be able
to move them, not only the intercept. When a user's optima are fitted, that tilt moves to
their scales (``Prior.cov_at``), so sweeps far below the published scales are not held to the
published exponent by the long lever arm back to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from raylaw.errors import RaylawError

if TYPE_CHECKING:
    from raylaw.space import Param


@dataclass(frozen=True)
class Prior:
    """Gaussian prior on one hyperparameter's coefficients [a, b_1, ..., b_k].

    A published law carries ``exponent_sd`` of transfer uncertainty on its exponents, written
    into ``cov`` as a tilt about ``pivot`` (log scale, where it was fitted). ``cov_at`` moves
    that tilt to the scales a user's optima come from (see there).

    Args:
        mean: prior mean of [a, b_1, ..., b_k] (log-space intercept, then the exponents).
        cov: their prior covariance, transfer uncertainty included.
        source: where the prior comes from, for tables and law files.
        pivot: log scales about which ``cov`` tilts the exponents (None: no tilt).
        exponent_sd: the exponents' transfer sd that tilt carries.
    """

    mean: np.ndarray
    cov: np.ndarray
    source: str = ""
    pivot: np.ndarray | None = None
    exponent_sd: float = 0.0

    def cov_at(self, center: np.ndarray) -> np.ndarray:
        """The covariance with the exponents' transfer uncertainty tilting about ``center``.

        A tilt about the published pivot ties a user's exponents to the level they imply there:
        optima 10 e-folds away from it pin the exponent to +-(intercept sd)/10, however little
        their own range says about it. About ``center`` (the log scales of the user's optima)
        the exponents keep their own +-exponent_sd and the level there gets the variance the
        tilt gave it (sd * distance), so the prediction at ``center`` is unchanged.
        """
        if self.pivot is None or self.exponent_sd == 0.0:
            return self.cov
        p, c = self.pivot, np.asarray(center, dtype=float)
        jp, jc = np.vstack([-p, np.eye(len(p))]), np.vstack([-c, np.eye(len(c))])
        moved = self.cov + self.exponent_sd**2 * (jc @ jc.T - jp @ jp.T)
        moved[0, 0] += self.exponent_sd**2 * float((c - p) @ (c - p))
        return moved


TRANSFER_SD = 1.0  # log-space std added to the intercept: "your setup is not theirs"
TRANSFER_EXPONENT_SD = 0.2  # std added to each exponent, for the same reason

STEPLAW = {
    # geometric centre of the 17 dense (N, D) scales the published fit was made from
    "pivot": {"N": 3.78e8, "D": 2.22e10},
    "lr": {
        "depends_on": ("N", "D"),
        "mean": [0.586308, -0.712922, 0.307491],
        "cov": [[0.389062, -0.0135589, -0.00513249],
                [-0.0135589, 0.000891486, -0.000174332],
                [-0.00513249, -0.000174332, 0.000366312]],
    },
    "batch_size": {  # in tokens
        "depends_on": ("D",),
        "mean": [-0.543542, 0.570944],
        "cov": [[0.19118, -0.00815157],
                [-0.00815157, 0.000348518]],
    },
}
PRIORS = {"steplaw": STEPLAW}
ROLES = {"lr": "lr", "learning_rate": "lr", "bs": "batch_size", "batch_size": "batch_size"}


def prior_for(prior: str, name: str, hp: Param, transfer_sd: float = TRANSFER_SD,
              exponent_sd: float = TRANSFER_EXPONENT_SD) -> Prior | None:
    """The named published prior for governed hyperparameter ``hp``, in the space's units.

    Returns None when the prior has no law for this hyperparameter's role or scale variables.
    """
    if prior not in PRIORS:
        raise RaylawError(f"--prior: unknown prior '{prior}' (expected one of "
                          f"{sorted(PRIORS)} or none)")
    role = hp.role or ROLES.get(name)
    law = PRIORS[prior].get(role or "")
    if law is None or set(law["depends_on"]) != set(hp.depends_on):
        return None
    order = [0] + [1 + law["depends_on"].index(k) for k in hp.depends_on]
    mean = np.asarray(law["mean"], dtype=float)[order]
    cov = np.asarray(law["cov"], dtype=float)[np.ix_(order, order)]
    if role == "batch_size":
        if hp.units == "sequences":
            mean[0] -= math.log(hp.seq_len)
        elif hp.units != "tokens":
            return None
    cov[0, 0] += transfer_sd**2
    # exponent uncertainty pivoting at the fit's own scales: log h = a' + b (log x - log pivot)
    pivot = np.array([math.log(PRIORS[prior]["pivot"][k]) for k in hp.depends_on])
    jac = np.vstack([-pivot, np.eye(len(pivot))])
    cov += exponent_sd**2 * jac @ jac.T
    return Prior(mean, cov, f"{prior} (transfer sd {transfer_sd:g} on the intercept, "
                 f"{exponent_sd:g} on exponents)", pivot, exponent_sd)
