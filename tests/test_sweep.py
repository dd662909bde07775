"""Sweeps on a real embedded Ray: store, ASHA, statuses, refit, versions, crash safety."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from raylaw import ScalingLaw, SearchSpace
from raylaw.cli import main
from raylaw.history import versions
from raylaw.optuna import LawSampler
from raylaw.records import most_at_once
from tests.conftest import LM_SPACE, ROOT

pytestmark = pytest.mark.ray


def sweep_args(tmp_path, *extra, scale=("N=1e5", "D=1e5"), samples=4,
               trainable="tests.synthetic:bowl"):
    args = ["sweep", "--space", str(LM_SPACE), "--samples", str(samples),
            "--store", f"sqlite:///{tmp_path / 'store.db'}", "--law", str(tmp_path / "law.json"),
            "--results", str(tmp_path / "results"), "--verbose", "0", "--max-failures", "0"]
    for s in scale:
        args += ["--scale", s]
    if trainable:
        args += ["--trainable", trainable]
    return args + list(extra)


def start_driver(args: list[str]) -> subprocess.Popen:
    """``python -m raylaw.tune ARGS`` in its own process group (so a test can SIGKILL it all)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "raylaw.tune", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    names = optuna.get_all_study_names(storage)
    assert len(names) == 1
    return optuna.load_study(study_name=names[0], storage=storage).get_trials()


def test_sweep_with_the_built_in_lm_end_to_end(ray_local, tmp_path, capsys):
    code = main(sweep_args(tmp_path, "--config", "eval_every=4", "--config", "weight_decay=0.02",
                           scale=("N=2e4", "D=6e4"), samples=3, trainable=None))
    out = capsys.readouterr().out
    assert code == 0
    assert "== sweep lm[" in out and "law version 1 written" in out and "tokens trained" in out
    ts = trials(tmp_path)
    assert len(ts) == 3
    for t in ts:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        assert t.user_attrs["raylaw_status"] in ("completed", "stopped", "diverged")
        assert t.user_attrs["resources"] == {"cpu": 1.0, "gpu": 0.0}
        assert t.user_attrs["device"] == "cpu"  # no GPU asked for: CPU even on a GPU node
        assert set(t.params) == {"lr", "batch_size", "warmup"}  # weight decay held, not searched
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert done and all(len(t.intermediate_values) >= 2 for t in done)  # learning curves kept
    for t in ts:  # ASHA's rungs went to the trainable: evaluated there, after a cooldown
        if t.user_attrs["raylaw_status"] in ("completed", "stopped"):
            assert min(t.intermediate_values) == math.ceil(6e4 / 9 / (128 * t.params[
                "batch_size"])) * 128 * t.params["batch_size"]
            assert t.user_attrs["spent"] > t.user_attrs["fidelity"]
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    (name,) = optuna.get_all_study_names(storage)
    assert optuna.load_study(study_name=name, storage=storage).user_attrs["fixed"] == {
        "weight_decay": 0.02}
    ran = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("params.json")]
    assert len(ran) == 3 and all(c["weight_decay"] == 0.02 for c in ran)  # what trials got
    assert "weight_decay=0.02" in out  # the best trial's config, held value included
    law = json.loads((tmp_path / "law.json").read_text())
    assert law["provenance"]["version"] == 1 and len(law["optima"]) == 1
    assert [p.name for p in versions(tmp_path / "law.json")] == ["v0001.json"]


def test_asha_stops_poor_trials_and_refit_versions_the_law(ray_local, tmp_path, capsys):
    assert main(sweep_args(tmp_path, "--config", "sleep=0.2", samples=8)) == 0
    first = capsys.readouterr().out
    ts = trials(tmp_path)
    statuses = [t.user_attrs["raylaw_status"] for t in ts]
    # async ASHA (reduction 3) lets about 1 in 9 trials run to full length; the first always does
    assert len(ts) == 8 and statuses.count("completed") >= 1, statuses
    assert statuses.count("stopped") >= 1, statuses  # ASHA cut some off at a lower fidelity
    centers = [t for t in ts if t.user_attrs.get("law_center")]  # the law's prediction
    assert [t.number for t in centers] == [0] and centers[0].state == TrialState.COMPLETE
    for t in ts:
        if t.user_attrs["raylaw_status"] == "stopped":
            assert t.state == TrialState.PRUNED and t.user_attrs["fidelity"] < 1e5
        if t.user_attrs["raylaw_status"] == "completed":
            assert t.state == TrialState.COMPLETE and t.user_attrs["fidelity"] >= 1e5
        # the learning curve ends where the trial ended (ASHA's stopping point included)
        assert max(t.intermediate_values) == int(t.user_attrs["fidelity"])
    assert "law version 1 written" in first
    assert f"law's prediction, trained to full length: {centers[0].value:.5g}" in first
    # a second sweep at another scale refits from both and keeps version 1
    assert main(sweep_args(tmp_path, scale=("N=4e5", "D=4e5"), samples=4)) == 0
    assert [p.name for p in versions(tmp_path / "law.json")] == ["v0001.json", "v0002.json"]
    assert main(["history", str(tmp_path / "law.json")]) == 0
    hist = capsys.readouterr().out
    assert "v0001" in hist and "v0002" in hist


