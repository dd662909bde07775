"""The law: recovery of known exponents, Bayesian update from a prior, honest intervals, files."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from raylaw import Optimum, RaylawError, ScalingLaw, SearchSpace

SPACE = SearchSpace.from_dict({
    "name": "synthetic", "metric": "loss", "mode": "min",
    "scale": {"N": "params", "D": "tokens"},
    "governed": {
        "lr": {"depends_on": ["N", "D"], "low": 1e-5, "high": 1.0, "log": True},
        "bs": {"depends_on": ["D"], "low": 1, "high": 4096, "log": True, "type": "int",
               "units": "sequences", "seq_len": 2048},
    },
})
TRUE = {"lr": (1.2, -0.7, 0.3), "bs": (-8.0, 0.55)}


def synthetic_optima(n_scales: int, noise: float, seed: int = 0) -> list[Optimum]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_scales):
        n = float(10 ** rng.uniform(7, 9))
        d = float(n * 10 ** rng.uniform(1, 2.5))
        lr = math.exp(TRUE["lr"][0] + TRUE["lr"][1] * math.log(n) + TRUE["lr"][2] * math.log(d)
                      + rng.normal(0, noise))
        bs = math.exp(TRUE["bs"][0] + TRUE["bs"][1] * math.log(d) + rng.normal(0, noise))
        out.append(Optimum({"N": n, "D": d}, {"lr": lr, "bs": bs}, {"lr": noise, "bs": noise}))
    return out


def test_recovers_known_exponents_from_noisy_optima():
    law = ScalingLaw.for_space(SPACE, prior=None).fit(synthetic_optima(40, 0.05))
    s = law.summary()
    assert s["lr"]["coef"]["b_N"] == pytest.approx(-0.7, abs=3 * s["lr"]["se"]["b_N"] + 0.01)
    assert s["lr"]["coef"]["b_D"] == pytest.approx(0.3, abs=3 * s["lr"]["se"]["b_D"] + 0.01)
    assert s["bs"]["coef"]["b_D"] == pytest.approx(0.55, abs=3 * s["bs"]["se"]["b_D"] + 0.01)
    assert s["lr"]["se"]["b_N"] < 0.05


def test_interval_covers_truth_and_widens_when_extrapolating():
    law = ScalingLaw.for_space(SPACE, prior=None).fit(synthetic_optima(12, 0.1, seed=3))
    near = law.predict({"N": 1e8, "D": 3e9})["lr"]
    far = law.predict({"N": 1e12, "D": 3e13})["lr"]
    assert far.log_sd > 1.5 * near.log_sd
    truth = math.exp(TRUE["lr"][0] + TRUE["lr"][1] * math.log(1e8) + TRUE["lr"][2] * math.log(3e9))
    assert near.low < truth < near.high
    assert near.low < near.center < near.high


def test_coverage_of_intervals_is_honest():
    """Over many synthetic datasets, ~90% intervals cover a fresh optimum about 90% of the time."""
    hits = []
    for seed in range(60):
        obs = synthetic_optima(8, 0.15, seed=seed)
        law = ScalingLaw.for_space(SPACE, prior=None).fit(obs[:-1])
        held = obs[-1]
        p = law.predict(held.scale, 0.9)["lr"]
        hits.append(p.low <= held.values["lr"] <= p.high)
    assert 0.75 <= np.mean(hits) <= 1.0


def valley_optima(n_scales: int, seed: int, curvature: bool) -> list[Optimum]:
    """Optima that wander far along a valley (log lr and log bs rising together), little across
    it, and (with ``curvature``) report the bowl that makes the valley cheap to wander along."""
    rng = np.random.default_rng(seed)
    along, across = np.array([1.0, 1.0]) / math.sqrt(2), np.array([1.0, -1.0]) / math.sqrt(2)
    hess = 0.001 * np.outer(along, along) + 0.1 * np.outer(across, across)
    out = []
    for _ in range(n_scales):
        n = float(10 ** rng.uniform(7, 9))
        d = float(n * 10 ** rng.uniform(1, 2.5))
        law = np.array([TRUE["lr"][0] + TRUE["lr"][1] * math.log(n) + TRUE["lr"][2] * math.log(d),
                        TRUE["bs"][0] + TRUE["bs"][1] * math.log(d)])
        z = law + along * rng.normal(0, 0.6) + across * rng.normal(0, 0.03)
        curv = {a: {b: float(hess[i, j]) for j, b in enumerate(("lr", "bs"))}
                for i, a in enumerate(("lr", "bs"))} if curvature else None
        out.append(Optimum({"N": n, "D": d}, {"lr": math.exp(z[0]), "bs": math.exp(z[1])},
                           {"lr": 0.02, "bs": 0.02}, curvature=curv))
    return out, hess


def test_curvature_weighs_misses_by_the_loss_they_cost():
    """Optima scattered along a flat valley: a fit that knows the bowl's curvature predicts
    points that lose much less loss (d' H d) than one that treats lr and bs separately."""
    costs = {True: [], False: []}
    for seed in range(8):
        for curvature in (True, False):
            obs, hess = valley_optima(10, seed, curvature)
            law = ScalingLaw.for_space(SPACE, prior=None).fit(obs)
            fresh, _ = valley_optima(30, seed + 100, curvature)
            for o in fresh:
                p = law.predict(o.scale)
                miss = np.log([p["lr"].center / o.values["lr"], p["bs"].center / o.values["bs"]])
                costs[curvature].append(float(miss @ hess @ miss))
    assert np.mean(costs[True]) < 0.7 * np.mean(costs[False])
    back = ScalingLaw.from_dict(json.loads(json.dumps(law.to_dict())))
    assert back.optima[0].curvature == law.optima[0].curvature


def test_prior_alone_predicts_and_evidence_moves_it():
    prior_law = ScalingLaw.for_space(SPACE, prior="steplaw")
    p0 = prior_law.predict({"N": 1e9, "D": 2e10})
    # published: lr = 1.79 N^-0.713 D^0.307, bs_tokens = 0.58 D^0.571 (bs in sequences of 2048)
    assert p0["lr"].center == pytest.approx(1.79 * 1e9**-0.713 * 2e10**0.307, rel=0.05)
    assert p0["bs"].center == pytest.approx(0.58 * 2e10**0.571 / 2048, rel=0.05)
    # our setup uses 3x the published lr everywhere: sweeps move the prior toward it
    obs = [Optimum({"N": n, "D": 20 * n}, {"lr": 3 * 1.79 * n**-0.713 * (20 * n) ** 0.307},
                   {"lr": 0.05}) for n in (1e8, 2e8, 4e8)]
    law = ScalingLaw.for_space(SPACE, prior="steplaw").fit(obs)
    p1 = law.predict({"N": 1e9, "D": 2e10})["lr"]
    assert p1.center > 2.0 * p0["lr"].center
    assert p1.log_sd < p0["lr"].log_sd
    assert "bs" in law.predict({"N": 1e9, "D": 2e10})  # bs keeps its prior-only prediction


def test_sweeps_move_the_priors_exponents_not_only_its_intercept():
    """A setup whose batch size grows as D^0.2 (published: D^0.571): four sweeps over two decades
    of D pull the prior's exponent most of the way, and the interval covers the truth."""
    def bs(d: float) -> float:
        return 3.0 * (d / 1e6) ** 0.2

    obs = [Optimum({"N": d / 20, "D": d}, {"bs": bs(d)}, {"bs": 0.1})
           for d in (2.5e5, 1e6, 4e6, 1.6e7)]
    law = ScalingLaw.for_space(SPACE, prior="steplaw").fit(obs)
    assert law.summary()["bs"]["coef"]["b_D"] < 0.35
    p = law.predict({"N": 3.2e6, "D": 6.4e7})["bs"]
    assert p.low < bs(6.4e7) < p.high


def test_sweeps_far_below_the_published_scales_are_not_held_to_its_exponent():
    """Flat batch size over D = 2.5e5..2e6, four decades below Step Law's scales: tilting the
    exponent about the published pivot would pin it near 0.41 (interval at 8x D: 2.8..18.7,
    missing the truth); tilting it about the user's scales lets the sweeps pull it to ~0.17."""
    obs = [Optimum({"N": d / 20, "D": d}, {"bs": 2.0}, {"bs": 0.1})
           for d in (2.5e5, 5e5, 1e6, 2e6)]
    law = ScalingLaw.for_space(SPACE, prior="steplaw").fit(obs)
    assert law.summary()["bs"]["coef"]["b_D"] < 0.3
    p = law.predict({"N": 8e5, "D": 1.6e7})["bs"]
    assert p.low < 2.0 < p.high


def test_recentering_the_prior_keeps_its_prediction_where_it_is_recentered():
    prior = ScalingLaw.for_space(SPACE, prior="steplaw").terms["lr"].prior
    assert np.allclose(prior.cov_at(prior.pivot), prior.cov)
    center = np.log([1e5, 2e6])
    f = np.concatenate([[1.0], center])
    assert f @ prior.cov_at(center) @ f == pytest.approx(f @ prior.cov @ f)
    # the level there no longer drags the exponents (about the published pivot it does)
    assert np.all(np.abs((f @ prior.cov_at(center))[1:]) < 0.02)
    assert np.all(np.abs((f @ prior.cov)[1:]) > 0.2)


def test_too_few_scales_without_prior_says_how_many():
    with pytest.raises(RaylawError, match="at least 4 scales"):
        ScalingLaw.for_space(SPACE, prior=None).fit(synthetic_optima(3, 0.1))


def test_collinear_scales_need_a_prior():
    obs = [Optimum({"N": n, "D": 20 * n}, {"lr": 0.01 * (n / 1e8) ** -0.4}, {"lr": 0.05})
           for n in (1e7, 3e7, 1e8, 3e8, 1e9)]
    with pytest.raises(RaylawError, match="vary independently"):
        ScalingLaw.for_space(SPACE, prior=None).fit(obs)
    law = ScalingLaw.for_space(SPACE, prior="steplaw").fit(obs)
    assert law.predict({"N": 3e9, "D": 6e10})["lr"].center > 0


def test_json_round_trip(tmp_path):
    law = ScalingLaw.for_space(SPACE, prior="steplaw").fit(synthetic_optima(6, 0.1))
    path = tmp_path / "law.json"
    law.save(path)
    d = json.loads(path.read_text())
    assert d["format"] == "raylaw.law" and d["format_version"] == 1
    assert len(d["optima"]) == 6 and d["provenance"]["prior"] == "steplaw"
    assert len(d["terms"]["lr"]["cov"]) == 3
    assert set(d["terms"]["lr"]["prior"]["pivot"]) == {"N", "D"}  # the tilt moves on reload
    back = ScalingLaw.load(path)
    a = law.predict({"N": 3e8, "D": 1e10})
    b = back.predict({"N": 3e8, "D": 1e10})
    for k in a:
        assert b[k].center == pytest.approx(a[k].center, rel=1e-9)
        assert b[k].high == pytest.approx(a[k].high, rel=1e-9)


def test_a_law_is_an_estimator_fit_sets_its_state_from_exactly_the_optima_given():
    """The constructor fits nothing; fit(optima) returns the law, fitting the same optima again
    changes nothing, and evidence is added by fitting old and new together."""
    law = ScalingLaw.for_space(SPACE, prior="steplaw")
    assert law.optima == [] and all(t.posterior is None for t in law.terms.values())
    obs, more = synthetic_optima(6, 0.1), synthetic_optima(3, 0.1, seed=9)
    at = {"N": 3e8, "D": 1e10}
    assert law.fit(obs, source="a") is law
    once, state = law.predict(at), law.to_dict()
    law.fit(obs, source="a")
    assert law.predict(at) == once and law.optima == obs
    assert {k: v for k, v in law.to_dict().items() if k != "provenance"} == {
        k: v for k, v in state.items() if k != "provenance"}
    assert law.provenance["sources"] == ["a"] and law.provenance["n_optima"] == 6
    law.fit(law.optima + more)
    assert law.predict(at) == ScalingLaw.for_space(SPACE, prior="steplaw").fit(
        obs + more).predict(at)
    # a new law from a fitted one's terms starts unfitted: the posteriors stay behind
    again = ScalingLaw(law.space_name, law.terms, provenance=law.provenance)
    assert again.optima == [] and all(t.posterior is None for t in again.terms.values())
    assert again.predict(at) == ScalingLaw.for_space(SPACE, prior="steplaw").predict(at)


def test_load_restores_the_stored_fit_without_recomputing_it(tmp_path, monkeypatch):
    import raylaw.law

    law = ScalingLaw.for_space(SPACE, prior="steplaw").fit(synthetic_optima(6, 0.1))
    law.save(tmp_path / "law.json")

    def refit(*args: object) -> None:
        raise AssertionError("load recomputed the fit")

    monkeypatch.setattr(raylaw.law, "_posteriors", refit)
    back = ScalingLaw.load(tmp_path / "law.json")
    at = {"N": 3e8, "D": 1e10}
    assert back.predict(at) == law.predict(at)
    assert back.predict(at, observed=True) == law.predict(at, observed=True)
    assert back.summary() == law.summary() and back.optima == law.optima


def test_law_files_of_format_version_1_still_load_and_predict_the_same():
    """A law written by raylaw before noise-aware optima (tests/data/law_v1.json, from the
    Step Law data with the published prior) predicts what it predicted then."""
    law = ScalingLaw.load(Path(__file__).parent / "data" / "law_v1.json")
    pinned = {
        (1e9, 2e10): {"lr": (0.0010896667262504504, 0.0009432070006304094,
                             0.0012588684917560697),
                      "bs": (206.22089201973938, 155.19199630574496, 274.02866976228677)},
        (3e8, 1e11): {"lr": (0.0036869006975923223, 0.0031661265376371783,
                             0.004293333381441897),
                      "bs": (530.0054797980619, 391.42098081200345, 717.6564936126692)},
    }
    for (n, d), want in pinned.items():
        got = law.predict({"N": n, "D": d})
        for name, (center, low, high) in want.items():
            assert (got[name].center, got[name].low, got[name].high) == pytest.approx(
                (center, low, high), rel=1e-6)


def test_noise_and_skew_of_optima_survive_the_law_file(tmp_path):
    optima = [dataclasses.replace(o, noise=0.004, curvature={"lr": {"lr": 0.02, "bs": -0.005},
                                                             "bs": {"lr": -0.005, "bs": 0.015}},
                                  skew={"lr": {"lr": {"lr": 0.01}}})
              for o in synthetic_optima(5, 0.1)]
    law = ScalingLaw.for_space(SPACE, prior="steplaw").fit(optima)
    law.save(tmp_path / "law.json")
    back = ScalingLaw.load(tmp_path / "law.json")
    assert back.optima[0].noise == 0.004 and back.optima[0].skew == {"lr": {"lr": {"lr": 0.01}}}
    d = json.loads((tmp_path / "law.json").read_text())
    d["optima"][0]["noise"] = -1
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(RaylawError, match=r"optima\[0\].noise"):
        ScalingLaw.load(tmp_path / "bad.json")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=99), "unknown format_version 99"),
    (lambda d: d.update(format="pickle"), "not a raylaw law file"),
    (lambda d: d["optima"][0]["values"].update(lr=-1.0), "positive"),
    (lambda d: d["terms"]["lr"]["prior"].update(mean=[0.0, "x", 1.0]), "expected numbers"),
    (lambda d: d["terms"].pop("lr") and d["terms"].pop("bs"), "non-empty"),
    (lambda d: d["optima"][0].update(curvature={"lr": {"lr": "steep"}}), "curvature.lr.lr"),
    (lambda d: d["terms"]["lr"]["prior"].update(pivot={"N": 1e8}), "prior.pivot must map"),
    (lambda d: d["terms"]["lr"]["prior"].update(exponent_sd=-1), "prior.exponent_sd"),
    (lambda d: d["terms"]["lr"]["scatter_posterior"]["weights"].__setitem__(0, 0.5),
     "weights that sum to 1"),
    (lambda d: d["terms"]["lr"].update(scatter=9.0), "scatter: 9.0 is not the mean"),
    (lambda d: d["terms"]["lr"].update(cov=[[1, 2, 0], [0, 1, 0], [0, 0, 1]]), "symmetric"),
    (lambda d: d["terms"]["lr"].update(coef=[0.1, 0.2]), r"coef: expected shape \(3,\)"),
    (lambda d: d["terms"]["lr"].update(coef=[1e308, 0.2, 0.3]), "out of range for a power law"),
    (lambda d: [d["terms"]["bs"].pop(k) for k in ("coef", "cov", "scatter", "scatter_posterior")],
     "terms.bs has optima but no fit"),
])
def test_bad_law_files_are_refused(tmp_path, edit, message):
    law = ScalingLaw.for_space(SPACE, prior="steplaw").fit(synthetic_optima(5, 0.1))
    d = law.to_dict()
    edit(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(RaylawError, match=message) as e:
        ScalingLaw.load(path)
    assert str(path) in str(e.value)


def test_nan_in_law_file_is_refused(tmp_path):
    law = ScalingLaw.for_space(SPACE, prior="steplaw")
    text = json.dumps(law.to_dict()).replace("0.586308", "NaN", 1)
    path = tmp_path / "nan.json"
    path.write_text(text)
    with pytest.raises(RaylawError, match="NaN"):
        ScalingLaw.load(path)


def test_optima_on_the_spaces_floor_are_bounds_that_let_the_law_go_below_it():
    """Batch size optima on the floor (1 sequence) at three scales: as points they keep the
    prior's growth with D and predict ~2 at 2x the largest D; as upper bounds the law may go
    below the floor, and the prediction there stays under 1.2 (the floor, once snapped)."""
    def obs(censored: bool) -> list[Optimum]:
        return [Optimum({"N": d / 20, "D": d}, {"bs": 1.0}, {"bs": 0.35},
                        censored={"bs": "upper"} if censored else {})
                for d in (2.5e5, 5e5, 1e6)]

    target = {"N": 1e5, "D": 2e6}
    point = ScalingLaw.for_space(SPACE, prior="steplaw").fit(obs(False)).predict(target)["bs"]
    bound = ScalingLaw.for_space(SPACE, prior="steplaw").fit(obs(True))
    p = bound.predict(target)["bs"]
    assert point.center > 1.8 and p.center < 1.2 and p.low < point.low
    assert bound.summary()["bs"]["rms_residual"] < 0.2  # bounds the law respects are no misses
    for d in (2.5e5, 1e6):  # the law respects the bounds it was fitted to
        assert bound.predict({"N": d / 20, "D": d})["bs"].center < 1.0


def test_a_bound_the_law_already_respects_changes_little():
    obs = synthetic_optima(6, 0.1)
    plain = ScalingLaw.for_space(SPACE, prior="steplaw").fit(obs)
    far = Optimum({"N": 1e8, "D": 2e9}, {"lr": 1.0, "bs": 4096.0}, {"lr": 0.1, "bs": 0.1},
                  censored={"lr": "upper", "bs": "upper"})  # "at most" far above the law
    both = ScalingLaw.for_space(SPACE, prior="steplaw").fit([*obs, far])
    a, b = plain.predict({"N": 3e8, "D": 1e10}), both.predict({"N": 3e8, "D": 1e10})
    for k in a:
        assert abs(math.log(a[k].center / b[k].center)) < 0.05


def test_censored_optima_survive_the_law_file(tmp_path):
    obs = [*synthetic_optima(4, 0.1),
           Optimum({"N": 1e8, "D": 2e9}, {"lr": 1e-3, "bs": 1.0}, {"lr": 0.1, "bs": 0.3},
                   censored={"bs": "upper"})]
    law = ScalingLaw.for_space(SPACE, prior="steplaw").fit(obs)
    law.save(tmp_path / "law.json")
    back = ScalingLaw.load(tmp_path / "law.json")
    assert back.optima[-1].censored == {"bs": "upper"}
    assert back.predict({"N": 3e8, "D": 1e10})["bs"].center == pytest.approx(
        law.predict({"N": 3e8, "D": 1e10})["bs"].center, rel=1e-9)
    d = law.to_dict()
    d["optima"][-1]["censored"] = {"bs": "below"}
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(RaylawError, match=r"optima\[4\]\.censored\.bs: expected 'upper' or"):
        ScalingLaw.load(tmp_path / "bad.json")
