"""Static checks of the cluster configs in cluster/ (fast: nothing is launched, no Ray started).

* cluster/gpu-cluster.yaml validates against the JSON schema the installed Ray ships
  (ray/autoscaler/ray-schema.json, the one `ray up` uses) and passes Ray's own config
  preparation + validation; it has a CPU head, a GPU worker type, installs
  raylaw[cluster,postgres], keeps the dashboard on 127.0.0.1 and exports the store's URL as
  RAYLAW_STORE on the head.
* cluster/rayjob.yaml is a KubeRay RayJob (ray.io/v1) that runs the sweep, tears the cluster
  down afterwards, requests nvidia.com/gpu for its workers, gives the head the store's URL
  from a Secret and mounts the volume that holds the sweep's --law and --results on the pods
  that need them.
* The local-cluster scripts parse, and stopping a cluster that is not running is a no-op.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER = CLUSTER / "gpu-cluster.yaml"
RAYJOB = CLUSTER / "rayjob.yaml"
SWEEP = "python -m raylaw.tune sweep"


def ray_schema_path() -> Path:
    """ray/autoscaler/ray-schema.json of the installed Ray, found without importing Ray."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    path = Path(next(iter(spec.submodule_search_locations)), "autoscaler", "ray-schema.json")
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]


@pytest.fixture(scope="module")
def rayjob(manifests) -> dict:
    jobs = [d for d in manifests if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, [d.get("kind") for d in manifests]
    return jobs[0]


def sweep_args(command: str) -> dict[str, list[str]]:
    """The sweep's flags (--flag value ...) from a shell command line containing it."""
    words = shlex.split(command)
    start = next(i for i in range(len(words)) if words[i:i + 4] == SWEEP.split())
    flags: dict[str, list[str]] = {}
    rest = words[start + 4:]
    for i, w in enumerate(rest):
        if w.startswith("--"):
            value = rest[i + 1] if i + 1 < len(rest) and not rest[i + 1].startswith("--") else ""
            flags.setdefault(w, []).append(value)
    return flags


def under(path: str, mount: str) -> bool:
    return os.path.commonpath([path, mount.rstrip("/") or "/"]) == (mount.rstrip("/") or "/")


# ---------------------------------------------------------------- cluster launcher (AWS)


def test_launcher_validates_against_rays_schema(launcher):
    schema = json.loads(ray_schema_path().read_text())
    jsonschema.validate(launcher, schema)  # raises ValidationError with the offending path
    # the schema is strict (additionalProperties: false), so a typo'd key cannot slip through
    bad = copy.deepcopy(launcher)
    bad["available_node_types"]["ray.worker.gpu"]["resourcse"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_launcher_passes_rays_own_validation(launcher):
    # what `ray up` does before it talks to the cloud: fill in the provider's defaults, validate
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(launcher))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_launcher_has_cpu_head_and_gpu_worker_type(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "head node should be CPU-only"
    gpu_types = {name: t for name, t in types.items()
                 if name != launcher["head_node_type"] and t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no worker node type advertises GPU resources"
    for name, t in gpu_types.items():
        assert t["resources"].get("CPU", 0) >= 1, name  # a trial needs --cpus-per-trial too
        assert t.get("max_workers", 0) >= 1, name
        assert t["node_config"]["InstanceType"].split(".")[0] in {
            "g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5"}, name
        assert t.get("max_workers", 0) <= launcher["max_workers"], name


def extras(command: str) -> set[str]:
    """The extras of raylaw a pip command installs (raylaw[cluster,postgres] -> both)."""
    return {e.strip() for m in re.findall(r"raylaw\[([^\]]*)\]", command) for e in m.split(",")}


def test_launcher_installs_raylaw_with_cluster_extra(launcher):
    cmds = launcher.get("setup_commands", []) + launcher.get("worker_setup_commands", [])
    installs = [c for c in cmds if re.search(r"\bpip install\b", c)
                and {"cluster", "postgres"} <= extras(c)]  # job server; the store's driver
    assert installs, cmds
    # setup_commands run on every node (head: driver; workers: trials)
    assert any(c in launcher.get("setup_commands", []) for c in installs)


def test_launcher_commands_are_valid_shell(launcher):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not available")
    keys = ["initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"]
    cmds = [c for k in keys for c in launcher.get(k, [])]
    assert cmds
    for c in cmds:
        r = subprocess.run([bash, "-n", "-c", c], capture_output=True, text=True)
        assert r.returncode == 0, (c, r.stderr)


def test_launcher_dashboard_binds_loopback(launcher):
    head_start = " ".join(launcher["head_start_ray_commands"])
    assert "ray start --head" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start
    assert "--dashboard-port=8265" in head_start  # what `ray dashboard` forwards to


def test_launcher_usage_comment_runs_the_sweep_through_the_tunnel(launcher):
    text = LAUNCHER.read_text()
    for step in ("ray up cluster/gpu-cluster.yaml", "ray dashboard cluster/gpu-cluster.yaml",
                 "ray down cluster/gpu-cluster.yaml"):
        assert step in text
    submit = next(ln for ln in text.splitlines() if "ray job submit" in ln)
    assert "--address http://127.0.0.1:8265" in submit and "--working-dir ." in submit
    args = sweep_args(submit.lstrip("# "))
    assert args["--space"] == ["search_spaces/lm.yaml"]
    assert (ROOT / "search_spaces" / "lm.yaml").is_file()
    assert args["--scale"] == ["N=1e5", "D=2e6"]
    assert args["--gpus-per-trial"] == ["1"]
    # the law is on /shared, which the config creates and mounts into the container; the
    # store is RAYLAW_STORE (below), never a SQLite file there
    assert "--store" not in args
    assert under(args["--law"][0], "/shared")
    assert any("mkdir -p /shared" in c for c in launcher["initialization_commands"])
    assert "-v /shared:/shared" in launcher["docker"]["run_options"]
    gpus = max(t["resources"].get("GPU", 0) for t in launcher["available_node_types"].values())
    assert float(args["--gpus-per-trial"][0]) <= gpus


def test_launcher_store_url_from_an_env_var(launcher, monkeypatch):
    head_start = " ".join(launcher["head_start_ray_commands"])
    # exported before the head starts (jobs there inherit it), and Ray waits for it
    export = head_start.index("export RAYLAW_STORE")
    assert export < head_start.index("ray start --head")
    assert "&& export RAYLAW_STORE && ray start --head" in head_start
    assert "/raylaw/store-url" in head_start and "WithDecryption=True" in head_start
    assert "postgresql" not in head_start  # the URL (a password) is not in the config
    # ... and raylaw takes it as the store when --store is not given
    monkeypatch.setenv("RAYLAW_STORE", "postgresql+psycopg://u@db.example/raylaw")
    submit = next(ln for ln in LAUNCHER.read_text().splitlines() if "ray job submit" in ln)
    assert parsed_sweep(submit.lstrip("# ")).store == "postgresql+psycopg://u@db.example/raylaw"


def parsed_sweep(command: str):
    """The sweep flags of a command line as raylaw's own parser reads them."""
    from raylaw.cli import build_parser

    words = shlex.split(command)
    start = next(i for i in range(len(words)) if words[i:i + 4] == SWEEP.split())
    return build_parser().parse_args(words[start + 3:])


# ---------------------------------------------------------------- KubeRay RayJob


def test_rayjob_kind_and_shutdown(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["name"]
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec.get("ttlSecondsAfterFinished", 0), int)
    assert "clusterSelector" not in spec  # it creates its own cluster


def test_rayjob_entrypoint_runs_the_sweep(rayjob):
    entry = rayjob["spec"]["entrypoint"]
    assert SWEEP in entry
    args = sweep_args(entry)
    assert args["--space"] == ["search_spaces/lm.yaml"]
    assert args["--scale"] == ["N=1e5", "D=2e6"]
    assert float(args["--gpus-per-trial"][0]) >= 1
    assert len(args["--law"]) == 1 and args["--law"][0]
    assert "--store" not in args  # RAYLAW_STORE, from a Secret (below)


def test_rayjob_store_url_from_a_secret(rayjob, monkeypatch):
    cluster = rayjob["spec"]["rayClusterSpec"]
    (head,) = containers(cluster["headGroupSpec"])
    env = {e["name"]: e for e in head.get("env", [])}
    ref = env["RAYLAW_STORE"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"] and "value" not in env["RAYLAW_STORE"]
    assert f"kubectl create secret generic {ref['name']}" in RAYJOB.read_text()
    assert f"--from-literal={ref['key']}=" in RAYJOB.read_text()
    for g in cluster["workerGroupSpecs"]:  # trials never open the store: only the driver does
        assert all("RAYLAW_STORE" not in {e["name"] for e in c.get("env", [])}
                   for c in containers(g))
    monkeypatch.setenv("RAYLAW_STORE", "postgresql+psycopg://u:p@db/raylaw")
    assert parsed_sweep(rayjob["spec"]["entrypoint"]).store == "postgresql+psycopg://u:p@db/raylaw"


def test_rayjob_runtime_env_or_image(rayjob):
    spec = rayjob["spec"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(env, dict)
    # the relative --space path needs the project checkout as the working dir
    assert env["working_dir"].endswith(".zip")
    images = [c["image"] for c in containers(spec["rayClusterSpec"]["headGroupSpec"])]
    images += [c["image"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]
               for c in containers(g)]
    assert images and all(images)


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_rayjob_head_and_gpu_worker_group(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert containers(head)
    for c in containers(head):
        assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {})
    groups = cluster["workerGroupSpecs"]
    gpu_groups = [g for g in groups
                  if any(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) >= 1
                         for c in containers(g))]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    gpus_per_trial = float(sweep_args(rayjob["spec"]["entrypoint"])["--gpus-per-trial"][0])
    for g in gpu_groups:
        assert g["groupName"]
        assert 0 <= g.get("minReplicas", 0) <= g["replicas"] <= g["maxReplicas"]
        assert g["maxReplicas"] >= 1
        for c in containers(g):
            res = c["resources"]
            # extended resources: a request, if given, must equal the limit
            limit = res["limits"]["nvidia.com/gpu"]
            assert str(res.get("requests", {}).get("nvidia.com/gpu", limit)) == str(limit)
            assert int(limit) >= gpus_per_trial
    # KubeRay passes rayStartParams to `ray start` and requires string values
    for params in [head.get("rayStartParams", {})] + [g.get("rayStartParams", {}) for g in groups]:
        assert all(isinstance(v, str) for v in params.values()), params


def test_rayjob_law_and_results_on_the_shared_volume(rayjob, manifests):
    args = sweep_args(rayjob["spec"]["entrypoint"])
    paths = [args["--law"][0]] + args.get("--results", [])
    pvcs = {d["metadata"]["name"]: d for d in manifests if d.get("kind") == "PersistentVolumeClaim"}
    cluster = rayjob["spec"]["rayClusterSpec"]
    # the driver (head) reads/writes the law; workers write Tune results (--results)
    for group, needs in [(cluster["headGroupSpec"], paths)] + [
            (g, args.get("--results", [])) for g in cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            mounts = c.get("volumeMounts", [])
            for path in needs:
                mount = next((m for m in mounts if under(path, m["mountPath"])), None)
                assert mount is not None, f"{path} is not on a volume of {c['name']}"
                claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
                assert claim in pvcs, f"PVC {claim} is not defined in {RAYJOB.name}"
                assert "ReadWriteMany" in pvcs[claim]["spec"]["accessModes"]


# ---------------------------------------------------------------- local-cluster scripts


def test_scripts_parse_and_are_executable():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not available")
    for name in ("start_local.sh", "stop_local.sh", "_common.sh"):
        r = subprocess.run([bash, "-n", str(CLUSTER / name)], capture_output=True, text=True)
        assert r.returncode == 0, (name, r.stderr)
    for name in ("start_local.sh", "stop_local.sh"):
        assert os.access(CLUSTER / name, os.X_OK), name


def test_stop_is_a_noop_when_nothing_runs(tmp_path):
    if shutil.which("bash") is None or not Path("/proc/self/cmdline").exists():
        pytest.skip("needs bash and /proc")
    env = dict(os.environ, RAYLAW_CLUSTER_DIR=str(tmp_path / "none"))
    r = subprocess.run([str(CLUSTER / "stop_local.sh")], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "no worker running" in r.stderr and "no head running" in r.stderr
