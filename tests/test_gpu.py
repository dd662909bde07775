"""On a CUDA machine: the built-in LM trains on the GPU Ray gives its trial, and only then.

Skipped without CUDA (CI has none); the CPU side of the same rule is in test_sweep.py. Each
sweep runs as ``python -m raylaw.tune`` in a subprocess so its embedded Ray sees the real GPUs
rather than the test session's logical ones.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from tests.test_sweep import sweep_args, trials

pytestmark = [pytest.mark.ray,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize(("gpus", "device"), [("0.5", "cuda"), ("0", "cpu")])
def test_lm_trial_device_follows_its_gpu_request(tmp_path, gpus, device):
    args = sweep_args(tmp_path, "--gpus-per-trial", gpus, "--config", "eval_every=4",
                      scale=("N=2e4", "D=6e4"), samples=2, trainable=None)
    run = subprocess.run([sys.executable, "-m", "raylaw.tune", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ts = trials(tmp_path)
    assert len(ts) == 2
    for t in ts:
        assert t.user_attrs["resources"] == {"cpu": 1.0, "gpu": float(gpus)}
        assert t.user_attrs["device"] == device
