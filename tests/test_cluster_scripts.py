"""Live test of cluster/start_local.sh and cluster/stop_local.sh (marker: cluster).

Starts the two-node local cluster in its own temp dir on free ports (so it never touches a
developer's cluster on the default ports, or any other Ray instance), then checks: 2 nodes
and 2 logical GPUs (``ray status`` and a driver's ``ray.nodes()``), a GPU task lands on the
worker, the job server answers ``ray job list``, every listening socket of the cluster's
processes is on 127.0.0.1, and stopping the worker alone makes it leave while the head stays.
The fixture stops everything and checks that no process of the cluster is left. ~45 s.

The tests share one cluster and run in file order (the worker-stop test is last).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster_util import (
    CLUSTER_MARKS,
    ScriptCluster,
    free_ports,
    read_env_sh,
)

pytestmark = CLUSTER_MARKS

# Runs in a separate driver process: the test process itself never joins the cluster.
PROBE = r"""
import json, os, ray
ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR", log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]
out = {"alive": len(nodes), "gpus": sum(n["Resources"].get("GPU", 0) for n in nodes),
       "ips": sorted({n["NodeManagerAddress"] for n in nodes}),
       "gpu_nodes": [n["NodeID"] for n in nodes if n["Resources"].get("GPU", 0) > 0]}
if out["gpus"] and os.environ.get("PROBE_GPU_TASK"):
    @ray.remote(num_gpus=1)
    def where():
        return ray.get_runtime_context().get_node_id(), os.environ.get("CUDA_VISIBLE_DEVICES")
    out["gpu_task"] = ray.get(where.remote(), timeout=60)
print("PROBE " + json.dumps(out))
"""


@dataclass
class LocalCluster(ScriptCluster):
    client_port: int
    client_env: dict  # for GCS clients: the scripts' env.sh applied

    def probe(self, gpu_task: bool = False) -> dict:
        env = dict(self.client_env, PROBE_GPU_TASK="1" if gpu_task else "")
        r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("PROBE "))
        return json.loads(line[len("PROBE "):])


def ray_cli(*args: str, env: dict, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    # short dir: Ray's unix sockets live under it (path limit ~107 bytes)
    base = Path(tempfile.mkdtemp(prefix="rlc-", dir="/tmp"))
    gcs, dash, client = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYLAW_"))}
    env.update(RAYLAW_CLUSTER_DIR=str(base), RAYLAW_RAY_PORT=str(gcs),
               RAYLAW_DASHBOARD_PORT=str(dash), RAYLAW_CLIENT_PORT=str(client),
               RAYLAW_WORKER_GPUS="2", RAYLAW_HEAD_CPUS="2", RAYLAW_WORKER_CPUS="2",
               RAYLAW_OBJECT_STORE_MB="128", RAYLAW_PYTHON=sys.executable,
               RAYLAW_START_TIMEOUT="90", RAYLAW_STOP_GRACE="10")
    c = LocalCluster(base, gcs, dash, env, client_port=client, client_env={})
    try:
        out = c.script("start_local.sh").stdout
        assert f"http://127.0.0.1:{dash}" in out  # the script prints the job address
        c.client_env = dict(env, **read_env_sh(base / "env.sh"))
        yield c
    finally:
        c.tear_down()


def test_two_nodes_two_logical_gpus(cluster):
    info = cluster.probe(gpu_task=True)  # the GCS's view, right after start_local.sh
    assert info["alive"] == 2
    assert info["gpus"] == 2
    assert info["ips"] == ["127.0.0.1"]  # both nodes registered with the loopback address
    node, visible = info["gpu_task"]
    assert [node] == info["gpu_nodes"]  # the GPU task ran on the worker node
    assert visible in {"0", "1"}  # Ray hands the task one of the 2 logical GPUs

    # `ray status` shows the autoscaler's view, refreshed every few seconds: poll it
    deadline = time.monotonic() + 30
    while True:
        r = ray_cli("status", "--address", f"127.0.0.1:{cluster.gcs_port}",
                    env=cluster.client_env)
        assert r.returncode == 0, r.stderr[-2000:]
        active = r.stdout.split("Active:")[1].split("Pending:")[0]
        nodes = re.findall(r"^\s*1 node_[0-9a-f]+", active, re.M)
        gpus = re.search(r"\b\d+\.\d+/2\.0 GPU\b", r.stdout)
        if (len(nodes) == 2 and gpus) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(nodes) == 2 and gpus, r.stdout


def test_job_server_answers(cluster):
    url = f"http://127.0.0.1:{cluster.dashboard_port}"
    # the HTTP job API needs none of the GCS-client settings of env.sh
    r = ray_cli("job", "list", "--address", url, env=cluster.env)
    assert r.returncode == 0, r.stderr[-2000:]
    with urllib.request.urlopen(f"{url}/api/version", timeout=30) as resp:
        assert resp.status == 200
        assert "ray_version" in json.loads(resp.read())


def listening_sockets(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every listening TCP socket (and bound UDP socket) of the pids."""
    owner = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/net/{proto}") as f:
            next(f)
            for line in f:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                if inode not in owner:
                    continue
                if proto.startswith("tcp") and state != "0A":  # 0A: LISTEN
                    continue
                if proto.startswith("udp") and _decode(remote)[1] != 0:  # connected UDP
                    continue
                found.append((owner[inode], *_decode(local)))
    return found


def _decode(hexaddr: str) -> tuple[str, int]:
    ip_hex, port_hex = hexaddr.split(":")
    raw = bytes.fromhex(ip_hex)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        ip = socket.inet_ntop(socket.AF_INET6, raw)
    return ip, int(port_hex, 16)


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:  # ::ffff:127.0.0.1
        addr = addr.ipv4_mapped
    return addr.is_loopback


def test_nothing_listens_beyond_loopback(cluster):
    head, worker = cluster.pids("head"), cluster.pids("worker")
    assert head and worker and not set(head) & set(worker)
    socks = listening_sockets(head + worker)
    exposed = [s for s in socks if not is_loopback(s[1])]
    assert not exposed, f"listening beyond 127.0.0.1 (pid, ip, port): {exposed}"
    ports = {port for _, _, port in socks}
    # the pid discovery really found the servers: GCS, dashboard/job API, Ray Client ...
    assert {cluster.gcs_port, cluster.dashboard_port, cluster.client_port} <= ports
    # ... and the worker node's own listeners (raylet, object manager, agents)
    assert sum(1 for pid, _, _ in socks if pid in set(worker)) >= 3


def test_stop_worker_alone_and_it_leaves(cluster):
    head_before = cluster.pids("head")
    cluster.script("stop_local.sh", "--worker")
    assert cluster.pids("worker") == []
    deadline = time.monotonic() + 60
    while True:
        info = cluster.probe()
        if info["alive"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert info["alive"] == 1 and info["gpus"] == 0, info
    # the head is untouched and still serves jobs
    assert set(cluster.pids("head")) >= {p for p in head_before if _is_ray_server(p)}
    r = ray_cli("job", "list", "--address", f"http://127.0.0.1:{cluster.dashboard_port}",
                env=cluster.env)
    assert r.returncode == 0, r.stderr[-2000:]


def _is_ray_server(pid: int) -> bool:
    """GCS / raylet / dashboard: long-lived head processes (idle workers may come and go)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return comm in {"gcs_server", "raylet"} or "dashboard/dashboard.py" in cmd
