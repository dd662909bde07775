"""Faults and bad input: resume after a killed driver, retries, GPU scheduling with logical
GPUs, concurrent sweeps on one store, crash-safe law files, and clear refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from itertools import combinations

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from raylaw import ScalingLaw, SearchSpace
from raylaw.cli import main
from raylaw.history import versions
from raylaw.scheduler import LawASHA
from raylaw.sweep import asha_scheduler
from tests.conftest import LM_SPACE, ROOT, STEPLAW_SPACE
from tests.test_sweep import start_driver, sweep_args

pytestmark = pytest.mark.ray


def study_of(tmp_path):
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def test_resume_after_the_driver_is_killed(ray_local, tmp_path):
    args = sweep_args(tmp_path, "--config", "sleep=0.7", "--config", "reports=4", samples=8)
    proc = start_driver(args)
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    before = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(before) < 3:
            time.sleep(0.5)
            try:
                (name,) = optuna.get_all_study_names(storage)
                study = optuna.load_study(study_name=name, storage=storage)
                before = [t for t in study.get_trials() if t.state != TrialState.RUNNING]
            except Exception:  # noqa: BLE001 - not created yet
                pass
        assert len(before) >= 3
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    at_kill = study_of(tmp_path).get_trials()
    kept = {t.number: t for t in at_kill if t.state != TrialState.RUNNING}
    for t in before:  # the store kept what had finished, as it was
        assert (kept[t.number].state, kept[t.number].value, kept[t.number].intermediate_values,
                kept[t.number].user_attrs["raylaw_status"]) == (
            t.state, t.value, t.intermediate_values, t.user_attrs["raylaw_status"])
    assert not (tmp_path / "law.json").exists()  # the refit never ran: nothing half-written
    running = [t.number for t in at_kill if t.state == TrialState.RUNNING]
    assert main(args + ["--resume"]) == 0
    study = study_of(tmp_path)  # the same study, continued
    ts = study.get_trials()
    assert len(ts) == 8 and all(t.state != TrialState.RUNNING for t in ts)
    assert sorted(t.number for t in ts) == list(range(8))  # each trial exactly once
    by_number = {t.number: t for t in ts}
    for t in before:  # finished trials were not run again
        assert by_number[t.number].datetime_complete == t.datetime_complete
        assert by_number[t.number].value == t.value
    for n in running:  # unfinished ones were, in their own record
        assert by_number[n].user_attrs["raylaw_status"] in ("completed", "stopped")
    assert study.user_attrs["raylaw_sweep"] == "finished"


def test_ctrl_c_leaves_the_sweep_unfinished_and_resume_continues_it(ray_local, tmp_path):
    """Tune ends its run quietly on Ctrl-C; the sweep must not be taken for finished."""
    args = sweep_args(tmp_path, "--config", "sleep=0.7", "--config", "reports=4", samples=5)
    # --resume with nothing to resume starts a new sweep and says so
    proc = subprocess.Popen([sys.executable, "-m", "raylaw.tune", *args, "--resume"], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    try:
        deadline, done = time.time() + 240, 0
        while time.time() < deadline and done < 2:
            time.sleep(0.5)
            try:
                done = sum(t.state != TrialState.RUNNING for t in study_of(tmp_path).trials)
            except Exception:  # noqa: BLE001 - not created yet
                pass
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume: no unfinished sweep at D=100000,N=100000" in err
    assert "raylaw: interrupted: sweep" in err and "--resume continues it" in err
    study = study_of(tmp_path)
    assert study.user_attrs["raylaw_sweep"] == "running"
    assert not (tmp_path / "law.json").exists()  # no refit from a partial sweep
    assert main(args + ["--resume"]) == 0
    study = optuna.load_study(study_name=study.study_name, storage=storage)
    assert len(study.trials) == 5 and study.user_attrs["raylaw_sweep"] == "finished"
    assert (tmp_path / "law.json").exists()


def test_a_trial_cut_off_mid_ask_is_rerun_with_all_its_parameters(tmp_path):
    from raylaw.search import LawSearch

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    dists = SearchSpace.load(LM_SPACE).optuna_distributions()
    cut = study.ask()  # the driver was killed after the first parameter was written
    lr = cut.suggest_float("lr", dists["lr"].low, dists["lr"].high, log=True)
    config = LawSearch(study, dists, "loss", "min", constants={"scale": {"N": 1.0}}).suggest("a")
    assert set(config) == set(dists) | {"scale"} and config["lr"] == lr
    assert study.trials[0].params == {k: config[k] for k in dists}  # the same record, completed


def test_a_retried_lm_trial_continues_from_its_checkpoint_and_its_curve_is_one_run(
        ray_local, tmp_path):
    marker = tmp_path / "runs"
    marker.mkdir()
    args = sweep_args(tmp_path, "--config", f"marker_dir={json.dumps(str(marker))}",
                      "--config", "eval_every=4", "--grace-fraction", "1", scale=("N=2e4", "D=6e4"),
                      samples=1, trainable="tests.synthetic:lm_crash_once")
    args[args.index("--max-failures") + 1] = "1"
    assert main(args) == 0
    (t,) = study_of(tmp_path).get_trials()
    assert t.user_attrs["raylaw_status"] == "completed"
    run1, run2 = ({int(k): v for k, v in json.loads((marker / f"run{i}.json").read_text()).items()}
                  for i in (1, 2))
    steps = sorted(run1)
    assert len(run1) == 3 and min(run2) == steps[1]  # continued from report 1's checkpoint
    assert sorted(t.intermediate_values) == sorted({*run1, *run2}) and len(run2) == 3
    # the curve is the finished model's: report 1 from the run it continued from, the rest
    # (reports 2 and 3 repeated, then 4) from the retry, none of the crashed run's repeats
    assert t.intermediate_values == {steps[0]: run1[steps[0]], **run2}
    assert t.value == run2[max(run2)]


def test_a_rerun_trial_gets_its_last_checkpoint_and_repeated_steps_replace_earlier_ones(
        tmp_path):
    from raylaw.search import LawSearch

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    dists = SearchSpace.load(LM_SPACE).optuna_distributions()
    cut = study.ask(dists)  # a trial of a killed driver, Tune id abc12345, 2 points reported
    cut.set_user_attr("ray_trial_id", "abc12345")
    for step, v in ((100, 3.0), (200, 2.5)):
        cut.report(v, step)
    exp = tmp_path / "experiment"
    for c in ("checkpoint_000000", "checkpoint_000001"):  # Tune keeps the newest (num_to_keep)
        (exp / "train_abc12345_1_lr=0.01_2026-01-01" / c).mkdir(parents=True)
    (exp / "train_ffff0000_2_lr=0.02_2026-01-01" / "checkpoint_000009").mkdir(parents=True)
    search = LawSearch(study, dists, "loss", "min", fidelity="tokens", budget=300,
                       experiment_dir=str(exp))
    config = search.suggest("new00001")
    assert config["restore_from"].endswith("train_abc12345_1_lr=0.01_2026-01-01/checkpoint_000001")
    search.on_trial_result("new00001", {"loss": 2.4, "tokens": 200})  # repeated after a restore
    search.on_trial_complete("new00001", {"loss": 2.2, "tokens": 300})
    (t,) = study.get_trials()
    assert t.intermediate_values == {100: 3.0, 200: 2.4, 300: 2.2} and t.value == 2.2
    assert "restore_from" not in LawSearch(study, dists, "loss", "min").suggest("x")  # a new one


def test_resumed_asha_keeps_its_rung_results(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage)
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1, log=True)}
    for i, final in enumerate((2.5, 2.2, 2.9)):
        t = optuna.trial.create_trial(params={"lr": 0.01 * (i + 1)}, distributions=dist,
                                      value=final, intermediate_values={
                                          120: final + 0.6, 340: final + 0.3, 1000: final})
        study.add_trial(t)
    sched = LawASHA(time_attr="tokens", metric="loss", mode="min", max_t=1000,
                    grace_period=1000 / 9, reduction_factor=3)
    sched.restore(study, SearchSpace.load(LM_SPACE).mode)
    rungs = {round(m): rec for m, rec in sched._brackets[0]._rungs}
    assert sorted(rungs[111].values()) == pytest.approx([-3.5, -3.1, -2.8])  # minus the loss
    assert sorted(rungs[333].values()) == pytest.approx([-3.2, -2.8, -2.5])


def test_asha_never_stops_the_laws_own_prediction():
    """LawASHA stops the kept trial's peers as ASHA would, never the kept trial before max_t."""
    from ray.tune.experiment import Trial

    sched = asha_scheduler(SearchSpace.load(LM_SPACE), 900.0)  # rungs 100, 300, 900
    sched.set_search_properties("loss", "min")  # as the Tuner does
    trials = [Trial("bowl", stub=True) for _ in range(4)]
    for t in trials:
        sched.on_trial_add(None, t)
    sched.keep.add(trials[3].trial_id)
    actions = [sched.on_trial_result(None, t, {"tokens": 100.0, "loss": 1.0 + i})
               for i, t in enumerate(trials)]  # each worse than the ones before
    assert actions == ["CONTINUE", "STOP", "STOP", "CONTINUE"]
    rung = dict(sched._brackets[0]._rungs)[100.0]
    assert rung[trials[3].trial_id] == -4.0  # its result still sets the others' cutoff
    assert sched.on_trial_result(None, trials[3], {"tokens": 900.0, "loss": 1.0}) == "STOP"


