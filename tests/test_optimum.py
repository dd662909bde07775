"""Optimum extraction: the vertex of the near-optimal bowl, robust to plateaus and failures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from raylaw import RaylawError, SearchSpace, extract_optimum, optima_by_scale
from raylaw.optimum import optima_pooled
from tests.conftest import LM_SPACE

SPACE = SearchSpace.from_dict({
    "name": "bowl", "metric": "loss", "mode": "min", "scale": {"N": "params"},
    "governed": {
        "lr": {"depends_on": ["N"], "low": 1e-5, "high": 1.0, "log": True},
        "bs": {"depends_on": ["N"], "low": 1, "high": 4096, "log": True, "type": "int"},
    },
})


def bowl(lr_opt: float, bs_opt: float, noise: float, seed: int = 0) -> pd.DataFrame:
    """A grid over (lr, bs) whose loss is an asymmetric bowl with a flat bottom, plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for lr in np.geomspace(lr_opt / 16, lr_opt * 8, 13):
        for bs in np.geomspace(bs_opt / 8, bs_opt * 8, 10):
            u, v = math.log(lr / lr_opt), math.log(bs / bs_opt)
            loss = 2.0 * (1 + 0.004 * u**2 + 0.0015 * u**3 * (u > 0) + 0.002 * v**2
                          + 0.001 * u * v) + rng.normal(0, noise)
            rows.append({"lr": lr, "bs": round(bs), "loss": loss, "status": "completed"})
    return pd.DataFrame(rows)


def test_vertex_is_closer_to_truth_than_the_noisy_argmin():
    errs_fit, errs_argmin = [], []
    for seed in range(10):
        df = bowl(3e-3, 256, noise=0.003, seed=seed)
        opt = extract_optimum(df, SPACE, {"N": 1e8})
        best = df.loc[df["loss"].idxmin()]
        errs_fit.append(abs(math.log(opt.values["lr"] / 3e-3)))
        errs_argmin.append(abs(math.log(best["lr"] / 3e-3)))
        assert opt.method == "bowl" and opt.noise is not None
        assert np.all(np.linalg.eigvalsh(opt.hessian(["lr", "bs"])) > 0)
        assert 0 < opt.sigmas["lr"] < 1
    assert np.mean(errs_fit) < np.mean(errs_argmin)
    assert np.mean(errs_fit) < 0.35


def test_failed_trials_are_excluded_and_counted():
    df = bowl(3e-3, 256, noise=0.001)
    df.loc[0, "loss"] = float("nan")
    df.loc[1, "status"] = "diverged"
    df.loc[2, "status"] = "errored"
    df.loc[3:6, "status"] = "stopped"
    df.loc[7, "loss"] = -5.0  # would win if a stopped trial's value leaked in
    df.loc[7, "status"] = "stopped"
    opt = extract_optimum(df, SPACE, {"N": 1e8})
    assert opt.n_excluded == 8
    assert opt.n_trials == len(df) - 8
    assert abs(math.log(opt.values["lr"] / 3e-3)) < 0.5


def test_few_points_give_a_wide_sigma():
    df = pd.DataFrame({"lr": [1e-3, 2e-3, 4e-3], "bs": [64, 64, 64], "loss": [2.1, 2.0, 2.2]})
    opt = extract_optimum(df, SPACE, {"N": 1e7})
    assert "bs" not in opt.values  # bs never varied: no evidence about its optimum
    assert 1e-3 < opt.values["lr"] < 4e-3
    assert opt.sigmas["lr"] >= 0.3


def test_max_mode_and_single_trial():
    space = SearchSpace.from_dict({**{"name": "acc", "metric": "acc", "mode": "max",
                                      "scale": {"N": "p"}},
                                   "governed": {"lr": {"depends_on": ["N"], "low": 1e-5,
                                                       "high": 1.0, "log": True}}})
    df = pd.DataFrame({"lr": np.geomspace(1e-4, 1e-1, 13)})
    df["acc"] = 0.9 - 0.01 * np.log(df["lr"] / 3e-3) ** 2
    opt = extract_optimum(df, space, {"N": 1e7})
    assert opt.values["lr"] == pytest.approx(3e-3, rel=0.05)
    single = extract_optimum(df.iloc[:1], space, {"N": 1e7})
    assert single.method == "single" and single.sigmas["lr"] == 0.5


