"""The sweep's console: a line per finished trial, a status line while trials run, and
``--verbose`` 0 (summary only) / 2 (Ray Tune's own output as well)."""

from __future__ import annotations

import re

import optuna
import pytest

from raylaw import progress
from raylaw.cli import main
from tests.test_sweep import sweep_args

pytestmark = pytest.mark.ray


def trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_a_line_per_finished_trial_and_status_lines(ray_local, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "STATUS_EVERY_S", 0.5)
    # lr above 0.1 crashes (recorded as errored): its line ends with the error
    assert main(sweep_args(tmp_path, "--config", "sleep=0.2", "--config", "raise_above=0.1",
                           "--verbose", "1", samples=6)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("sweep lm[D=100000,N=100000]#1: 6 trials, tokens budget 100k")
    assert lines[1].split()[:4] == ["#", "status", "loss", "tokens"]
    assert "lr" in lines[1] and "batch_size" in lines[1] and "best so far" in lines[1]
    done = trials(tmp_path)
    best = min((t.value for t in done if t.state == optuna.trial.TrialState.COMPLETE),
               default=None)
    for t in done:
        status = t.user_attrs["raylaw_status"]
        mark = "*" if t.user_attrs.get("law_center") else " "
        (line,) = [ln for ln in lines if ln.startswith(f"{t.number:>5}{mark} {status:<10}")]
        if status in ("completed", "stopped"):  # the metric where it ended
            assert f"{t.intermediate_values[max(t.intermediate_values)]:.5g}" in line
            fidelity = t.user_attrs["fidelity"]
            assert f"{fidelity / 1e5:.0%}" in line  # how far it got, as a share of the budget
        if status == "errored":
            assert line.endswith("RuntimeError: synthetic crash at lr=" + f"{t.params['lr']}")
        assert f"{t.params['batch_size']}" in line.split()
    last = [ln for ln in lines if re.match(r"^\s+\d+[* ] ", ln)][-1]
    if best is not None:  # the running best, at the end the sweep's best
        assert f"{best:.5g} #" in last
    status_lines = [ln for ln in lines if re.match(r"^  \[\d+s\] \d of 6 finished; running #", ln)]
    assert status_lines, out
    assert "╭" not in out and "Trial status" not in out  # none of Ray Tune's boxes and tables


def test_verbose_0_is_the_summary_and_2_adds_rays_output(ray_local, tmp_path, capsys):
    (tmp_path / "a").mkdir()
    assert main(sweep_args(tmp_path / "a", "--verbose", "0", samples=2)) == 0
    quiet = capsys.readouterr().out
    assert "best so far" not in quiet and "╭" not in quiet
    assert quiet.lstrip().startswith("== sweep lm[")
    (tmp_path / "b").mkdir()
    assert main(sweep_args(tmp_path / "b", "--verbose", "2", samples=2)) == 0
    loud = capsys.readouterr().out
    assert "Trial status" in loud and "best so far" in loud
