"""Multi-worker trials (--workers-per-trial): each trial a Ray Train TorchTrainer.

On the session's embedded Ray (2 CPUs, 2 logical GPUs): a 2-worker sweep at 0.5 CPU per worker
gives the store and law of the same sweep in single-worker mode; the built-in LM trains
data-parallel (gloo) as one process would; a worker killed mid-trial is retried from its
checkpoint and recorded once; K workers x G logical GPUs never over-subscribe a GPU. DDP itself
(uneven shards, rank 0's reports and checkpoints) is checked without Ray, on two processes.
Ray Train starts ~10 processes per trial, 10-20 s on 2 busy cores, so the sweeps are short.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from itertools import combinations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from optuna.trial import TrialState

from raylaw.cli import main
from raylaw.progress import resources_line
from raylaw.trainables import lm
from raylaw.workers import max_concurrent, torch_backend, worker_resources
from tests.cluster_util import free_ports
from tests.test_sweep import sweep_args, trials

WORKERS = ["--workers-per-trial", "2", "--cpus-per-trial", "0.5"]


def test_resources_and_how_many_trials_fit():
    head = {"Alive": True, "Resources": {"CPU": 2.0}}
    gpu_node = {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 2.0}}
    dead = {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}
    assert max_concurrent([head], 2, 0.5, 0) == 2  # 4 worker slots, 2 per trial
    assert max_concurrent([head, gpu_node, dead], 2, 1.0, 0) == 2
    assert max_concurrent([head, gpu_node], 2, 0.5, 0.5) == 2  # GPUs only on one node
    assert max_concurrent([head, gpu_node], 2, 0.5, 1.0) == 1
    assert max_concurrent([head], 2, 0.5, 1.0) == 1  # never 0: the trial waits for a GPU node
    assert worker_resources(0.5, 0) == {"CPU": 0.5}
    assert worker_resources(1, 0.25) == {"CPU": 1, "GPU": 0.25}
    assert torch_backend(0.5) == "gloo"  # NCCL refuses two ranks on one GPU
    assert torch_backend(1.0) == ("cpu:gloo,cuda:nccl" if dist.is_nccl_available() else "gloo")
    assert resources_line({"cpu": 0.5, "gpu": 0.25, "workers": 2}) == (
        "resources per trial: 2 Ray Train workers x (0.5 CPU, 0.25 GPU) = 1 CPU, 0.5 GPU")
    assert resources_line({"cpu": 1.0, "gpu": 0.0}) == "resources per trial: 1 CPU, 0 GPU"


def _ddp_rank(rank: int, port: int, configs: list[dict], out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    for i, config in enumerate(configs):
        reports = []
        lm.run(config, lambda metrics, ckpt, into=reports: into.append((metrics, bool(ckpt))))
        out.put((rank, i, reports))
    dist.destroy_process_group()


def test_lm_data_parallel_is_the_single_process_run():
    """Batch 3 splits 1 + 2 over the ranks; batch 1 leaves rank 1 without a sequence."""
    configs = [{"lr": 3e-3, "batch_size": bs, "warmup": 0.05, "threads": 1,
                "scale": {"N": 2e4, "D": 5e3 * bs}, "eval_tokens": 4096,
                "final_eval_tokens": 8192, "eval_every": 3, "rungs": [2.5e3 * bs],
                "checkpoint_every": 0}  # a checkpoint with every report (rank 0's)
               for bs in (3, 1)]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_ports(1)[0]
    procs = [ctx.Process(target=_ddp_rank, args=(r, port, configs, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = {(rank, i): reports for rank, i, reports in (out.get(timeout=240) for _ in range(4))}
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    for i, config in enumerate(configs):
        single = []
        lm.run(config, lambda metrics, ckpt, into=single: into.append(metrics))
        for rank in (0, 1):
            reports = got[rank, i]
            assert len(reports) == len(single) >= 4  # a rung's cooled report included
            for (metrics, with_ckpt), one in zip(reports, single):
                assert with_ckpt == (rank == 0)  # one checkpoint per report, from rank 0
                assert metrics["tokens"] == one["tokens"]
                assert metrics["tokens_spent"] == one["tokens_spent"]
                for key in ("loss", "raw_loss", "train_loss"):  # the same run, up to rounding
                    assert metrics[key] == pytest.approx(one[key], rel=2e-5)


def _same_trials(a, b):
    assert len(a) == len(b)
    for x, y in zip(sorted(a, key=lambda t: t.number), sorted(b, key=lambda t: t.number)):
        assert (x.params, x.state, x.user_attrs["raylaw_status"]) == (
            y.params, y.state, y.user_attrs["raylaw_status"])
        assert x.intermediate_values == pytest.approx(y.intermediate_values)
        assert (x.value is None) == (y.value is None)
        if x.value is not None:
            assert x.value == pytest.approx(y.value)


def _law(path):
    law = json.loads(path.read_text())  # the optima's source names the store: left out
    return law["terms"], [{k: v for k, v in o.items() if k != "source"} for o in law["optima"]]


def test_two_worker_sweep_gives_the_single_worker_store_and_law(ray_local, tmp_path, capsys):
    """Trials one at a time, so ASHA's decisions do not depend on which trial is faster."""
    for name, extra in (("one", []), ("two", WORKERS)):
        (tmp_path / name).mkdir()
        assert main(sweep_args(tmp_path / name, "--max-concurrent", "1", *extra,
                               samples=2)) == 0
    out = capsys.readouterr().out
    assert "resources per trial: 2 Ray Train workers x (0.5 CPU, 0 GPU) = 1 CPU, 0 GPU" in out
    one, two = trials(tmp_path / "one"), trials(tmp_path / "two")
    _same_trials(one, two)
    assert "stopped" in [t.user_attrs["raylaw_status"] for t in two]  # ASHA stopped one
    assert [t.user_attrs.get("law_center") for t in two] == [True, None]
    assert all(t.user_attrs["resources"] == {"cpu": 0.5, "gpu": 0.0, "workers": 2} for t in two)
    assert _law(tmp_path / "two" / "law.json") == _law(tmp_path / "one" / "law.json")
    import ray  # every Train run freed its workers' placement group, early-stopped ones too

    left = [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]
    assert not left, left