def test_asha_never_stops_the_laws_prediction(ray_local, tmp_path):
    space = SearchSpace.load(LM_SPACE)
    scale = {"N": 1e5, "D": 1e5}
    law = ScalingLaw.for_space(space, prior="steplaw")  # what a sweep with no --law file uses
    center = LawSampler(law, space, scale).predictions["lr"].center
    assert main(sweep_args(tmp_path, "--config", f"worst_lr={center!r}", "--config", "sleep=0.05",
                           samples=9, trainable="tests.synthetic:worst_center")) == 0
    ts = trials(tmp_path)
    kept = [t for t in ts if t.user_attrs.get("law_center")]
    assert len(kept) == 1 and kept[0].params["lr"] == pytest.approx(center, rel=1e-9)
    assert kept[0].user_attrs["raylaw_status"] == "completed", kept[0].user_attrs
    assert kept[0].value > 10  # the worst trial at every rung, trained to the end all the same
    statuses = [t.user_attrs["raylaw_status"] for t in ts]
    assert "stopped" in statuses, statuses  # the others are still ASHA's to stop


def test_trials_that_start_slowly_still_start_together(ray_local, tmp_path):
    """Each trial's process takes 4 s to import its trainable (as torch and CUDA take ~10 s on a
    GPU node); 4 trials fit at once (0.5 CPU each). Tune, left to itself, starts the next trial
    only once the last one runs, so at most 2 of them would overlap (seen on one H200 at 0.25
    GPU per trial); the sweep lets as many wait as fit, and the store shows all 4 at once."""
    assert main(sweep_args(tmp_path, "--cpus-per-trial", "0.5", "--grace-fraction", "1",
                           "--config", "sleep=3.0", "--config", "reports=4", samples=4,
                           trainable="tests.slow_start:bowl")) == 0
    ts = trials(tmp_path)
    assert len(ts) == 4 and all(t.user_attrs["raylaw_status"] == "completed" for t in ts)
    assert most_at_once(ts) == 4, [t.user_attrs["ran"] for t in ts]


def test_diverging_and_crashing_trials_do_not_fail_the_sweep(ray_local, tmp_path):
    # lr above 0.015 diverges (the prior's center here, always the first trial, is 0.0169);
    # above 0.1 the trainable raises
    code = main(sweep_args(tmp_path, "--config", "diverge_above=0.015",
                           "--config", "raise_above=0.1", samples=8))
    assert code == 0
    ts = trials(tmp_path)
    by = {}
    for t in ts:
        by.setdefault(t.user_attrs["raylaw_status"], []).append(t)
    assert "diverged" in by, [t.params["lr"] for t in ts]
    assert all(t.state == TrialState.FAIL for t in by["diverged"])
    assert all(t.params["lr"] > 0.015 for t in by["diverged"])
    for t in by.get("errored", []):
        assert t.state == TrialState.FAIL and t.params["lr"] > 0.1
    law = json.loads((tmp_path / "law.json").read_text())
    assert law["optima"][0]["n_excluded"] >= len(by["diverged"])


def test_summary_shows_an_optimum_on_the_floor_as_a_bound():
    from raylaw.law import Optimum, Prediction, ScalingLaw
    from raylaw.progress import format_summary
    from raylaw.space import SearchSpace
    from raylaw.sweep import SweepResult

    space = SearchSpace.load(LM_SPACE)
    opt = Optimum({"N": 1e5, "D": 2e6}, {"lr": 0.004, "batch_size": 1.0},
                  {"lr": 0.1, "batch_size": 0.35}, censored={"batch_size": "upper"})
    pred = {"lr": Prediction(0.003, 0.001, 0.009, 0.9, 0.3),
            "batch_size": Prediction(0.5, 0.2, 1.3, 0.9, 0.5)}  # all below 1: respected
    r = SweepResult("s", {"completed": 3}, pred, opt, 1.7, {"lr": 0.004, "batch_size": 1},
                    ScalingLaw.for_space(space), None, None, 1e7, 3e7)
    row = next(line for line in format_summary(r).splitlines() if line.startswith("batch_size"))
    assert "<=1" in row and row.endswith("yes")
    r.prediction["batch_size"] = Prediction(3.0, 1.5, 6.0, 0.9, 0.5)  # the bound says lower
    row = next(line for line in format_summary(r).splitlines() if line.startswith("batch_size"))
    assert row.endswith("NO")