def test_asha_flags_set_its_rungs_and_grace_fraction_1_turns_it_off(ray_local, tmp_path):
    space = SearchSpace.load(LM_SPACE)
    sched = asha_scheduler(space, 1000.0, grace_fraction=0.25, reduction_factor=2)
    assert sorted(round(m) for m, _ in sched._brackets[0]._rungs) == [250, 500, 1000]
    assert sched.rungs() == [250.0, 500.0]  # what the trainable is told
    assert asha_scheduler(space, 1000.0, grace_fraction=1.0) is None
    # with the default ASHA this sweep completes 1 trial and stops 7
    assert main(sweep_args(tmp_path, "--grace-fraction", "1", samples=8)) == 0
    ts = study_of(tmp_path).get_trials()
    statuses = [t.user_attrs["raylaw_status"] for t in ts]
    assert len(ts) == 8 and "stopped" not in statuses, statuses  # every trial ran to the end
    assert all(t.user_attrs["fidelity"] >= 1e5 for t in ts
               if t.user_attrs["raylaw_status"] == "completed")


def test_crashed_trial_is_retried_then_recorded_as_errored(ray_local, tmp_path, capsys):
    marker = tmp_path / "markers"
    marker.mkdir()
    args = sweep_args(tmp_path / "a", "--config", f"marker_dir={json.dumps(str(marker))}",
                      samples=3, trainable="tests.synthetic:flaky")
    (tmp_path / "a").mkdir()
    args[args.index("--max-failures") + 1] = "1"
    assert main(args + ["--verbose", "1"]) == 0
    statuses = [t.user_attrs["raylaw_status"] for t in study_of(tmp_path / "a").get_trials()]
    assert "errored" not in statuses and len(statuses) == 3  # each crashed once, retried
    out = capsys.readouterr().out  # the first crash in full, each retry in a line
    assert out.count("crashed; its error in full") == 1, out
    assert out.count('synthetic.py", line') == 1  # the trainable's own frame, once
    crashed = {f"{t.params['lr']:.12g}" for t in study_of(tmp_path / "a").get_trials()}
    assert out.count("crashed, retried (1 of 1): RuntimeError: first attempt crashes") == len(
        crashed)  # (one marker per lr: a second trial at an lr does not crash)
    (tmp_path / "b").mkdir()
    marker2 = tmp_path / "markers2"
    marker2.mkdir()
    args = sweep_args(tmp_path / "b", "--config", f"marker_dir={json.dumps(str(marker2))}",
                      samples=2, trainable="tests.synthetic:flaky")
    assert main(args) == 2  # no retries: every trial errored, and says so
    assert "every trial of sweep" in capsys.readouterr().err
    ts = study_of(tmp_path / "b").get_trials()  # ... but the records are kept
    assert [t.user_attrs["raylaw_status"] for t in ts] == ["errored", "errored"]
    assert all(t.state == TrialState.FAIL for t in ts)


