"""Shared fixtures: project paths, the Step Law example data, and one Ray per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPLAW_CSV = ROOT / "examples" / "data" / "steplaw_dense_lr_bs_loss.csv"
STEPLAW_SPACE = ROOT / "search_spaces" / "steplaw.yaml"
LM_SPACE = ROOT / "search_spaces" / "lm.yaml"


@pytest.fixture(scope="session")
def steplaw_space():
    from raylaw import SearchSpace

    return SearchSpace.load(STEPLAW_SPACE)


@pytest.fixture(scope="session")
def steplaw_df():
    import pandas as pd

    df = pd.read_csv(STEPLAW_CSV).drop(columns=["loss"]).rename(columns={"smooth loss": "loss"})
    return df
