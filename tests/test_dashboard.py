"""optuna-dashboard on a sweep's store: started on loopback as the README says, it reads the
study back through its HTTP API with raylaw's parameters, learning curves, states and user
attributes (docs/store.md says what each attribute means)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from raylaw.cli import main
from tests.cluster_util import free_ports
from tests.test_sweep import sweep_args

pytestmark = pytest.mark.ray

STATES = {"COMPLETE": "Complete", "PRUNED": "Pruned", "FAIL": "Fail"}


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def attrs(items: list[dict]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in items}


@pytest.fixture
def dashboard(tmp_path):
    """``optuna-dashboard STORE --host 127.0.0.1 --port P``; its base URL once it answers."""
    procs = []

    def start(store: str) -> str:
        (port,) = free_ports(1)
        exe = Path(sys.executable).with_name("optuna-dashboard")
        proc = subprocess.Popen([str(exe), store, "--host", "127.0.0.1", "--port", str(port),
                                 "--server", "wsgiref"], stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / "dashboard.log", "w"))
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                get(f"{base}/api/meta")
                return base
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
                assert time.time() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.3)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def test_dashboard_reads_a_sweep_back(ray_local, tmp_path, dashboard):
    assert main(sweep_args(tmp_path, "--config", "weight_decay=0.02", samples=4)) == 0
    store = f"sqlite:///{tmp_path / 'store.db'}"
    (name,) = optuna.get_all_study_names(store)
    study = optuna.load_study(study_name=name, storage=store)
    base = dashboard(store)

    (summary,) = get(f"{base}/api/studies")["study_summaries"]
    assert summary["study_name"] == name
    detail = get(f"{base}/api/studies/{summary['study_id']}")
    study_attrs = attrs(detail["user_attrs"])
    assert json.loads(study_attrs["scale"]) == {"N": 1e5, "D": 1e5}
    assert study_attrs["space"] == "lm" and study_attrs["raylaw_sweep"] == "finished"
    assert json.loads(study_attrs["fixed"]) == {"weight_decay": 0.02} and study_attrs["created"]

    shown = {t["number"]: t for t in detail["trials"]}
    assert sorted(shown) == [t.number for t in study.trials] == [0, 1, 2, 3]
    for t in study.trials:
        d = shown[t.number]
        assert d["state"] == STATES[t.state.name]
        assert {p["name"]: float(p["param_external_value"]) for p in d["params"]} == \
            pytest.approx(t.params)
        curve = {v["step"]: v["value"] for v in d["intermediate_values"]}
        assert curve == pytest.approx(t.intermediate_values) and curve  # tokens -> loss
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert d["values"] == pytest.approx([t.value])
        a = attrs(d["user_attrs"])
        assert a["raylaw_status"] == t.user_attrs["raylaw_status"]
        assert float(a["fidelity"]) == t.user_attrs["fidelity"]  # where it ended
        assert int(t.user_attrs["fidelity"]) == max(t.intermediate_values)
        assert json.loads(a["resources"]) == {"cpu": 1.0, "gpu": 0.0}
        assert a["ray_trial_id"].startswith(t.user_attrs["ray_trial_id"][:5])
        assert (a.get("law_center") == "True") == (t.number == 0)  # the law's own prediction
