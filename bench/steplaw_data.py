"""The Step Law sweep data as a scoring function: interpolated regret at each scale.

Regret as defined with the shared data: interpolate ``smooth loss`` linearly in
(log lr, log bs) over one scale's grid (nearest grid point outside its convex hull) and
divide by the scale's best loss, minus 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "steplaw_dense_lr_bs_loss.csv"
SPACE = ROOT / "search_spaces" / "steplaw.yaml"


def load() -> pd.DataFrame:
    """The runs with the paper's metric as ``loss`` (finite rows only)."""
    df = pd.read_csv(DATA).drop(columns=["loss"]).rename(columns={"smooth loss": "loss"})
    return df[np.isfinite(df["loss"])].reset_index(drop=True)


class Scale:
    """One scale's grid: regret(lr, bs) by interpolation in log space."""

    def __init__(self, group: pd.DataFrame):
        self.N = float(group["N"].iloc[0])
        self.D = float(group["D"].iloc[0])
        pts = np.log(group[["lr", "bs"]].to_numpy(dtype=float))
        loss = group["loss"].to_numpy(dtype=float)
        self.best = float(loss.min())
        self.rows = group
        self._lin = LinearNDInterpolator(pts, loss)
        self._near = NearestNDInterpolator(pts, loss)

    @property
    def scale(self) -> dict[str, float]:
        return {"N": self.N, "D": self.D}

    def loss(self, lr: float, bs: float) -> float:
        p = np.log([[lr, bs]])
        v = self._lin(p)[0]
        return float(self._near(p)[0] if not np.isfinite(v) else v)

    def regret(self, lr: float, bs: float) -> float:
        return self.loss(lr, bs) / self.best - 1.0


def scales(df: pd.DataFrame | None = None) -> list[Scale]:
    df = load() if df is None else df
    return [Scale(g) for _, g in df.groupby(["N", "D"], sort=True)]
