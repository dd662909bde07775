"""The landscape model: a noise-aware bowl fitted to all trials of one scale."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from raylaw.landscape import (
    NOISE_CEILING,
    SIGMA_GRID,
    BowlPrior,
    _noise_prior,
    fit_bowl,
    levels,
)

H = np.array([[0.02, -0.006], [-0.006, 0.016]])  # Step Law-like curvature of the relative gap
BOX = (np.array([-6.0, -6.0]), np.array([6.0, 6.0]))


def lopsided(z: np.ndarray, vertex: np.ndarray) -> np.ndarray:
    """A bowl steeper on one side (towards divergence), relative gap over log coordinates."""
    x = z - vertex
    return 1.0 + 0.5 * np.einsum("ni,ij,nj->n", x, H, x) + 0.004 * x[:, 0] ** 3


def test_vertex_of_a_noisy_lopsided_bowl_and_an_honest_sd():
    truth = np.array([0.3, -0.2])
    misses, sds = [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        z = rng.uniform(-1.5, 1.5, (40, 2))
        y = lopsided(z, truth) * (1 + 0.003 * rng.standard_normal(40))
        bowl = fit_bowl(z, y, *BOX)
        misses.append(bowl.center - truth)
        sds.append(bowl.sd)
    z_scores = np.abs(np.array(misses)) / np.array(sds)
    assert np.median(np.abs(misses)) < 0.15
    assert np.mean(z_scores < 2.0) >= 0.75  # the sd covers the miss


def test_noise_is_estimated_from_the_residuals():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 0.7, (60, 2))
    y = lopsided(z, np.zeros(2)) * (1 + 0.005 * rng.standard_normal(60))
    bowl = fit_bowl(z, y, *BOX)
    assert 0.0035 < bowl.noise < 0.007
    clean = fit_bowl(z, lopsided(z, np.zeros(2)), *BOX)
    assert clean.noise < 0.001


def test_noise_above_the_ceiling_needs_evidence():
    """With no declared noise the prior is flat up to NOISE_CEILING and falls off above it;
    enough trials still show a larger noise."""
    logs = np.log(SIGMA_GRID)
    prior = _noise_prior(None, 0.5)
    assert np.all(prior[SIGMA_GRID <= NOISE_CEILING] == 0)
    assert np.all(np.diff(prior[SIGMA_GRID > NOISE_CEILING]) < 0)
    assert prior[np.argmin(np.abs(logs - np.log(0.1)))] < -4  # 10% noise: e^-4 a priori
    rng = np.random.default_rng(0)
    z = rng.normal(0, 0.7, (60, 2))
    y = lopsided(z, np.zeros(2)) * (1 + 0.06 * rng.standard_normal(60))
    assert 0.035 < fit_bowl(z, y, *BOX).noise < 0.08


def test_the_law_prior_holds_with_few_trials_and_data_overrule_it():
    prior = BowlPrior(vertex=np.zeros(2), vertex_cov=np.eye(2) * 0.01, curvature=H)
    rng = np.random.default_rng(1)
    z = rng.normal(0, 0.3, (3, 2))
    few = fit_bowl(z, lopsided(z, np.zeros(2)) * (1 + 0.005 * rng.standard_normal(3)), *BOX,
                   prior)
    assert np.all(np.abs(few.center) < 0.3)  # three noisy trials barely move it
    far = np.array([1.5, -1.5])  # the law is wrong by 1.5 e-folds in each
    z = far + rng.normal(0, 0.6, (40, 2))
    many = fit_bowl(z, lopsided(z, far) * (1 + 0.001 * rng.standard_normal(40)), *BOX, prior)
    assert np.all(np.abs(many.center - far) < 0.3)
    assert many.doubt > 0.5 > few.doubt


def test_divergence_is_a_wall_not_a_point_to_fit():
    """Trials far above the best (a divergence plateau) bound the bowl from below: they keep
    the vertex away from them without being fitted as a bowl."""
    rng = np.random.default_rng(2)
    z = rng.uniform(-1.5, 1.5, (50, 2))
    y = lopsided(z, np.zeros(2))
    diverged = z[:, 0] > 1.0
    y[diverged] = 2.6  # the loss of a diverged run: 2.6x the best
    bowl = fit_bowl(z, y, *BOX)
    assert np.all(np.abs(bowl.center) < 0.15)


def test_a_vertex_past_the_hard_bound_is_reported_unclipped():
    rng = np.random.default_rng(3)
    z = rng.uniform([0.0, -1.0], [1.5, 1.0], (30, 2))  # the floor of the first is 0
    y = lopsided(z, np.array([-0.8, 0.0]))
    bowl = fit_bowl(z, y, np.array([0.0, -6.0]), np.array([6.0, 6.0]))
    assert bowl.unclipped[0] < -0.3 and bowl.center[0] == 0.0


def test_grid_columns_get_shared_offsets_and_searches_do_not():
    lr, bs = np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 6))
    grid = np.column_stack([lr.ravel(), bs.ravel()])
    assert levels(grid).shape == (48, 8 + 6)
    search = np.random.default_rng(0).normal(0, 1, (48, 2))
    search[:, 1] = np.round(search[:, 1] * 8)  # integer values that repeat
    assert levels(search).shape[1] == 0


def test_no_trials_is_the_prior():
    prior = BowlPrior(vertex=np.array([0.5, -0.5]), vertex_cov=np.eye(2) * 0.01, curvature=H)
    bowl = fit_bowl(np.zeros((0, 2)), np.zeros(0), *BOX, prior)
    assert bowl.n == 0 and bowl.center == pytest.approx([0.5, -0.5])
    assert len(bowl.tried) == 0  # the prior's placeholder point is no trial


def test_a_rung_moved_by_an_unsure_exponent_locates_less():
    """Trials stopped at a rung were moved to the full budget by the law's exponent; where the
    exponent is unsure, so is the move: their vertex (here 0.6 off the truth, as from an
    exponent 0.27 off over a shift of log 9) must not pull the full run's vertex with it."""
    prior = BowlPrior(vertex=np.zeros(2), vertex_cov=np.eye(2) * 0.04, curvature=H, noise=0.002)
    rung = np.array([0.6, 0.0])
    group = np.repeat([0, 1], [4, 30])
    shift = np.where(group == 1, np.log(9.0), 0.0)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        z_full, z_rung = rng.normal(0, 0.4, (4, 2)), rung + rng.uniform(-1.5, 1.5, (30, 2))
        z = np.vstack([z_full, z_rung])
        y = np.concatenate([lopsided(z_full, np.zeros(2)), 1.3 * lopsided(z_rung, rung)])
        y *= 1 + 0.002 * rng.standard_normal(len(y))
        exact = fit_bowl(z, y, *BOX, prior, group=group, shift=shift)  # no transport_cov
        unsure = fit_bowl(z, y, *BOX, replace(prior, transport_cov=np.eye(2) * 0.2**2),
                          group=group, shift=shift)
        assert exact.center[0] > 0.3  # the rung's 30 trials outvote 4 full-length ones
        assert abs(unsure.center[0]) < 0.6 * exact.center[0]
        # a law whose second hyperparameter does not move with the budget: sure in that one
        half = fit_bowl(z, y, *BOX, replace(prior, transport_cov=np.diag([0.2**2, 0.0])),
                        group=group, shift=shift)
        assert abs(half.center[0] - unsure.center[0]) < 0.1


