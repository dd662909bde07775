"""Tests for the built-in byte-level GPT trainable (real torch, no Ray)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from raylaw.trainables import lm

TINY = {
    "lr": 3e-3,
    "batch_size": 16,
    "weight_decay": 0.1,
    "warmup": 0.05,
    "scale": {"N": 2e4, "D": 2e5},
    "eval_tokens": 8192,
    "threads": 1,  # tiny models gain little from threads, and lose a lot on a busy machine
    "checkpoint_every": 0,  # a checkpoint with every report, for the tests that restore one
}


def _collect(config: dict, keep: Path | None = None, checkpoint_dir: str | None = None) -> list:
    """Run the core loop with a list-appending reporter; copy checkpoints under ``keep``."""
    reports: list[dict] = []

    def report(metrics: dict, ckpt: str | None) -> None:
        if keep is not None and ckpt is not None:
            shutil.copytree(ckpt, keep / f"report{len(reports)}")
        reports.append(dict(metrics))

    lm.run(config, report, checkpoint_dir=checkpoint_dir)
    return reports


@pytest.mark.parametrize("N", [2.5e4, 5e4, 1e5, 2e5, 1e6, 1e7])
def test_shape_for_is_close_to_n(N: float) -> None:
    n_layer, n_embd, n_head = lm.shape_for(N)
    assert abs(lm.count_params(n_layer, n_embd) / N - 1) < 0.05
    assert n_embd % 16 == 0 and n_embd % n_head == 0
    assert 16 <= n_embd / n_layer <= 64


def test_shape_for_picks_the_closest_count() -> None:
    N = 1e5
    best = abs(lm.count_params(*lm.shape_for(N)[:2]) - N)
    for n_layer in range(1, 12):
        for n_embd in range(16 * n_layer, 64 * n_layer + 1, 16):
            assert abs(lm.count_params(n_layer, n_embd) - N) >= best


def test_shape_for_at_a_fixed_depth_scales_the_width_alone() -> None:
    shapes = [lm.shape_for(N, n_layer=2) for N in (1.25e4, 2.5e4, 5e4, 1e5)]
    assert [s[:2] for s in shapes] == [(2, 24), (2, 32), (2, 48), (2, 64)]
    for N, (_, n_embd, n_head) in zip((1.25e4, 2.5e4, 5e4, 1e5), shapes):
        assert n_embd % 8 == 0 and n_embd % n_head == 0
        closest = min(range(8, 200, 8), key=lambda w: abs(math.log(lm.count_params(2, w) / N)))
        assert n_embd == closest
    assert lm.shape_for(1e5, n_layer=2) == lm.shape_for(1e5)  # the same model where they meet
    with pytest.raises(ValueError, match="n_layer"):
        lm.shape_for(1e5, n_layer=0)


def test_config_n_layer_sets_the_depth(tmp_path: Path) -> None:
    config = {**TINY, "n_layer": 3, "scale": {"N": 2e4, "D": 2e4}}
    _collect(config, keep=tmp_path)
    state = torch.load(tmp_path / "report0" / lm.CHECKPOINT_FILE, weights_only=True)["model"]
    n_layer, n_embd, _ = lm.shape_for(2e4, 3)
    assert n_layer == 3 != lm.shape_for(2e4)[0]
    assert {k.split(".")[1] for k in state if k.startswith("blocks.")} == {"0", "1", "2"}
    assert state["wte.weight"].shape == (lm.VOCAB, n_embd)
    for bad in (0, "two", 2.5):
        with pytest.raises(ValueError, match="config n_layer: expected a positive integer"):
            lm.run({**config, "n_layer": bad}, lambda metrics, ckpt: None)


@pytest.mark.parametrize("shape", [(1, 32), (2, 64), (3, 96), (4, 128)])
def test_count_params_matches_module(shape: tuple[int, int]) -> None:
    n_layer, n_embd = shape
    model = lm.GPT(n_layer, n_embd, lm.n_heads(n_embd), seq_len=64)
    embeddings = {"wte.weight", "wpe.weight"}
    real = sum(p.numel() for name, p in model.named_parameters() if name not in embeddings)
    assert real == lm.count_params(n_layer, n_embd)
    assert sum(p.numel() for p in model.parameters()) == real + (lm.VOCAB + 64) * n_embd


def test_tiny_run_learns_and_reports_tokens() -> None:
    reports = _collect(TINY)
    losses = [r["loss"] for r in reports]
    tokens = [r["tokens"] for r in reports]
    assert len(reports) == lm.LMConfig.eval_every
    assert all(math.isfinite(x) for r in reports for x in (r["loss"], r["train_loss"]))
    assert not any(r["diverged"] for r in reports)
    assert losses[-1] < losses[0] - 0.5
    assert all(b <= a + 0.05 for a, b in zip(losses, losses[1:], strict=False))
    assert all(b > a for a, b in zip(tokens, tokens[1:], strict=False))
    step_tokens = TINY["batch_size"] * 128
    assert tokens[-1] == math.ceil(TINY["scale"]["D"] / step_tokens) * step_tokens
    assert tokens[-1] >= TINY["scale"]["D"]
    assert losses[-1] < 4.0  # well below ln(256) = 5.55 nats per byte


def test_huge_lr_reports_divergence_once() -> None:
    reports = _collect({**TINY, "lr": 50.0, "warmup": 0.0})
    assert len(reports) == 1
    (last,) = reports
    assert last["diverged"] is True
    assert last["loss"] == lm.DIVERGED_LOSS
    assert math.isfinite(last["train_loss"])
    assert 0 < last["tokens"] < TINY["scale"]["D"]


def test_resume_continues_from_saved_step(tmp_path: Path) -> None:
    config = {**TINY, "scale": {"N": 2e4, "D": 1e5}, "eval_every": 4}
    full = _collect(config, keep=tmp_path)
    assert len(full) == 4
    resumed = _collect(config, checkpoint_dir=str(tmp_path / "report1"))
    assert [r["tokens"] for r in resumed] == [r["tokens"] for r in full[2:]]
    for a, b in zip(resumed, full[2:], strict=True):  # same state and data order: same losses
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    state = torch.load(tmp_path / "report1" / lm.CHECKPOINT_FILE, weights_only=True)
    assert state["step"] * config["batch_size"] * 128 == full[1]["tokens"]


def test_checkpoints_every_so_many_seconds_and_at_the_end(tmp_path: Path, monkeypatch) -> None:
    config = {**TINY, "scale": {"N": 2e4, "D": 1e5}, "eval_every": 8}
    default = {k: v for k, v in config.items() if k != "checkpoint_every"}
    _collect(default, keep=tmp_path / "default")  # a short run: its one checkpoint is the last
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == ["report7"]
    ticks = iter(range(10**6))  # a clock that moves 1 s each time it is read
    monkeypatch.setattr(lm, "clock", lambda: float(next(ticks)))
    reports = _collect({**config, "checkpoint_every": 2.5}, keep=tmp_path / "timed")
    kept = sorted(int(p.name[len("report"):]) for p in (tmp_path / "timed").iterdir())
    assert len(reports) == 8 and kept[-1] == 7 and 1 < len(kept) < 8, kept
    assert all(b - a >= 2 for a, b in zip(kept, kept[1:]))  # 2.5 s apart, a read per report


def test_resume_at_the_end_reports_once_more(tmp_path: Path) -> None:
    config = {**TINY, "scale": {"N": 2e4, "D": 2e4}, "eval_every": 2}
    full = _collect(config, keep=tmp_path)
    again = _collect(config, checkpoint_dir=str(tmp_path / f"report{len(full) - 1}"))
    assert len(again) == 1 and again[0]["tokens"] == full[-1]["tokens"]
    assert again[0]["loss"] == pytest.approx(full[-1]["loss"], abs=1e-5)


def test_cooldown_at_rungs_measures_without_changing_the_run(tmp_path: Path) -> None:
    config = {**TINY, "scale": {"N": 2e4, "D": 4e4}, "eval_every": 2}
    step_tokens = TINY["batch_size"] * 128
    rungs = [4e4 / 9, 4e4 / 3]
    plain = _collect(config)
    cooled = _collect({**config, "rungs": rungs}, keep=tmp_path)
    off = _collect({**config, "rungs": rungs, "cooldown": 0})
    at = [math.ceil(r / step_tokens) * step_tokens for r in rungs]  # first report past a rung
    assert [r["tokens"] for r in cooled] == sorted(at + [r["tokens"] for r in plain])
    assert [r["tokens"] for r in off] == [r["tokens"] for r in cooled]
    by_tokens = {r["tokens"]: r for r in cooled}
    for r in plain:  # the branch trains a copy: the run itself is the same, step for step
        assert by_tokens[r["tokens"]]["raw_loss"] == r["loss"] == by_tokens[r["tokens"]]["loss"]
    spent = 0
    for r, o in zip(cooled, off, strict=True):
        assert o["loss"] == o["raw_loss"] == r["raw_loss"] and o["tokens_spent"] == o["tokens"]
        if r["tokens"] in at:  # 10% more steps with the lr falling: lower, and counted
            assert r["loss"] < r["raw_loss"]
            spent += math.ceil(lm.LMConfig.cooldown * r["tokens"] / step_tokens) * step_tokens
        assert r["tokens_spent"] == r["tokens"] + spent
    # resumed from the checkpoint at the last rung: the cooldowns done so far still count
    i = [r["tokens"] for r in cooled].index(at[-1])
    resumed = _collect({**config, "rungs": rungs}, checkpoint_dir=str(tmp_path / f"report{i}"))
    assert [r["tokens_spent"] for r in resumed] == [r["tokens_spent"] for r in cooled[i + 1:]]


def test_rung_steps() -> None:
    assert lm.rung_steps([1000, 2000, 5000], 512, 10) == {2, 4}  # the last step is no rung
    assert lm.rung_steps([100], 512, 10) == {1}
    assert lm.rung_steps([], 512, 10) == set()


def test_init_and_data_seeds_apart() -> None:
    config = {**TINY, "scale": {"N": 2e4, "D": 2e4}, "eval_every": 1}
    loss = {k: _collect({**config, **extra})[-1]["loss"] for k, extra in {
        "seed 0": {}, "both 0": {"seed": 5, "init_seed": 0, "data_seed": 0},
        "seed 1": {"seed": 1}, "init 1": {"init_seed": 1}, "data 1": {"data_seed": 1},
        "init 1 data 1": {"init_seed": 1, "data_seed": 1}}.items()}
    assert loss["both 0"] == loss["seed 0"]  # the specific keys override ``seed``
    assert loss["init 1 data 1"] == loss["seed 1"]
    assert len({loss["seed 0"], loss["init 1"], loss["data 1"], loss["seed 1"]}) == 4


def test_default_split_is_deterministic() -> None:
    train, val = lm.load_data()
    lm._DATA_CACHE.clear()
    train2, val2 = lm.load_data()
    assert train is not train2
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert 0.02 < len(val) / (len(train) + len(val)) < 0.1
    assert len(train) + len(val) <= lm.DATA_CAP


def test_directory_and_file_splits(tmp_path: Path) -> None:
    for i in range(60):
        (tmp_path / f"doc{i:02d}.txt").write_bytes(bytes([65 + i % 26]) * 1000)
    train, val = lm.load_data(str(tmp_path))
    lm._DATA_CACHE.clear()
    train2, val2 = lm.load_data(str(tmp_path))
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert len(train) + len(val) == 60_000 and 0 < len(val) < 30_000
    assert len(val) % 1000 == 0  # whole files go to one side
    train, val = lm.load_data(str(tmp_path / "doc00.txt"))  # one file: its last 5%
    assert (len(train), len(val)) == (950, 50)


def test_assigned_cpus_outside_ray() -> None:
    assert lm.assigned_cpus() == (os.cpu_count() or 1)


def test_device_outside_ray_is_cuda_when_visible() -> None:
    assert lm.assigned_gpus() is None
    assert lm.pick_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_schedule_and_report_steps() -> None:
    assert lm.report_steps(100, 16)[-1] == 100 and len(lm.report_steps(100, 16)) == 16
    assert lm.report_steps(5, 16) == [1, 2, 3, 4, 5]
    assert lm.lr_at(0, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert lm.lr_at(9, 100, 1.0, 0.1) == pytest.approx(1.0)
    assert lm.lr_at(10, 100, 1.0, 0.1) == pytest.approx(1.0)
    assert lm.lr_at(99, 100, 1.0, 0.1) == pytest.approx(0.1, abs=1e-3)
    assert lm.lr_at(0, 100, 1.0, 0.0) == pytest.approx(1.0)


def test_last_evaluation_uses_the_larger_final_slice(tmp_path: Path) -> None:
    config = {**TINY, "scale": {"N": 2e4, "D": 1e5}, "eval_every": 4}
    same = _collect({**config, "final_eval_tokens": config["eval_tokens"]})
    big = _collect({**config, "final_eval_tokens": 2**17}, keep=tmp_path)
    assert [r["loss"] for r in big[:-1]] == [r["loss"] for r in same[:-1]]  # same training
    assert big[-1]["loss"] != same[-1]["loss"]
    # the last loss is the final model's loss on the 2**17-byte slice
    state = torch.load(tmp_path / f"report{len(big) - 1}" / lm.CHECKPOINT_FILE, weights_only=True)
    model = lm.GPT(*lm.shape_for(2e4), seq_len=128)
    model.load_state_dict(state["model"])
    _, val = lm.load_data()
    loss = lm.evaluate(model, val, 2**17, 128, "cpu", contextlib.nullcontext())
    assert big[-1]["loss"] == pytest.approx(loss, abs=1e-5)


def test_config_is_one_dataclass_and_unknown_keys_are_refused_by_name() -> None:
    cfg = lm.LMConfig.from_dict(TINY)
    assert (cfg.N, cfg.D, cfg.batch_size, cfg.eval_every) == (2e4, 2e5, 16, 16)
    assert cfg.init_seed == cfg.data_seed == cfg.seed == 0  # seed sets both unless they are set
    assert cfg.final_eval_tokens == 2**18  # the larger of eval_tokens and 2**18
    flat = {k: v for k, v in TINY.items() if k != "scale"} | {"N": 2e4, "D": 2e5}
    assert lm.LMConfig.from_dict(flat) == cfg  # the scale as flat N and D keys works too
    assert lm.LMConfig.from_dict({**TINY, "seed": 3, "data_seed": 1}).init_seed == 3
    for bad, message in [
        ({"eval_evry": 4}, "config eval_evry: not a setting of the built-in LM"),
        ({"batch_size": "big"}, "config batch_size: expected an integer, got 'big'"),
        ({"lr": None}, "config lr: expected a number, got None"),
        ({"scale": {"N": 2e4, "D": 2e5, "T": 1.0}}, "config scale: unknown variable 'T'"),
    ]:
        with pytest.raises(ValueError, match=message):
            lm.run({**TINY, **bad}, lambda metrics, ckpt: None)
    with pytest.raises(ValueError, match="config lr: required by the built-in LM"):
        lm.run({k: v for k, v in TINY.items() if k != "lr"}, lambda metrics, ckpt: None)
