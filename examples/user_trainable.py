"""Bring your own trainable: a small torch MLP on a synthetic regression task.

The reporting contract every raylaw trainable follows:
  * ``config`` holds the hyperparameters at top level and the target scale in
    ``config["scale"]`` (here N = hidden units' parameter budget, D = samples to train on);
  * call ``ray.tune.report({...})`` regularly with the space's ``metric`` (lower is better for
    ``mode: min``) and its ``fidelity`` (here ``tokens`` = samples seen, reaching D at the end);
  * never report NaN: when training diverges, report ``diverged=True`` with a finite metric
    once and return (raylaw records the trial as diverged and leaves it out of the fit);
  * use the CPUs/GPUs Ray assigned (``ray.get_runtime_context().get_assigned_resources()``).

Run from the repository root (the space names this function as its trainable):
    python -m raylaw.tune sweep --space examples/mlp.yaml --scale N=2000 --scale D=20000 \
        --samples 6 --prior none --law mlp.law.json
"""

from __future__ import annotations

import math

import torch
from torch import nn


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed nonlinear regression problem (no downloads): y = sin(3 x.w) + noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, generator=torch.Generator().manual_seed(0))
    x = torch.randn(n, 16, generator=g)
    return x, torch.sin(3 * x @ w / 4).unsqueeze(1) + 0.05 * torch.randn(n, 1, generator=g)


def train(config: dict) -> None:
    from ray import tune

    n_params, d = float(config["scale"]["N"]), int(config["scale"]["D"])
    width = max(4, int(math.sqrt(n_params / 2)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(int(config.get("seed", 0)))
    model = nn.Sequential(nn.Linear(16, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                          nn.Linear(width, 1)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"],
                            weight_decay=config.get("weight_decay", 0.0))
    x_val, y_val = make_data(2048, seed=1)
    x_val, y_val = x_val.to(device), y_val.to(device)
    bs = int(config["batch_size"])
    steps = max(1, math.ceil(d / bs))  # the last report reaches D
    gen = torch.Generator().manual_seed(int(config.get("seed", 0)) + 2)
    for step in range(1, steps + 1):
        x, y = make_data(bs, seed=int(torch.randint(0, 2**31, (1,), generator=gen)))
        loss = nn.functional.mse_loss(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, steps // 8) == 0 or step == steps:
            with torch.no_grad():
                val = nn.functional.mse_loss(model(x_val), y_val).item()
            if not math.isfinite(val) or val > 1e3:
                tune.report({"loss": 1e6, "tokens": step * bs, "diverged": True})
                return
            tune.report({"loss": val, "tokens": step * bs, "diverged": False})
