"""Shared fixtures: project paths, the Step Law example data, and one Ray per test session."""

from __future__ import annotations

import os
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

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False)
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