def test_lm_sweep_trains_data_parallel_under_ray_train(ray_local, tmp_path):
    config = ["--config", "eval_every=2", "--config", "weight_decay=0.02"]
    assert main(sweep_args(tmp_path, *config, *WORKERS, scale=("N=2e4", "D=2e4"), samples=1,
                           trainable=None)) == 0
    (t,) = trials(tmp_path)
    assert t.state == TrialState.COMPLETE and t.user_attrs["device"] == "cpu"
    (params,) = (tmp_path / "results").rglob("params.json")  # the trial's whole config
    alone = []  # the same trial in one process, no Ray
    lm.run({**json.loads(params.read_text()), "threads": 1},
           lambda metrics, ckpt: alone.append(metrics))
    assert t.value == pytest.approx(alone[-1]["loss"], rel=2e-5)
    assert sorted(t.intermediate_values) == [r["tokens"] for r in alone]
    (run,) = (tmp_path / "results").glob("*/ray-train-*")  # the trial's Train run
    ckpt = max(p for p in run.glob("checkpoint_*") if p.is_dir())  # the last report's
    state = torch.load(ckpt / lm.CHECKPOINT_FILE, weights_only=True)
    assert state["step"] * t.params["batch_size"] * 128 == max(t.intermediate_values)


def _records(probe):
    return [json.loads(p.read_text()) for p in probe.glob("*.json")]


def test_a_killed_worker_is_retried_from_its_checkpoint_and_recorded_once(ray_local, tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    killed = []

    def kill_rank1_mid_trial():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            for r in _records(probe):
                if r["rank"] == 1 and r["last"] >= 3:
                    os.kill(r["pid"], signal.SIGKILL)
                    killed.append(r)
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_rank1_mid_trial, daemon=True)
    killer.start()
    args = sweep_args(tmp_path, *WORKERS, "--config", f"probe_dir={json.dumps(str(probe))}",
                      "--config", "reports=5", "--config", "sleep=1.0",
                      "--grace-fraction", "1", samples=1, trainable="tests.synthetic:worker_probe")
    args[args.index("--max-failures") + 1] = "1"
    assert main(args) == 0
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    (t,) = trials(tmp_path)  # recorded once, completed
    assert t.state == TrialState.COMPLETE and t.user_attrs["raylaw_status"] == "completed"
    assert sorted(t.intermediate_values) == [int(1e5 * i / 5) for i in range(1, 6)]
    records = _records(probe)
    again = [r for r in records if r["first"] > 0]  # the retry resumed from a checkpoint
    assert len(again) == 2 and {r["rank"] for r in again} == {0, 1}
    # from the last checkpoint the controller had registered (reports are asynchronous)
    assert all(r["first"] >= 1 and r["last"] == 5 for r in again)
    assert killed[0]["pid"] not in {r["pid"] for r in again}
    failures = []
    for state in (tmp_path / "results").glob("*/experiment_state-*.json"):
        for _, runtime in json.loads(state.read_text())["trial_data"]:
            failures.append(json.loads(runtime)["num_failures"])
    assert failures == [1]  # one failure, counted once (by Tune)


def test_multi_worker_trials_never_oversubscribe_a_gpu(ray_local, tmp_path):
    """2 workers x 0.5 logical GPU per trial, 3 trials offered at once on 2 GPUs (room for 2):
    each worker gets one GPU of its own, and no GPU ever holds more than 1.0 of running
    workers; the third trial's workers wait for the first trial's."""
    probe = tmp_path / "probe"
    probe.mkdir()
    assert main(sweep_args(tmp_path, *WORKERS, "--gpus-per-trial", "0.5",
                           "--max-concurrent", "3", "--grace-fraction", "1",
                           "--config", f"probe_dir={json.dumps(str(probe))}",
                           "--config", "reports=2", "--config", "sleep=2.5",
                           samples=3, trainable="tests.synthetic:worker_probe")) == 0
    records = _records(probe)
    assert len(records) == 6 and {r["size"] for r in records} == {2}
    assert all(len(r["gpus"]) == 1 and r["gpus"][0] in ("0", "1") for r in records)
    for r in records:  # at each worker's start: what was running on every GPU
        running = [o for o in records if o["start"] <= r["start"] < o["end"]]
        for gpu in ("0", "1"):
            assert 0.5 * sum(o["gpus"] == [gpu] for o in running) <= 1.0
        assert len(running) <= 4  # 2 GPUs / 0.5
    by_trial = {}
    for r in records:
        by_trial.setdefault(r["trial"], []).append(r)
    spans = [(min(r["start"] for r in rs), max(r["end"] for r in rs)) for rs in by_trial.values()]
    assert any(a[0] < b[1] and b[0] < a[1] for a, b in combinations(spans, 2))  # packed
    ts = trials(tmp_path)
    assert len(ts) == 3 and all(t.state == TrialState.COMPLETE for t in ts)
    assert all(t.user_attrs["resources"] == {"cpu": 0.5, "gpu": 0.5, "workers": 2} for t in ts)
