"""Multi-worker trials: each Ray Tune trial drives a Ray Train ``TorchTrainer`` of K workers.

``python -m raylaw.tune sweep ... --workers-per-trial K`` turns the trainable into a Ray Train
``train_loop_per_worker(config)``: the trial's Tune actor (the driver) starts a TorchTrainer with
K workers, each asking Ray for ``--cpus-per-trial`` CPUs and ``--gpus-per-trial`` GPUs (so a
trial holds K times as much), and hands rank 0's reports to Tune, where ASHA and the store see
them as from any trial; the run waits for Tune's verdict on each, so a stopped trial's run ends
and frees its workers at once. The driver holds no CPU (only ``DRIVER_MEMORY`` of Ray's memory
resource, so it never blocks a worker), and the sweep caps how many trials run at once by how
many worker groups fit the cluster.

A worker loop reports through ``report`` (every rank calls it; rank 0's metrics and checkpoint
count) and resumes from ``latest_checkpoint``: the same two calls work in a plain Tune function
trainable, so one trainable serves both modes. See docs/multi-worker.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from raylaw.errors import RaylawError

DRIVER_MEMORY = 256 * 2**20  # Ray memory resource a trial's driver reserves (its process)


def in_train_worker() -> bool:
    """True inside a Ray Train worker (a ``train_loop_per_worker``), never starting Ray."""
    if "ray" not in sys.modules:
        return False
    import ray.train

    try:
        ray.train.get_context()  # raises in a Tune function and outside Ray Train
    except (RuntimeError, DeprecationWarning):
        return False
    return True


def report(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
    """Report ``metrics`` (and a checkpoint directory, copied now) for this trial.

    In a Ray Train worker every rank must call it at the same points (it is a barrier); only
    rank 0's metrics and checkpoint are kept, one checkpoint per report. In a Tune function
    trainable it is ``ray.tune.report``.
    """
    if in_train_worker():
        import ray.train

        _quiet_reports()
        rank0 = ray.train.get_context().get_world_rank() == 0
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if (
            rank0 and checkpoint_dir) else None
        ray.train.report(metrics if rank0 else {}, checkpoint=ckpt)
        return
    from ray import tune

    ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    tune.report(metrics, checkpoint=ckpt)


def _quiet_reports() -> None:
    """Ray Train logs a line per report and per checkpoint on every rank (some of its loggers
    are named by their file): keep its warnings only."""
    for name in ("context", "storage"):
        module = sys.modules.get(f"ray.train.v2._internal.execution.{name}")
        for logger in (module.__name__, getattr(module, "__file__", None)) if module else ():
            if logger:
                logging.getLogger(logger).setLevel(logging.WARNING)


@contextlib.contextmanager
def latest_checkpoint() -> Iterator[str | None]:
    """The directory of the trial's latest checkpoint (None on a fresh start), Train or Tune."""
    if in_train_worker():
        import ray.train

        checkpoint = ray.train.get_checkpoint()
    else:
        from ray import tune

        checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as path:
        yield path


def worker_resources(cpus: float, gpus: float) -> dict[str, float]:
    """Ray resources of one worker (``resources_per_worker``)."""
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


def torch_backend(gpus: float) -> str:
    """torch.distributed backend: NCCL for CUDA tensors when each worker has whole GPUs (NCCL
    refuses two ranks on one device), gloo otherwise (CPU tensors, and CUDA on shared GPUs)."""
    import torch.distributed as dist

    return "cpu:gloo,cuda:nccl" if gpus >= 1 and dist.is_nccl_available() else "gloo"