def probe_records(probe):
    return [json.loads(p.read_text()) for p in probe.iterdir()]


def overlapping(records):
    return [(a, b) for a, b in combinations(records, 2)
            if a["start"] < b["end"] - 0.05 and b["start"] < a["end"] - 0.05]


@pytest.mark.parametrize("gpus, cpus, samples", [("1", "0.5", 4), ("0.5", "0.5", 4)])
def test_gpu_trials_get_their_own_devices(ray_local, tmp_path, gpus, cpus, samples):
    """The session's Ray advertises 2 logical GPUs: 1 GPU per trial runs at most 2 at once on
    distinct devices; 0.5 packs two trials per device."""
    probe = tmp_path / "probe"
    probe.mkdir()
    # long enough that trials overlap even when a loaded machine starts their workers slowly
    sleep = 4 if gpus == "1" else 8
    args = sweep_args(tmp_path, "--config", f"probe_dir={json.dumps(str(probe))}",
                      "--config", f"sleep={sleep}", "--gpus-per-trial", gpus,
                      "--cpus-per-trial", cpus,
                      samples=samples, trainable="tests.synthetic:gpu_probe")
    assert main(args) == 0
    records = probe_records(probe)
    assert len(records) == samples
    assert all(r["cuda"] in ("0", "1") for r in records)
    pairs = overlapping(records)
    if gpus == "1":
        for a, b in pairs:
            assert a["cuda"] != b["cuda"]  # concurrent trials never share a GPU
        for r in records:  # never more than 2 at once
            assert sum(o["start"] < r["start"] < o["end"] for o in records if o is not r) <= 1
    else:
        assert any(a["cuda"] == b["cuda"] for a, b in pairs)  # packed two per GPU
        assert {r["cuda"] for r in records} <= {"0", "1"}
    assert {t.user_attrs["resources"]["gpu"] for t in study_of(tmp_path).get_trials()} == {
        float(gpus)}


