"""Sweeps submitted as Ray jobs to the local two-node test cluster (marker: cluster).

One cluster for the module, started with cluster/start_local.sh in its own temp dir on free
ports (head: CPUs, dashboard + job server; worker: 2 logical GPUs), stopped with
cluster/stop_local.sh however the tests end, after which no process of it may be left.

1. ``ray job submit`` of ``python -m raylaw.tune sweep`` with the repo as working dir and the
   store / law as absolute paths (a shared file system): the job succeeds, the store holds the
   sweep with every trial finished, and the law has its first version.
2. A sweep whose trials need a GPU (so they run on the worker node) loses that node to a crash
   (``stop_local.sh --worker --kill``) mid-sweep. The driver runs on the head (Ray schedules a
   job's driver there) and survives; Tune sees the trial actors die, counts a failure per
   trial (``--max-failures``), and the retries wait for GPUs until a worker joins again
   (``start_local.sh --worker``). Trials finished before the crash are untouched in the store,
   the interrupted ones are retried as the same Optuna trials and finish, none is lost.
3. A sweep of 2-worker trials (``--workers-per-trial 2``) whose workers each need 2 CPUs, a
   whole node: every trial's workers run on both nodes, in one gloo process group.

The tests run in file order (the second restarts the worker). ~65-80 s on this 2-core machine
under other people's load (cluster start ~10-15 s, job ~17 s, crash ~35 s, stop ~5 s), plus
~45 s for the 2-worker sweep; ~5 min when both cores are saturated.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cluster_util import (
    CLUSTER_MARKS,
    ScriptCluster,
    free_ports,
    read_env_sh,
)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = CLUSTER_MARKS

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# What the job's working-dir upload leaves out (Ray also skips what .gitignore names).
RUNTIME_ENV = {"excludes": [".git", ".venv", "venv", "*.db", "*.db-journal", "results", "runs",
                            "__pycache__", ".pytest_cache", ".ruff_cache"],
               "env_vars": {"PYTHONUNBUFFERED": "1"}}


@dataclass
class Cluster(ScriptCluster):
    client_env: dict = field(default_factory=dict)  # + the env.sh the scripts write
    jobs: dict = field(default_factory=dict)  # submission id -> store URL, for teardown

    @property
    def job_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def submit(self, *sweep_args: str) -> str:
        """``ray job submit --no-wait`` of a sweep with the repo as working dir; its id."""
        sid = f"raylaw-test-{uuid.uuid4().hex[:10]}"
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit",
               "--address", self.job_url, "--submission-id", sid, "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps(RUNTIME_ENV), "--no-wait", "--",
               "python", "-m", "raylaw.tune", "sweep", *sweep_args]
        self.jobs[sid] = next(a for a in sweep_args if a.startswith("sqlite:///"))
        r = subprocess.run(cmd, env=self.client_env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"ray job submit: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        return sid

    def _api(self, path: str, method: str = "GET") -> dict:
        req = urllib.request.Request(f"{self.job_url}/api/jobs/{path}", method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def status(self, sid: str) -> str:
        return self._api(sid)["status"]

    def logs(self, sid: str) -> str:
        try:
            return self._api(f"{sid}/logs").get("logs", "")
        except OSError as e:
            return f"(no logs: {e})"

    def stop_job(self, sid: str) -> None:
        try:
            if self.status(sid) not in TERMINAL:
                self._api(f"{sid}/stop", method="POST")
        except OSError:
            pass

    def wait(self, sid: str, timeout: float = 180) -> str:
        """Poll the job until it ends; fail with its logs unless it SUCCEEDED."""
        deadline = time.monotonic() + timeout
        status = self.status(sid)
        while status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(1)
            status = self.status(sid)
        if status != "SUCCEEDED":
            logs = self.logs(sid)
            print(f"--- logs of job {sid} ({status}) ---\n{logs}")
            pytest.fail(f"job {sid} is {status} after {timeout:.0f}s; log tail:\n{logs[-4000:]}")
        return self.logs(sid)


def processes_naming(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (job drivers name their store path)."""
    found = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if text.encode() in (p / "cmdline").read_bytes():
                found.append(int(p.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


@pytest.fixture(scope="module")
def cluster():
    # short dir: Ray's unix sockets live under it (path limit ~107 bytes)
    base = Path(tempfile.mkdtemp(prefix="rlj-", dir="/tmp"))
    gcs, dash, client = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYLAW_"))}
    # job entrypoints run `python` from the Ray processes' PATH: make it this interpreter
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(RAYLAW_CLUSTER_DIR=str(base), RAYLAW_RAY_PORT=str(gcs),
               RAYLAW_DASHBOARD_PORT=str(dash), RAYLAW_CLIENT_PORT=str(client),
               RAYLAW_WORKER_GPUS="2", RAYLAW_HEAD_CPUS="2", RAYLAW_WORKER_CPUS="2",
               RAYLAW_OBJECT_STORE_MB="128", RAYLAW_PYTHON=sys.executable,
               RAYLAW_START_TIMEOUT="90", RAYLAW_STOP_GRACE="10",
               # the GCS declares a crashed (SIGKILLed) node dead after ~1.5 s, not ~15 s;
               # a live but busy raylet still has the default 10 s to answer each check
               RAY_health_check_period_ms="500", RAY_health_check_failure_threshold="3",
               # Ray Train's controller polls its workers every 0.25 s, not 2 s (tests/conftest)
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.25")
    c = Cluster(base, gcs, dash, env)
    try:
        c.script("start_local.sh")
        c.client_env = dict(env, **read_env_sh(base / "env.sh"))
        yield c
    finally:
        for sid in c.jobs:
            c.stop_job(sid)
        # besides the nodes: processes naming the cluster dir, and job drivers naming their store
        c.tear_down(lambda: processes_naming(str(base)) + [
            pid for store in c.jobs.values() for pid in processes_naming(store)])


def sweep_args(tmp: Path, *extra: str, samples: int) -> list[str]:
    return ["--space", "search_spaces/lm.yaml", "--scale", "N=1e5", "--scale", "D=1e5",
            "--samples", str(samples), "--trainable", "tests.synthetic:bowl",
            "--store", f"sqlite:///{tmp / 'store.db'}", "--law", str(tmp / "law.json"),
            "--results", str(tmp / "results"), "--verbose", "0", *extra]


def store_trials(tmp: Path) -> list:
    """The trials of the one sweep in the store, read fresh; [] until the job created it."""
    import optuna

    from raylaw.store import open_store

    db = tmp / "store.db"
    if not db.exists():
        return []
    try:  # read-only peek first: opening the store with Optuna could race the job's schema
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            if not con.execute("SELECT count(*) FROM studies").fetchone()[0]:
                return []
    except sqlite3.OperationalError:
        return []
    storage = open_store(f"sqlite:///{db}")
    try:
        names = optuna.get_all_study_names(storage)
        assert len(names) == 1, names
        return optuna.load_study(study_name=names[0], storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def test_ray_job_submit_runs_a_sweep_end_to_end(cluster, tmp_path):
    from optuna.trial import TrialState

    from raylaw.history import versions

    sid = cluster.submit(*sweep_args(tmp_path, samples=3))
    logs = cluster.wait(sid, timeout=180)
    assert "law version 1 written" in logs, logs[-3000:]
    ts = store_trials(tmp_path)
    assert len(ts) == 3
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ts), ts
    assert {t.user_attrs["raylaw_status"] for t in ts} <= {"completed", "stopped"}
    assert any(t.state == TrialState.COMPLETE for t in ts)
    assert [p.name for p in versions(tmp_path / "law.json")] == ["v0001.json"]
    assert json.loads((tmp_path / "law.json").read_text())["provenance"]["version"] == 1


def tune_failures(results: Path) -> dict[str, int]:
    """Tune's failure count per trial id, from the experiment state it saves in ``results``
    (synced there periodically and at the end of the run)."""
    counts: dict[str, int] = {}
    for state in results.glob("*/experiment_state-*.json"):
        data = json.loads(state.read_text())
        for json_state, runtime in data["trial_data"]:
            trial_id = json.loads(json_state)["trial_id"]
            counts[trial_id] = max(counts.get(trial_id, 0), json.loads(runtime)["num_failures"])
    return counts


def errored_trials(logs: str, trials: list) -> set[str]:
    """Tune trial ids of the trials that the driver's console says crashed and were retried
    (raylaw's ``<number>  crashed, retried (k of n): ...`` lines, Optuna numbers)."""
    numbers = {int(n) for n in re.findall(r"^\s*(\d+)\s+crashed, retried", logs, re.M)}
    return {t.user_attrs["ray_trial_id"] for t in trials
            if t.number in numbers and "ray_trial_id" in t.user_attrs}


def training_on(pids: list[int]) -> list[int]:
    """The pids among ``pids`` that run a Tune trial now (Ray titles them ``ray::Class.method``;
    a function trainable's actor is ImplicitFunc, its running task ``train``)."""
    out = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc.train"):
                out.append(pid)
        except OSError:
            continue
    return out


def test_worker_node_crash_mid_sweep_loses_nothing(cluster, tmp_path):

    sid = cluster.submit(*sweep_args(
        tmp_path, "--gpus-per-trial", "1", "--config", "sleep=1.0", "--config", "reports=4",
        "--max-failures", "3", "--verbose", "1", samples=6))
    # wait for 2 finished trials while a trial is running on the worker (all GPUs are there)
    deadline = time.monotonic() + 150
    while True:
        done = [t for t in store_trials(tmp_path) if t.state.is_finished()]
        if len(done) >= 2 and training_on(cluster.pids("worker")):
            break
        status = cluster.status(sid)
        if status in TERMINAL or time.monotonic() > deadline:
            pytest.fail(f"job {sid} {status} with {len(done)} finished trials;\n"
                        f"{cluster.logs(sid)[-4000:]}")
        time.sleep(0.3)

    cluster.script("stop_local.sh", "--worker", "--kill")  # a crash: SIGKILL, no goodbye
    try:
        after_the_crash(cluster, sid, tmp_path)
    finally:  # the next tests need both nodes, whatever failed here
        if not cluster.pids("worker"):
            cluster.script("start_local.sh", "--worker")


def after_the_crash(cluster, sid: str, tmp_path: Path) -> None:
    """The rest of test_worker_node_crash_mid_sweep_loses_nothing, once the worker is killed."""
    from optuna.trial import TrialState

    assert cluster.pids("worker") == []
    at_kill = {t.number: t for t in store_trials(tmp_path)}
    before = {n: t for n, t in at_kill.items() if t.state.is_finished()}
    interrupted = {n: t for n, t in at_kill.items() if t.state == TrialState.RUNNING}
    mid_way = {t.user_attrs["ray_trial_id"] for t in interrupted.values() if t.intermediate_values}
    assert len(before) >= 2 and interrupted

    # The GCS declares the node dead (missed health checks), its actors die with it, and Tune
    # counts a failure for every trial that had an actor there (running, or placed and not yet
    # started). The retries then wait: only a worker node has GPUs.
    deadline = time.monotonic() + 90
    while True:
        logs = cluster.logs(sid)
        hit = errored_trials(logs, store_trials(tmp_path))
        if hit and mid_way <= hit:
            break
        if cluster.status(sid) in TERMINAL or time.monotonic() > deadline:
            pytest.fail(f"Tune reported no failed trial ({hit}, expected {mid_way}) in the job "
                        f"logs:\n{logs[-4000:]}")
        time.sleep(0.5)
    # Ray says why (the first crash in full): ActorDiedError once the GCS has marked the node
    # dead, or, when the trial's call fails first on the closed connection, ActorUnavailableError
    # (its message: "The actor ... is unavailable: ... Socket closed"; seen in CI)
    assert ("because its node has died" in logs
            or ("is unavailable" in logs and "Socket closed" in logs)), logs[-4000:]
    assert cluster.status(sid) == "RUNNING"  # the driver is on the head and lives on
    now = {t.user_attrs.get("ray_trial_id"): t for t in store_trials(tmp_path)}
    assert all(now[i].state == TrialState.RUNNING for i in hit)  # retries wait for a GPU node

    cluster.script("start_local.sh", "--worker")  # a node with GPUs joins again
    logs = cluster.wait(sid, timeout=180)

    after = {t.number: t for t in store_trials(tmp_path)}
    assert sorted(after) == list(range(6)), sorted(after)  # each trial recorded exactly once
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in after.values()), [
        (t.number, t.state, t.user_attrs.get("raylaw_status")) for t in after.values()]
    for n, t in before.items():  # finished before the crash: untouched
        a = after[n]
        assert (a.state, a.value, a.params, a.user_attrs["raylaw_status"], a.datetime_complete) \
            == (t.state, t.value, t.params, t.user_attrs["raylaw_status"], t.datetime_complete)
    for n, t in interrupted.items():  # retried on the new worker, in their own records
        a = after[n]
        assert a.user_attrs["raylaw_status"] in ("completed", "stopped"), (n, a.user_attrs)
        # the same Tune trial (the snapshot may have caught it before the searcher named it)
        assert t.user_attrs.get("ray_trial_id") in (None, a.user_attrs["ray_trial_id"])
    hit = errored_trials(logs, list(after.values()))
    by_id = {t.user_attrs["ray_trial_id"]: t for t in after.values()}
    assert hit <= set(by_id) and not hit & {t.user_attrs["ray_trial_id"] for t in before.values()}
    failures = tune_failures(tmp_path / "results")
    assert set(failures) == set(by_id), failures
    # one failure (the crash) and one successful retry each; nobody else failed
    assert {k for k, v in failures.items() if v} == hit and set(failures.values()) <= {0, 1}
    assert "law version 1 written" in logs, logs[-3000:]


def test_a_trials_workers_span_both_nodes(cluster, tmp_path):
    from optuna.trial import TrialState

    probe = tmp_path / "probe"
    probe.mkdir()
    sid = cluster.submit(*sweep_args(
        tmp_path, "--workers-per-trial", "2", "--cpus-per-trial", "2",
        "--trainable", "tests.synthetic:worker_probe", "--grace-fraction", "1",
        "--config", f"probe_dir={json.dumps(str(probe))}", "--config", "reports=2",
        "--config", "sleep=0.5", samples=1))
    logs = cluster.wait(sid, timeout=240)
    assert "2 Ray Train workers x (2 CPU, 0 GPU)" in logs, logs[-3000:]
    (t,) = store_trials(tmp_path)
    assert t.state == TrialState.COMPLETE
    records = [json.loads(p.read_text()) for p in probe.glob("*.json")]
    # rank 0 and rank 1, one on each node: the trial needs every CPU of both
    assert sorted(r["rank"] for r in records) == [0, 1] and len({r["node"] for r in records}) == 2
