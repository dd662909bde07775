"""Search spaces: parsing with clear errors, narrowing to a law's interval, Tune and Optuna."""

from __future__ import annotations

import optuna
import pytest
import yaml
from ray.tune.search.sample import Categorical, Float, Integer

from raylaw import RaylawError, ScalingLaw, SearchSpace
from raylaw.space import clip_interval
from tests.conftest import LM_SPACE, STEPLAW_SPACE

BASE = {
    "name": "t", "metric": "loss", "mode": "min", "scale": {"N": "p", "D": "t"},
    "governed": {"lr": {"depends_on": ["N", "D"], "low": 1e-4, "high": 1e-1, "log": True}},
    "free": {"wd": {"low": 0.0, "high": 0.3}, "act": {"choices": ["gelu", "relu"]}},
}


def write(tmp_path, data) -> str:
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_shipped_spaces_parse():
    s = SearchSpace.load(STEPLAW_SPACE)
    assert s.metric == "loss" and s.mode == "min" and list(s.scale) == ["N", "D"]
    assert s.governed["lr"].depends_on == ("N", "D")
    assert s.governed["bs"].depends_on == ("D",) and s.governed["bs"].seq_len == 2048
    lm = SearchSpace.load(LM_SPACE)
    assert set(lm.governed) == {"lr", "batch_size"} and set(lm.free) == {"weight_decay", "warmup"}
    assert lm.fidelity == "tokens" and lm.budget == "D"
    assert lm.noise == pytest.approx(0.006)  # measured by bench/lm_noise.py


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(colour="red"), "unknown field 'colour'"),
    (lambda d: d.pop("metric"), "field 'metric'"),
    (lambda d: d.update(mode="lowest"), "field 'mode'"),
    (lambda d: d["governed"]["lr"].update(low=0.5), "governed.lr: low (0.5) must be below high"),
    (lambda d: d["governed"]["lr"].update(depends_on=["X"]), "governed.lr.depends_on: 'X'"),
    (lambda d: d["governed"]["lr"].update(low="abc"), "governed.lr.low: expected a number"),
    (lambda d: d["governed"]["lr"].update(low=0), "governed.lr.low: must be positive"),
    (lambda d: d["governed"]["lr"].update(units="bytes"), "governed.lr.units"),
    (lambda d: d["governed"]["lr"].update(units="sequences"), "governed.lr.seq_len"),
    (lambda d: d["free"]["wd"].update(spread=3), "free.wd: unknown field 'spread'"),
    (lambda d: d["free"].update(N={"low": 1, "high": 2}), "name 'N' is used twice"),
    (lambda d: d.update(governed={}), "field 'governed'"),
    (lambda d: d.update(noise=1.5), "field 'noise' must be the metric's relative sd"),
    (lambda d: d.update(noise="lots"), "field 'noise'"),
])
def test_malformed_space_names_file_and_field(tmp_path, edit, field):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    edit(data)
    path = write(tmp_path, data)
    with pytest.raises(RaylawError) as e:
        SearchSpace.load(path)
    assert path in str(e.value) and field in str(e.value)


def test_yaml_is_parsed_as_data_only(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RaylawError, match="not valid YAML"):
        SearchSpace.load(p)
    p.write_text("name: x\ngoverned: {lr: [1, 2\n")
    with pytest.raises(RaylawError, match="not valid YAML at line 3, column 1"):
        SearchSpace.load(p)


def test_without_a_law_the_full_hard_range_is_searched():
    s = SearchSpace.from_dict(BASE)
    d = s.optuna_distributions()
    assert d["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert isinstance(d["act"], optuna.distributions.CategoricalDistribution)
    t = s.tune_space()
    assert isinstance(t["lr"], Float) and isinstance(t["act"], Categorical)


def test_narrowing_uses_the_law_interval_and_clips_to_hard_bounds():
    s = SearchSpace.load(STEPLAW_SPACE)
    law = ScalingLaw.for_space(s, prior="steplaw")
    scale = {"N": 1e9, "D": 2e10}
    pred = law.predict(scale, 0.5, observed=True)
    d = s.optuna_distributions(law, scale, coverage=0.5)
    assert d["lr"].low == pytest.approx(max(pred["lr"].low, 2.4e-4))
    assert d["lr"].high == pytest.approx(min(pred["lr"].high, 2.2e-2))
    assert d["lr"].high - d["lr"].low < 2.2e-2 - 2.4e-4
    assert isinstance(d["bs"], optuna.distributions.IntDistribution)
    assert 16 <= d["bs"].low < d["bs"].high <= 2048
    # at 90% the prior's interval is wider than the hard range on the low side: clipped
    wide = s.optuna_distributions(law, scale, coverage=0.99)
    assert wide["lr"].low == pytest.approx(2.4e-4)
    t = s.tune_space(law, scale)
    assert isinstance(t["bs"], Integer) and t["scale"] == scale


def test_interval_outside_hard_range_hugs_the_nearest_edge():
    p = SearchSpace.from_dict(BASE).governed["lr"]
    lo, hi = clip_interval(0.5, 2.0, p)  # entirely above high=0.1
    assert hi == pytest.approx(0.1) and lo == pytest.approx(0.1 / 4)
    lo, hi = clip_interval(1e-6, 1e-5, p)  # entirely below low=1e-4
    assert lo == pytest.approx(1e-4) and hi == pytest.approx(1e-3)


def test_scale_checks():
    s = SearchSpace.from_dict(BASE)
    assert s.check_scale({"N": "1e9", "D": 2e10}) == {"N": 1e9, "D": 2e10}
    with pytest.raises(RaylawError, match="missing scale variable 'D'"):
        s.check_scale({"N": 1e9})
    with pytest.raises(RaylawError, match="must be positive"):
        s.check_scale({"N": -1, "D": 1})
    with pytest.raises(RaylawError, match="unknown scale variable 'Q'"):
        s.check_scale({"N": 1, "D": 1, "Q": 1})


def test_fix_holds_free_hyperparameters_and_refuses_governed_ones():
    lm = SearchSpace.load(LM_SPACE)
    fixed = lm.fix({"weight_decay": 0.03, "threads": 1})  # 'threads': a plain constant
    assert set(fixed.free) == {"warmup"} and fixed.governed == lm.governed
    assert set(fixed.optuna_distributions()) == {"lr", "batch_size", "warmup"}
    assert set(lm.free) == {"weight_decay", "warmup"}  # the original is unchanged
    with pytest.raises(RaylawError, match=r"constant lr=0\.01: lr is governed by the law"):
        lm.fix({"lr": 0.01})
    for bad in (5.0, "high", True):
        with pytest.raises(RaylawError, match=r"weight_decay=.*expected a number in "
                                              r"\[0\.001, 0\.3\].*space 'lm'"):
            lm.fix({"weight_decay": bad})


def test_a_law_for_another_space_is_refused_by_the_python_api_too():
    from raylaw import LawSampler, enqueue_prediction, narrowed_distributions

    law = ScalingLaw.for_space(SearchSpace.load(STEPLAW_SPACE), prior="steplaw")
    lm = SearchSpace.load(LM_SPACE)
    scale = {"N": 1e5, "D": 2e6}
    for make in (lambda: LawSampler(law, lm, scale), lambda: narrowed_distributions(law, lm, scale),
                 lambda: lm.tune_space(law, scale),
                 lambda: enqueue_prediction(optuna.create_study(), law, lm, scale)):
        with pytest.raises(RaylawError, match="law fitted for space 'steplaw', not 'lm'"):
            make()
