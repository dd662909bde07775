"""The store on a real PostgreSQL server (one per test session, 127.0.0.1, tests/pg_server.py):
a ladder of sweeps and a law fitted from its studies, two drivers at once on one new database,
a killed driver resumed, and clear refusals from a database that is not there."""

from __future__ import annotations

import os
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from raylaw import ScalingLaw, SearchSpace
from raylaw.cli import main
from raylaw.errors import RaylawError
from raylaw.history import versions
from raylaw.optuna import law_from_studies
from tests.conftest import LM_SPACE
from tests.test_sweep import start_driver, sweep_args

pytestmark = pytest.mark.ray


def on(url: str, args: list[str]) -> list[str]:
    """``args`` with ``--store url``."""
    args = list(args)
    args[args.index("--store") + 1] = url
    return args


def studies(url: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    return {name: optuna.load_study(study_name=name, storage=url).get_trials()
            for name in optuna.get_all_study_names(url)}


def session_address(ray_local) -> str:
    """The session's Ray, for drivers in other processes to join (no Ray start of their own)."""
    return ray_local.get_runtime_context().gcs_address


def test_ladder_on_postgres_and_a_law_from_its_studies(ray_local, postgres, tmp_path, capsys):
    url = postgres.url("ladder")
    args = on(url, sweep_args(tmp_path, samples=3))
    i = args.index("--scale")
    args[i:i + 4] = ["--scales", "N=1e5,D=1e5;N=4e5,D=1e5"]
    args[0] = "ladder"
    assert main(args + ["--verbose", "1"]) == 0
    out = capsys.readouterr().out
    assert "### ladder step 1 of 2: N=100000, D=100000" in out
    assert "ladder step 2 of 2: sweep lm[D=100000,N=400000]#1: 3 trials" in out
    found = studies(url)
    assert len(found) == 2
    for trials in found.values():
        assert len(trials) == 3 and all(t.state != TrialState.RUNNING for t in trials)
        assert all(t.user_attrs["raylaw_status"] for t in trials)
    law = ScalingLaw.load(tmp_path / "law.json")
    assert [p.name for p in versions(tmp_path / "law.json")] == ["v0001.json", "v0002.json"]
    assert len(law.optima) == 2
    # the same law, fitted from the stored studies by the Python API (postgresql:// is psycopg)
    again = law_from_studies(url.replace("+psycopg", ""), SearchSpace.load(LM_SPACE))
    assert sorted(o.scale["N"] for o in again.optima) == [1e5, 4e5]
    for name, s in again.summary().items():
        assert s["coef"] == pytest.approx(law.summary()[name]["coef"], rel=1e-6, abs=1e-9)


def test_two_sweeps_at_once_on_one_new_database(ray_local, postgres, tmp_path):
    url = postgres.url("two_at_once")  # empty: both drivers create Optuna's tables at once
    procs = []
    for scale in ("N=1e5", "N=4e5"):
        (tmp_path / scale).mkdir()
        args = on(url, sweep_args(tmp_path / scale, scale=(scale, "D=1e5"), samples=3))
        procs.append(start_driver(args + ["--address", session_address(ray_local)]))
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    found = studies(url)
    assert sorted(found) == ["lm[D=100000,N=100000]#1", "lm[D=100000,N=400000]#1"]
    for trials in found.values():
        assert len(trials) == 3 and all(t.state != TrialState.RUNNING for t in trials)


def test_driver_killed_then_resumed_on_postgres(ray_local, postgres, tmp_path):
    url = postgres.url("resume")
    args = on(url, sweep_args(tmp_path, "--config", "sleep=0.7", "--config", "reports=4",
                              samples=6))
    proc = start_driver(args + ["--address", session_address(ray_local)])
    before: list = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(before) < 2:
            time.sleep(0.5)
            for trials in studies(url).values():
                before = [t for t in trials if t.state != TrialState.RUNNING]
        assert len(before) >= 2, "the driver never finished two trials"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    ((name, trials),) = studies(url).items()
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    assert main(args + ["--resume"]) == 0
    ((name2, trials),) = studies(url).items()
    assert name2 == name and sorted(t.number for t in trials) == list(range(6))
    by_number = {t.number: t for t in trials}
    assert all(t.state != TrialState.RUNNING for t in trials)
    for t in before:  # finished trials were not run again
        assert by_number[t.number].datetime_complete == t.datetime_complete
        assert by_number[t.number].intermediate_values == t.intermediate_values
    for n in running:  # the interrupted ones were, in their own records
        assert by_number[n].user_attrs["raylaw_status"] in ("completed", "stopped")
    assert optuna.load_study(study_name=name, storage=url).user_attrs["raylaw_sweep"] == "finished"


@pytest.mark.parametrize("case", ["refused", "no_database", "no_role"])
def test_a_database_that_is_not_there_is_one_line_and_writes_nothing(postgres, tmp_path, capsys,
                                                                       case):
    good = postgres.url(f"refusals_{case}")
    host = f"127.0.0.1:{postgres.port}"
    url = {"refused": "postgresql+psycopg://raylaw:s3cret@127.0.0.1:1/raylaw",  # nothing there
           "no_database": f"postgresql+psycopg://raylaw@{host}/no_such_database",
           "no_role": f"postgresql+psycopg://no_such_role@{host}/refusals_{case}"}[case]
    t0 = time.time()
    assert main(on(url, sweep_args(tmp_path))) == 2
    assert time.time() - t0 < 30
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("raylaw: error: --store "), err
    assert {"refused": "Connection refused", "no_database": "no_such_database",
            "no_role": "no_such_role"}[case] in err
    assert "s3cret" not in err  # a password never reaches the console
    with pytest.raises(RaylawError, match="--store postgresql"):
        law_from_studies(url, SearchSpace.load(LM_SPACE))
    assert not (tmp_path / "law.json").exists() and not (tmp_path / "results").exists()
    assert optuna.get_all_study_names(good) == []  # nothing was written anywhere


def test_a_sweep_started_at_the_same_moment_takes_the_next_name(postgres):
    from raylaw.records import create_sweep
    from raylaw.store import open_store

    space, scale = SearchSpace.load(LM_SPACE), {"N": 1e5, "D": 1e5}
    storage = open_store(postgres.url("same_scale"))
    # another driver created '#1' between this one's count of the sweeps and its own create
    optuna.create_study(study_name="lm[D=100000,N=100000]#1", storage=storage)
    study, resumed = create_sweep(storage, space, scale, "min", optuna.samplers.RandomSampler(),
                                  resume=False)
    assert study.study_name == "lm[D=100000,N=100000]#2" and not resumed
    with pytest.raises(RaylawError, match="--study lm.*#2: a sweep of that name exists"):
        create_sweep(storage, space, scale, "min", optuna.samplers.RandomSampler(), False,
                     name=study.study_name)