def max_concurrent(nodes: list[dict], workers: int, cpus: float, gpus: float) -> int:
    """How many trials of ``workers`` workers fit ``nodes`` (``ray.nodes()``) at once, at least 1.

    Each node holds as many workers as its CPUs and GPUs allow; a trial's workers may span
    nodes. Tune cannot see a driver's workers, so the sweep caps its trials by this.
    """
    slots = 0
    for node in nodes:
        if not node.get("Alive", True):
            continue
        res = node.get("Resources", {})
        fit = math.floor(res.get("CPU", 0) / cpus + 1e-9) if cpus > 0 else math.inf
        if gpus > 0:
            fit = min(fit, math.floor(res.get("GPU", 0) / gpus + 1e-9))
        slots += 0 if fit == math.inf else fit
    return max(1, slots // workers)


STOP_WAIT_S = 60.0  # how long a stopped trial waits for its Train run to shut down


def train_driver(loop: Callable[[dict], Any], workers: int, cpus: float, gpus: float,
                 storage_path: str | None) -> type:
    """A Tune trainable (class) whose trials run ``loop`` as a TorchTrainer of ``workers``.

    Each trial's Train run is ``ray-train-<Tune trial id>`` under ``storage_path``: a retried trial
    (Tune's ``max_failures``, after a worker or its node died) starts a TorchTrainer of the same
    name, which resumes from the run's latest checkpoint; Ray Train itself retries nothing, so
    every failure is counted once, by Tune. Rank 0's reports reach Tune one at a time, and the
    Train run waits for Tune's verdict on each: when ASHA stops the trial, the run shuts its
    worker group down (and frees its placement group) before the trial's actor goes.
    """
    from ray import tune

    class TrainDriver(tune.Trainable):
        def setup(self, config: dict) -> None:
            import ray.train
            from ray.train.torch import TorchConfig, TorchTrainer

            if not TorchTrainer.__module__.startswith("ray.train.v2"):
                raise RaylawError("--workers-per-trial needs Ray Train V2 (Ray >= 2.43 with "
                                  "RAY_TRAIN_V2_ENABLED=1, the default in recent Ray)")
            self._box = _mailbox().remote()
            self._awaiting, self._last, self._error = False, {}, None
            trainer = TorchTrainer(
                loop, train_loop_config=config,
                torch_config=TorchConfig(backend=torch_backend(gpus)),
                scaling_config=ray.train.ScalingConfig(
                    num_workers=workers, use_gpu=gpus > 0,
                    resources_per_worker=worker_resources(cpus, gpus)),
                run_config=ray.train.RunConfig(
                    name=f"ray-train-{self.trial_id}", storage_path=storage_path,
                    callbacks=[_relay(self._box)],
                    failure_config=ray.train.FailureConfig(max_failures=0),
                    checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)))
            self._thread = threading.Thread(target=self._fit, args=(trainer,), daemon=True)
            self._thread.start()

        def _fit(self, trainer: Any) -> None:
            try:
                trainer.fit()
            except BaseException as e:  # noqa: BLE001 - handed to Tune by step()
                self._error = e
            finally:
                self._box.put_result.remote(None)  # the run is over

        def step(self) -> dict:
            import ray

            if self._awaiting:
                self._box.put_verdict.remote(True)  # Tune took the last result: go on
            result = ray.get(self._box.get_result.remote())
            if result is None:
                self._thread.join()
                if self._error is not None:
                    raise self._error
                return {**self._last, "done": True}
            self._awaiting, self._last = True, result
            return result

        def cleanup(self) -> None:
            self._box.put_verdict.remote(False)  # stopped: the run ends at its next report
            self._thread.join(timeout=STOP_WAIT_S)

        def save_checkpoint(self, checkpoint_dir: str) -> dict:
            return {}  # the Train run keeps the trial's checkpoints under its own name

        def load_checkpoint(self, checkpoint: Any) -> None:
            pass

    name = getattr(loop, "__name__", "train")
    return type(name, (TrainDriver,), {"__qualname__": name})


class TrialStopped(Exception):
    """Raised in a Train run's controller when Tune stopped its trial (ends the run)."""


def _mailbox() -> Any:
    """An actor (no resources) passing a trial's results to Tune and Tune's verdicts back."""
    import asyncio

    import ray

    @ray.remote(num_cpus=0)
    class Mailbox:
        def __init__(self) -> None:
            self.results: asyncio.Queue = asyncio.Queue()
            self.verdicts: asyncio.Queue = asyncio.Queue()

        async def put_result(self, result: dict | None) -> None:
            await self.results.put(result)

        async def get_result(self) -> dict | None:
            return await self.results.get()

        async def put_verdict(self, go_on: bool) -> None:
            await self.verdicts.put(go_on)

        async def get_verdict(self) -> bool:
            return await self.verdicts.get()

    return Mailbox


def _relay(box: Any) -> Any:
    """A Ray Train callback for the run's controller: it hands rank 0's report to the Tune
    trial, then waits for Tune's verdict (ASHA's) and ends the run when it says stop."""
    import ray
    from ray.train import UserCallback

    class Relay(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
            ray.get(box.put_result.remote(dict(metrics[0])))
            if not ray.get(box.get_verdict.remote()):
                # the run ends on purpose: no error traceback from the controller (its process
                # ends with the run)
                logging.getLogger("ray.train.v2._internal.execution").setLevel(logging.CRITICAL)
                raise TrialStopped("Tune stopped this trial (early stopping)")

    return Relay()


def train_storage(results_dir: str | None, experiment: str) -> str:
    """Where a sweep's Train runs keep their checkpoints: next to the Tune trials' results.

    Every worker must reach it: on a cluster whose workers span nodes, a shared file system or
    a cloud URI (``--results``).
    """
    if results_dir and "://" in results_dir:
        return f"{results_dir.rstrip('/')}/{experiment}"
    base = os.path.abspath(results_dir) if results_dir else os.path.expanduser("~/ray_results")
    return os.path.join(base, experiment)
