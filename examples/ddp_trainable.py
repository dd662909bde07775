"""Bring your own multi-worker trainable: a Ray Train ``train_loop_per_worker`` with torch DDP.

With ``--workers-per-trial K`` every trial runs this function on K Ray Train workers (a
``TorchTrainer``; Ray has set up the torch.distributed process group before it is called). The
reporting contract is that of a single-process trainable (``examples/user_trainable.py``:
``config`` holds the hyperparameters and ``config["scale"]``; report the space's metric and
fidelity, never NaN; ``diverged=True`` once, then return), plus:
  * every rank calls ``ray.train.report`` at the same points: it is a barrier. raylaw keeps
    rank 0's metrics, so rank 0 must report the metric for the whole trial (here: validation
    loss of the shared model, the same on every rank);
  * rank 0 passes a checkpoint with each report, the others ``checkpoint=None``: one checkpoint
    per report. A retried trial (a worker or node died) restarts every rank, and
    ``ray.train.get_checkpoint()`` returns the last one: resume from it;
  * each rank trains on its own share of each batch; DDP averages the gradients.

Run from the repository root (the example space's trainable is the single-process one, so
name this one):
    python -m raylaw.tune sweep --space examples/mlp.yaml --scale N=2000 --scale D=20000 \\
        --samples 4 --prior none --law mlp.law.json --trainable examples.ddp_trainable:train \\
        --workers-per-trial 2 --cpus-per-trial 0.5
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from examples.user_trainable import make_data


def train(config: dict) -> None:
    import ray.train
    from ray.train.torch import get_device, prepare_model

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    n_params, d = float(config["scale"]["N"]), int(config["scale"]["D"])
    width = max(4, int(math.sqrt(n_params / 2)))
    torch.manual_seed(int(config.get("seed", 0)))  # the same initial model on every rank
    model = nn.Sequential(nn.Linear(16, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                          nn.Linear(width, 1))
    model = prepare_model(model)  # on this worker's device, wrapped in DDP (K > 1)
    plain = getattr(model, "module", model)  # what the checkpoint holds
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"],
                            weight_decay=config.get("weight_decay", 0.0))
    device = get_device()
    x_val, y_val = (t.to(device) for t in make_data(2048, seed=1))
    bs = int(config["batch_size"])
    local_bs = max(1, bs // world)  # this rank's share of each batch
    steps = max(1, math.ceil(d / bs))  # the last report reaches D
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a retried trial: continue where the last report left off
        with checkpoint.as_directory() as path:
            state = torch.load(Path(path, "state.pt"), weights_only=True)
        plain.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        start = state["step"]
    for step in range(start + 1, steps + 1):
        x, y = make_data(local_bs, seed=(step * world + rank))  # its own share of the data
        loss = nn.functional.mse_loss(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, steps // 8) == 0 or step == steps:
            with torch.no_grad():
                val = nn.functional.mse_loss(model(x_val), y_val).item()
            diverged = not math.isfinite(val) or val > 1e3
            metrics = {"loss": 1e6 if diverged else val, "tokens": step * bs,
                       "diverged": diverged}
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0 and not diverged:
                    torch.save({"model": plain.state_dict(), "optim": opt.state_dict(),
                                "step": step}, Path(tmp, "state.pt"))
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt)
            if diverged:
                return
