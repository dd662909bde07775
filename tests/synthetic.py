"""A fast synthetic trainable for sweep tests: a learning-curve bowl over (lr, batch_size).

It follows the trainable contract of the built-in LM: report the metric and ``tokens`` seen
(up to D), and end a diverging trial with ``diverged=True`` and a finite loss. Reporting through
``raylaw.workers.report``, each also runs as the ``train_loop_per_worker`` of a multi-worker
trial (``--workers-per-trial``): every rank reports, rank 0's metrics count.
"""

from __future__ import annotations

import math
import time


def bowl(config: dict) -> None:
    """loss = 2 + curvature around lr* = 0.01 (N/1e5)^-0.5, bs* = 16, decaying with tokens."""
    from raylaw.workers import report

    d = float(config["scale"]["D"])
    n = float(config["scale"]["N"])
    lr, bs = float(config["lr"]), float(config["batch_size"])
    reports = int(config.get("reports", 6))
    if config.get("raise_above") is not None and lr > config["raise_above"]:
        raise RuntimeError(f"synthetic crash at lr={lr}")
    final = (2.0 + 0.05 * math.log(lr / (0.01 * (n / 1e5) ** -0.5)) ** 2
             + 0.02 * math.log(bs / 16) ** 2)
    for i in range(1, reports + 1):
        tokens = d * i / reports
        time.sleep(float(config.get("sleep", 0.0)))
        # diverge at the first report, before ASHA can stop the trial for its (bad) loss
        if config.get("diverge_above") is not None and lr > config["diverge_above"]:
            report({"loss": 1e6, "tokens": tokens, "diverged": True})
            return
        report({"loss": final + 1.0 / i, "tokens": tokens, "diverged": False})


def silent(config: dict) -> None:
    """Reports no metric: the sweep must say so, clearly."""
    from ray import tune

    tune.report({"something_else": 1.0})


def flaky(config: dict) -> None:
    """Crashes on its first attempt (a marker file per config), then behaves like ``bowl``."""
    from pathlib import Path

    marker = Path(config["marker_dir"]) / f"{config['lr']:.12g}"
    if not marker.exists():
        marker.write_text("crashed once")
        raise RuntimeError("first attempt crashes")
    bowl(config)


def worst_center(config: dict) -> None:
    """``bowl``, except that the trial at lr ``worst_lr`` (the law's prediction) is the worst
    at every report and the slowest to reach each: ASHA alone would stop it at its first rung."""
    from ray import tune

    if not math.isclose(float(config["lr"]), float(config["worst_lr"]), rel_tol=1e-9):
        return bowl(config)
    d = float(config["scale"]["D"])
    for i in range(1, 7):
        time.sleep(8.0 if i == 1 else 0.2)  # the others reach the first rung before it
        tune.report({"loss": 10.0 + 1.0 / i, "tokens": d * i / 6, "diverged": False})


def gpu_probe(config: dict) -> None:
    """Records which GPU Ray assigned (CUDA_VISIBLE_DEVICES) and when the trial ran."""
    import json
    import os
    from pathlib import Path

    from ray import tune

    start = time.time()
    time.sleep(float(config.get("sleep", 1.5)))
    record = {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}
    Path(config["probe_dir"], f"{os.getpid()}-{start:.6f}.json").write_text(json.dumps(record))
    tune.report({"loss": 2.0 + config["lr"], "tokens": float(config["scale"]["D"])})


def lm_crash_once(config: dict) -> None:
    """The built-in LM (checkpointing every report), except that its first run crashes after
    its third report and gives Tune only its first report's checkpoint: the retry continues from
    there and repeats reports 2 and 3. Each run adds 0.001 x its number to the loss it reports
    and writes its curve ({tokens: loss}) to ``marker_dir``/run<N>.json."""
    import json
    from pathlib import Path

    from ray import tune

    from raylaw.trainables import lm
    from raylaw.workers import report as report_to_ray

    marker = Path(config["marker_dir"]) / "crashed"
    run = 2 if marker.exists() else 1
    curve: dict[int, float] = {}

    def report(metrics: dict, ckpt: str | None) -> None:
        metrics = {**metrics, "loss": metrics["loss"] + 0.001 * run}
        curve[int(metrics["tokens"])] = metrics["loss"]
        Path(config["marker_dir"], f"run{run}.json").write_text(json.dumps(curve))
        report_to_ray(metrics, ckpt if run == 2 or len(curve) == 1 else None)
        if run == 1 and len(curve) == 3:
            marker.write_text("crashed once")
            raise RuntimeError("crash after the third report")

    lm_config = {k: v for k, v in config.items() if k != "marker_dir"}  # the LM's keys only
    lm_config["checkpoint_every"] = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return lm.run(lm_config, report)
    with checkpoint.as_directory() as path:
        return lm.run(lm_config, report, checkpoint_dir=path)


def worker_probe(config: dict) -> None:
    """A ``train_loop_per_worker`` that records where each rank ran and resumes from its
    checkpoint: ``reports`` reports ``sleep`` s apart (loss as ``bowl`` would end, plus 1/i),
    rank 0 checkpointing its step; every rank keeps one JSON record per process in
    ``probe_dir`` (pid, rank, node, its own GPU ids, the step it started from, start / end times),
    rewritten after every report so a killed worker leaves its last state."""
    import json
    import os
    import tempfile
    from pathlib import Path

    import ray
    import ray.train

    from raylaw.workers import latest_checkpoint, report

    ctx, rt = ray.train.get_context(), ray.get_runtime_context()
    with latest_checkpoint() as ckpt:
        first = int(Path(ckpt, "step").read_text()) if ckpt else 0
    record = {"pid": os.getpid(), "rank": ctx.get_world_rank(), "size": ctx.get_world_size(),
              "node": rt.get_node_id(), "gpus": rt.get_accelerator_ids().get("GPU", []),
              "trial": config["lr"], "first": first, "start": time.time(), "end": None,
              "last": first}
    path = Path(config["probe_dir"], f"{os.getpid()}.json")
    path.write_text(json.dumps(record))
    d, reports = float(config["scale"]["D"]), int(config.get("reports", 4))
    for i in range(first + 1, reports + 1):
        time.sleep(float(config.get("sleep", 0.5)))
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "step").write_text(str(i))
            report({"loss": 2.0 + float(config["lr"]) + 1.0 / i, "tokens": d * i / reports},
                   tmp)
        record.update(end=time.time(), last=i)
        path.write_text(json.dumps(record))