def test_lm_trainable_falls_back_to_cpu_on_a_logical_gpu(ray_local, tmp_path):
    args = sweep_args(tmp_path, "--config", "eval_every=2", "--gpus-per-trial", "1",
                      scale=("N=2e4", "D=2e4"), samples=1, trainable=None)
    assert main(args) == 0
    (t,) = study_of(tmp_path).get_trials()
    assert t.state == TrialState.COMPLETE and t.user_attrs["resources"]["gpu"] == 1.0


def test_two_sweeps_share_one_store(tmp_path):
    common = ["--store", f"sqlite:///{tmp_path / 'store.db'}", "--law", str(tmp_path / "l.json")]
    procs = []
    for scale in ("N=1e5", "N=4e5"):
        args = sweep_args(tmp_path, scale=(scale, "D=1e5"), samples=3)
        for flag in ("--store", "--law", "--results"):
            i = args.index(flag)
            del args[i:i + 2]
        procs.append(start_driver(args + common + ["--results", str(tmp_path / scale)]))
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    names = optuna.get_all_study_names(storage)
    assert len(names) == 2
    for name in names:
        ts = optuna.load_study(study_name=name, storage=storage).get_trials()
        assert len(ts) == 3 and all(t.state != TrialState.RUNNING for t in ts)
    assert len(versions(tmp_path / "l.json")) == 2
    assert len(ScalingLaw.load(tmp_path / "l.json").optima) == 2


SAVER = """
import sys
from raylaw import Optimum, ScalingLaw, SearchSpace
space = SearchSpace.load(sys.argv[2])
law = ScalingLaw.for_space(space, prior="steplaw")
law.fit([Optimum({"N": 1e8 * (1 + i % 7), "D": 2e9 * (1 + i % 5)}, {"lr": 1e-3, "bs": 100},
                 {"lr": 0.1, "bs": 0.1}) for i in range(400)])
print("ready", flush=True)
while True:
    law.save(sys.argv[1])
"""


def test_a_law_file_is_never_half_written(tmp_path):
    path = tmp_path / "law.json"
    ScalingLaw.for_space(SearchSpace.load(STEPLAW_SPACE)).save(path)
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path), str(STEPLAW_SPACE)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ScalingLaw.load(path)  # always a complete, valid law