def test_a_single_completed_trial_is_as_uncertain_as_the_sweep_was_wide():
    lr = np.geomspace(1e-4, 1e-1, 10)
    df = pd.DataFrame({"lr": lr, "bs": 64, "loss": 2.0 + np.arange(10) / 10,
                       "status": ["completed"] + ["stopped"] * 9})
    opt = extract_optimum(df, SPACE, {"N": 1e7})
    # under ASHA the one trial that ran to the end says little about where the optimum is
    assert opt.method == "single" and opt.values["lr"] == pytest.approx(1e-4)
    assert opt.sigmas["lr"] == pytest.approx(np.log(lr).std())  # 2.2: the whole search
    near = df.assign(lr=np.geomspace(1e-3, 2e-3, 10))  # a narrow search keeps the floor
    assert extract_optimum(near, SPACE, {"N": 1e7}).sigmas["lr"] == 0.5


def test_no_completed_trial_is_an_error():
    df = pd.DataFrame({"lr": [1e-3], "bs": [32], "loss": [float("nan")]})
    with pytest.raises(RaylawError, match="no completed trial"):
        extract_optimum(df, SPACE, {"N": 1e7})


def test_real_steplaw_optima_per_scale(steplaw_df, steplaw_space):
    optima = optima_by_scale(steplaw_df, steplaw_space)
    assert len(optima) == 17
    for o in optima:
        sub = steplaw_df[(steplaw_df.N == o.scale["N"]) & (steplaw_df.D == o.scale["D"])]
        assert sub.lr.min() <= o.values["lr"] <= sub.lr.max()
        assert sub.bs.min() <= o.values["bs"] <= sub.bs.max()
    # the optimum lr falls with model size at fixed tokens-per-parameter, as published
    small = next(o for o in optima if o.scale["N"] < 2.2e8 and o.scale["D"] == 2e10)
    big = next(o for o in optima if o.scale["N"] > 1e9 and o.scale["D"] == 2e10)
    assert big.values["lr"] < small.values["lr"]


def test_an_optimum_on_the_spaces_bound_is_marked_as_a_bound():
    """The best trial on bs's floor (1): the optimum may be lower, so it is an upper bound;
    lr's best is inside the range, so lr stays a point."""
    rows = [{"lr": lr, "bs": bs,
             "loss": 2.0 + 0.01 * math.log(lr / 3e-3) ** 2 + 0.02 * math.log(bs)}
            for lr in (1e-3, 3e-3, 9e-3) for bs in (1, 2, 4)]
    opt = extract_optimum(pd.DataFrame(rows), SPACE, {"N": 1e7})
    assert opt.censored == {"bs": "upper"}
    assert opt.to_dict()["censored"] == {"bs": "upper"}
    top = pd.DataFrame([{**r, "bs": 4096 // r["bs"]} for r in rows])  # best on the ceiling
    assert extract_optimum(top, SPACE, {"N": 1e7}).censored == {"bs": "lower"}
    inside = pd.DataFrame([{**r, "bs": 2 * r["bs"]} for r in rows])
    assert extract_optimum(inside, SPACE, {"N": 1e7}).censored == {}


def test_completed_trials_all_on_the_floor_bound_the_optimum():
    """ASHA completed only bs-1 trials and stopped the others: bs did not vary among the
    completed ones, so it locates no point, but it bounds the optimum from above."""
    df = pd.DataFrame({"lr": [1e-3, 3e-3, 9e-3, 2e-3, 5e-3], "bs": [1, 1, 1, 8, 32],
                       "loss": [2.1, 2.0, 2.2, 3.0, 3.5],
                       "status": ["completed"] * 3 + ["stopped"] * 2})
    opt = extract_optimum(df, SPACE, {"N": 1e7})
    assert opt.values["bs"] == 1 and opt.censored == {"bs": "upper"}
    assert opt.sigmas["bs"] >= 0.5
    inside = extract_optimum(df.assign(bs=[4, 4, 4, 8, 32]), SPACE, {"N": 1e7})
    assert "bs" not in inside.values  # off the bound: no evidence about bs


def test_a_scale_with_too_few_trials_shows_no_shape_and_is_not_counted_twice():
    """Two completed trials (a law's trial at the optimum and one at a corner) cannot show a
    bowl's shape: a shape pooled from them used to be their own prior, and the vertex moved
    3x off the law's right trial with a third of the honest sd."""
    lm = SearchSpace.load(LM_SPACE)
    trials = pd.DataFrame([dict(lr=0.0558, batch_size=6, loss=3.0000, status="completed"),
                           dict(lr=0.3, batch_size=1, loss=3.2083, status="completed")])
    scale = {"N": 3e4, "D": 3e5}
    alone = extract_optimum(trials, lm, scale, noise=0.006)
    (pooled,) = optima_pooled([(scale, trials)], lm, noise=0.006)
    assert alone.curvature is None and alone.skew is None
    assert pooled.values == alone.values and pooled.sigmas == alone.sigmas
    assert min(pooled.sigmas.values()) > 1.0  # log-sd: the two trials locate little
