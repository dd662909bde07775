"""Shared fixtures: project paths, the Step Law example data, one Ray per test session, and the
benchmarks' ``--smoke`` runs, started with the first test."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session, with 2 CPUs and 2 logical GPUs."""
    from raylaw.ray_start import loopback_ray_env

    loopback_ray_env(None)
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False,
             _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server on 127.0.0.1 for the session (tests/pg_server.py);
    each test asks it for a database of its own with ``postgres.url(name)``."""
    from tests.pg_server import PostgresServer, server_bin_dir

    bin_dir = server_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin "
                    "or on PATH; .ci/run installs Debian's postgresql package")
    server = PostgresServer(bin_dir)
    try:
        yield server.start()
    finally:
        server.stop()


# Ray Train's controller polls its workers every 2 s by default; a run's reports and its end
# then wait that long, which adds up over the multi-worker tests' short trials. Set before Ray
# starts, so every Ray process inherits it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


SMOKE_MODULE = "test_bench_smoke.py"
SMOKE_TIMEOUT = 300  # seconds per script, once its test waits for it
_SMOKES = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config, items):
    """The benchmarks' --smoke tests run last, their scripts from the first test on (``smokes``):
    the CPU-bound scripts then use the cores that the Ray tests leave idle (a quarter of them)."""
    smoke = [item for item in items if item.path.name == SMOKE_MODULE]
    items[:] = [item for item in items if item.path.name != SMOKE_MODULE] + smoke
    config.stash[_SMOKES] = bool(smoke)


@pytest.fixture(autouse=True)
def _smokes_from_the_first_test(request):
    if request.config.stash.get(_SMOKES, False):
        request.getfixturevalue("smokes")


@pytest.fixture(scope="session")
def smokes(tmp_path_factory):
    """Start every benchmark's --smoke at once, each in its own process (the ladder's with an
    embedded Ray of its own); ``smokes(name)`` waits for one: (rc, output). ``smokes.out``: the
    ladder's directory. None may write BENCHMARKS.md."""
    out, logs = tmp_path_factory.mktemp("ladder"), tmp_path_factory.mktemp("smoke-logs")
    before = (ROOT / "BENCHMARKS.md").read_text()
    commands = {"lm_ladder": ["--out", str(out)], "lm_noise": [], "lm_throughput": [],
                "law_accuracy": [], "hpo_efficiency": [], "overhead": []}
    procs = {}
    for name, extra in commands.items():  # output to files: nobody reads a pipe until the end
        with open(logs / f"{name}.log", "w") as log:
            procs[name] = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--smoke", *extra],
                cwd=out, stdout=log, stderr=subprocess.STDOUT)
    done: dict[str, tuple[int, str]] = {}

    def wait(name: str) -> tuple[int, str]:
        if name not in done:
            try:
                procs[name].wait(timeout=SMOKE_TIMEOUT)
            except subprocess.TimeoutExpired:
                procs[name].kill()
                procs[name].wait()
                text = (logs / f"{name}.log").read_text()
                pytest.fail(f"bench/{name}.py --smoke ran past {SMOKE_TIMEOUT} s:\n{text[-3000:]}")
            done[name] = (procs[name].returncode, (logs / f"{name}.log").read_text())
        return done[name]

    wait.out = out
    yield wait
    for p in procs.values():  # a failed test leaves none running
        if p.poll() is None:
            p.kill()
            p.wait()
    assert (ROOT / "BENCHMARKS.md").read_text() == before, "a --smoke run wrote BENCHMARKS.md"
