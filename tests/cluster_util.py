"""Helpers shared by the tests that start a local Ray cluster with cluster/*.sh."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def read_env_sh(path: Path) -> dict:
    env = {}
    for line in path.read_text().splitlines():
        m = re.match(r"export (\w+)=(.*)$", line.strip())
        if m:
            env[m.group(1)] = m.group(2)
    return env


CLUSTER = Path(__file__).resolve().parents[1] / "cluster"

# marks for every test that starts a local cluster with the scripts
CLUSTER_MARKS = [
    pytest.mark.cluster,
    pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("bash") is None,
                       reason="the local-cluster scripts need Linux (/proc) and bash"),
    pytest.mark.skipif(importlib.util.find_spec("ray") is None
                       or importlib.util.find_spec("aiohttp") is None,
                       reason="needs ray[default] (dashboard / job server)"),
]


@dataclass
class ScriptCluster:
    """A local cluster run by cluster/start_local.sh and stop_local.sh in its own dir."""

    dir: Path
    gcs_port: int
    dashboard_port: int
    env: dict  # for the scripts

    def script(self, name: str, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
        r = subprocess.run([str(CLUSTER / name), *args], env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        assert r.returncode == 0, f"{name} {args}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def pids(self, node: str) -> list[int]:
        """Pids of one node's processes, found the way stop_local.sh finds them."""
        r = subprocess.run(
            ["bash", "-c", '. "$1/_common.sh" && rl_node_pids "$2"', "_",
             str(CLUSTER), str(self.dir / node)],
            env=self.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return [int(p) for p in r.stdout.split()]

    def tear_down(self, extra: Callable[[], list[int]] = list) -> None:
        """stop_local.sh --clean; then SIGKILL whatever of this cluster (and ``extra()``, pids
        found after the stop) is left, remove its dir, and fail if anything had to be killed."""
        subprocess.run([str(CLUSTER / "stop_local.sh"), "--clean"], env=self.env,
                       capture_output=True, text=True, timeout=150)
        left = self.pids("head") + self.pids("worker") + extra()
        for pid in left:  # last resort, only this cluster's own processes
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not left, f"processes left after stop_local.sh: {left}"