@pytest.mark.parametrize("case, expect", [
    ("unknown_field", "unknown field 'colour'"),
    ("reversed_bounds", "low (0.3) must be below high (0.0001)"),
    ("missing_scale", "missing scale variable 'D'"),
    ("nonpositive_scale", "N=-5"),
    ("bad_trainable", "cannot import module 'no_such_module'"),
    ("trainable_no_function", "has no function 'nope'"),
    ("law_other_space", "fitted for space 'steplaw', not 'lm'"),
    ("unreachable_address", "cannot reach a Ray cluster"),
    ("bad_store", "does not exist"),
    ("bad_store_driver", "--store"),
    ("bad_grace", "--grace-fraction 0: expected a share of the budget in (0, 1]"),
    ("bad_reduction", "--reduction-factor 1: expected an integer >= 2"),
    ("fixed_governed", "constant lr=0.01: lr is governed by the law of space 'lm'"),
    ("fixed_out_of_range", "constant weight_decay=5: expected a number in [0.001, 0.3]"),
    ("lm_unknown_config", "refuses the trials' config: config nosuchkey: not a setting"),
    ("scale_twice", "--scale N: given twice (100000 and 60000)"),
    ("no_concurrency", "--max-concurrent 0: expected an integer >= 1"),
    ("negative_retries", "--max-failures -1: expected an integer >= 0"),
])
def test_sweep_refuses_bad_input(tmp_path, capsys, case, expect):
    space = yaml.safe_load(LM_SPACE.read_text())
    scale = ("N=1e5", "D=1e5")
    extra, trainable = [], "tests.synthetic:bowl"
    if case == "unknown_field":
        space["colour"] = "red"
    elif case == "reversed_bounds":
        space["governed"]["lr"].update(low=0.3, high=1e-4)
    elif case == "missing_scale":
        scale = ("N=1e5",)
    elif case == "nonpositive_scale":
        scale = ("N=-5", "D=1e5")
    elif case == "bad_trainable":
        trainable = "no_such_module:train"
    elif case == "trainable_no_function":
        trainable = "tests.synthetic:nope"
    elif case == "law_other_space":
        ScalingLaw.for_space(SearchSpace.load(STEPLAW_SPACE)).save(tmp_path / "law.json")
    elif case == "unreachable_address":
        extra = ["--address", "127.0.0.1:1"]
    elif case == "bad_grace":
        extra = ["--grace-fraction", "0"]
    elif case == "bad_reduction":
        extra = ["--reduction-factor", "1"]
    elif case == "fixed_governed":
        extra = ["--config", "lr=0.01"]
    elif case == "fixed_out_of_range":
        extra = ["--config", "weight_decay=5"]
    elif case == "lm_unknown_config":
        extra, trainable = ["--config", "nosuchkey=3"], "raylaw.trainables.lm:train"
    elif case == "scale_twice":
        scale = ("N=1e5", "D=1e5", "N=6e4")
    elif case == "no_concurrency":
        extra = ["--max-concurrent", "0"]
    elif case == "negative_retries":
        extra = ["--max-failures", "-1"]
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    args = sweep_args(tmp_path, *extra, scale=scale, trainable=trainable)
    args[args.index("--space") + 1] = str(space_file)
    if case == "bad_store":
        args[args.index("--store") + 1] = f"sqlite:///{tmp_path / 'nope' / 'store.db'}"
    elif case == "bad_store_driver":
        args[args.index("--store") + 1] = "nosuchdb://user@127.0.0.1:1/x"
    law_before = (tmp_path / "law.json").read_bytes() if case == "law_other_space" else None
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("raylaw: error:"), err
    assert expect in err
    assert not (tmp_path / "store.db").exists()
    if law_before is None:
        assert not (tmp_path / "law.json").exists()
    else:
        assert (tmp_path / "law.json").read_bytes() == law_before


def test_a_sqlite_store_keeps_a_write_ahead_log_and_syncs_every_commit(tmp_path):
    from raylaw.store import open_store

    storage = open_store(str(tmp_path / "s.db"))  # a plain path is a SQLite file
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