def test_the_answer_stays_in_the_hull_of_the_trials_not_in_an_empty_corner_of_their_box():
    # trials on two arms of an L: along x = 0 and along y = 1, all within 1% of the best; the
    # bowl falls towards (2, -1), beyond their box's corner (1, 0), which is far from them all
    arm = np.linspace(0.0, 1.0, 6)
    z = np.vstack([np.column_stack([np.zeros(6), arm]), np.column_stack([arm[1:], np.ones(5)])])
    y = 1 + 0.002 * ((z[:, 0] - 2) ** 2 + (z[:, 1] + 1) ** 2)
    bowl = fit_bowl(z, y, *BOX, BowlPrior(curvature=np.eye(2) * 0.004))
    lo, hi = bowl.support
    assert np.allclose(lo, 0.0) and np.allclose(hi, 1.0)  # every trial is near the bottom
    answer = bowl.lowest_within(lo, hi)
    assert answer[0] - answer[1] <= 1e-6  # on the hull's side of its diagonal (0, 0)-(1, 1)
    assert np.linalg.norm(answer - np.array([0.5, 0.5])) < 0.2  # the hull's lowest point


def test_a_running_trial_has_already_bought_most_of_what_its_point_would_tell():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 0.3, (12, 2))
    y = lopsided(z, np.zeros(2)) * (1 + 0.005 * rng.standard_normal(12))
    bowl = fit_bowl(z, y, *BOX, BowlPrior(curvature=H))
    points = bowl.center + np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    alone = bowl.informative(points)
    assert np.all(alone > 0)
    waiting = bowl.informative(points, pending=points[1:2])
    assert waiting[1] < 0.6 * alone[1]  # the same point again: little left to learn there
