"""A small byte-level GPT trained as a Ray Tune function trainable.

The whole workload fits in one file, nanoGPT style: a pre-LayerNorm decoder over the 256 byte
values with a tied output head, AdamW with linear warmup and cosine decay to 10% of the peak
learning rate, and a training loop that reports validation loss (nats per byte) against tokens
seen. The model width and depth come from the scale variable N (non-embedding parameters) and
the run length from D (training tokens), so the same search space can be swept across scales.
At ASHA's rungs (config ``rungs``, passed by the sweep) the loss is measured after a short
cooldown on a copy of the run, so trials are compared as they would end, not mid-schedule.

Every setting, each key of a trial's config, is a field of ``LMConfig`` with its default and
why. Use ``train`` under Ray Tune (``raylaw.trainables.lm:train``), where it is also the
``train_loop_per_worker`` of a multi-worker trial (Ray Train, DDP: every rank trains on its own
shard of each batch), or ``run`` with any reporter. On CUDA it trains in bf16 autocast with fused
AdamW (optionally ``torch.compile``) on data that stays on the device.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import math
import os
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

VOCAB = 256  # byte-level vocabulary
DATA_CAP = 30 * 2**20  # most bytes read from the corpus per process
MIN_LR = 0.1  # the schedule ends at this fraction of the peak learning rate
DIVERGED_LOSS = 1e6  # loss reported for a diverged trial (finite, so schedulers can rank it)
UNIFORM_LOSS = math.log(VOCAB)  # loss of a uniform byte predictor
CHECKPOINT_FILE = "state.pt"
clock = time.monotonic  # what checkpoint_every is measured with


@dataclass(frozen=True)
class LMConfig:
    """Every key of a trial's config, with its default and why (``LMConfig.from_dict``).

    The scale comes as ``scale`` = {"N": ..., "D": ...} (what a sweep passes) or as flat ``N``
    and ``D`` keys. An unknown key is refused by name, so a misspelt ``--config`` never passes
    silently.
    """

    # hyperparameters: the search space's ---------------------------------------------------
    lr: float  # peak learning rate of the warmup-cosine schedule
    batch_size: int  # sequences per optimizer step
    # the scale ------------------------------------------------------------------------------
    N: float  # non-embedding parameters: the model's width and depth
    D: float  # training tokens (bytes): the run's length
    warmup: float = 0.0  # linear warmup, as a fraction of the run's steps
    weight_decay: float = 0.0  # AdamW's decay, on matrices only (not on LayerNorm gains)
    # model ----------------------------------------------------------------------------------
    seq_len: int = 128  # context, in bytes
    n_layer: int | None = None  # a fixed depth, so that N sets the width alone (None: N sets both)
    # data -----------------------------------------------------------------------------------
    data: str | None = None  # a text file or folder (None: the stdlib's .py sources, everywhere)
    seed: int = 0  # of the initialization and the data order, so trials are reproducible
    init_seed: int | None = None  # the initialization's alone, to study its noise (None: seed)
    data_seed: int | None = None  # the data order's alone, likewise (None: seed)
    # evaluation and reports -----------------------------------------------------------------
    eval_every: int = 16  # evaluations per full-length run, evenly spaced: ASHA's resolution
    eval_tokens: int = 2**16  # validation bytes per evaluation: one fixed slice for every trial
    # the last evaluation's (None: the larger of eval_tokens and 2**18): it ranks finished trials
    # and feeds the law, so it is measured more precisely
    final_eval_tokens: int | None = None
    rungs: tuple[float, ...] = ()  # tokens at which ASHA compares trials (the sweep passes them)
    # the cooldown before a rung's evaluation, in steps as a fraction of the steps so far (0: none),
    # so trials are compared as they would end, not mid-schedule
    cooldown: float = 0.1
    # checkpoints ----------------------------------------------------------------------------
    # seconds between checkpoints, one more at the end (0: at every report); large models'
    # checkpoints are too big to write at every evaluation
    checkpoint_every: float = 600.0
    restore_from: str | None = None  # a checkpoint to continue from when Ray has none (--resume)
    # hardware -------------------------------------------------------------------------------
    threads: int | None = None  # torch's CPU threads (None or 0: the CPUs Ray gave the trial)
    autocast: bool = True  # on CUDA: bf16 autocast
    fused: bool = True  # on CUDA: the fused AdamW kernel
    compile: bool = False  # torch.compile the model: pays only on runs much longer than compiling

    def __post_init__(self) -> None:
        for name, value in (("init_seed", self.seed), ("data_seed", self.seed),
                            ("final_eval_tokens", max(self.eval_tokens, 2**18))):
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> LMConfig:
        """A trial's config, checked: a ValueError names an unknown, missing or bad key."""
        config = dict(config)
        scale = config.pop("scale", None)
        if scale is not None:
            if not isinstance(scale, Mapping):
                raise ValueError(f"config scale: expected {{'N': ..., 'D': ...}}, got {scale!r}")
            if set(scale) - {"N", "D"}:
                raise ValueError(f"config scale: unknown variable "
                                 f"'{sorted(set(scale) - {'N', 'D'})[0]}' (the LM's are N and D)")
            config.update(scale)
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(config) - set(known) - {"scale"})
        if unknown:
            raise ValueError(f"config {unknown[0]}: not a setting of the built-in LM "
                             f"(raylaw.trainables.lm.LMConfig: {', '.join(known)})")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in config]
        if missing:
            raise ValueError(f"config {missing[0]}: required by the built-in LM")
        return cls(**{f.name: _checked(f.name, f.type, config[f.name])
                      for f in fields(cls) if f.name in config})

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run: enough to see D tokens."""
        return max(1, math.ceil(self.D / self.tokens_per_step))


def _checked(name: str, kind: str, value: Any) -> Any:
    """Config ``name``'s ``value`` as its field's type (``kind``, as annotated)."""
    if value is None and "None" in kind:
        return None
    if name == "n_layer":
        return _depth(value)
    base = kind.split(" |")[0]
    try:
        if base.startswith("tuple"):
            return tuple(float(v) for v in value or ())
        return {"float": float, "int": int, "bool": bool, "str": str}[base](value)
    except (TypeError, ValueError):
        expected = {"float": "a number", "int": "an integer", "bool": "true or false",
                    "str": "a string"}.get(base, "a list of numbers")
        raise ValueError(f"config {name}: expected {expected}, got {value!r}") from None


Reporter = Callable[[dict, "str | None"], None]
_DATA_CACHE: dict[tuple[str, int, str], tuple[torch.Tensor, torch.Tensor]] = {}


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks of one trial (1 rank by default).

    Args:
        rank: this process's rank.
        size: how many ranks train the trial.
    """

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        """The torch.distributed process group's rank and size (Ray Train sets it up)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (a copy; ``t`` itself when there is one rank)."""
        if self.size == 1:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t

    def share(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` rows (shares differ by one row at most)."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)


SOLO = World()  # a single process


# ----------------------------------------------------------------------------------- model shape


def count_params(n_layer: int, n_embd: int) -> int:
    """Non-embedding parameters: attention, MLP and LayerNorm weights (no biases anywhere)."""
    return n_layer * (12 * n_embd * n_embd + 2 * n_embd) + n_embd


def n_heads(n_embd: int) -> int:
    """Number of attention heads: head size close to 64 and dividing the width."""
    heads = max(1, round(n_embd / 64))
    while n_embd % heads:
        heads -= 1
    return heads


@functools.lru_cache(maxsize=256)
def shape_for(N: float, n_layer: int | None = None) -> tuple[int, int, int]:
    """(n_layer, n_embd, n_head) whose count_params is closest to N.

    Widths are multiples of 16 and the aspect ratio n_embd / n_layer stays within [16, 64];
    ties go to the shape whose aspect ratio is closest to 32. With ``n_layer`` given, only the
    width scales (a multiple of 8, no aspect limit), so every step up in N widens the model; the
    free shapes widen only at every other doubling (1x32, 2x32, 1x64, 2x64 for N = 1.25e4..1e5).
    """
    if not N > 0:
        raise ValueError(f"N must be positive, got {N}")
    if n_layer is not None:
        if n_layer < 1:
            raise ValueError(f"n_layer must be at least 1, got {n_layer}")
        widths = range(8, 8 * math.ceil(math.sqrt(N / (12 * n_layer)) / 8 + 1) + 1, 8)
        n_embd = min(widths, key=lambda w: abs(math.log(count_params(n_layer, w) / N)))
        return n_layer, n_embd, n_heads(n_embd)
    best: tuple[float, float, int, int] | None = None
    for n_layer in range(1, 97):
        for n_embd in range(16 * n_layer, 64 * n_layer + 1, 16):
            miss = abs(math.log(count_params(n_layer, n_embd) / N))
            key = (round(miss, 9), abs(math.log2(n_embd / n_layer / 32)), n_layer, n_embd)
            if best is None or key < best:
                best = key
    _, _, n_layer, n_embd = best
    return n_layer, n_embd, n_heads(n_embd)


# ----------------------------------------------------------------------------------------- model


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention then a 4x GELU MLP."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(n_embd, bias=False)
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)
        self.ln2 = nn.LayerNorm(n_embd, bias=False)
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.out = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply attention and MLP with residual connections."""
        B, T, C = x.shape
        qkv = self.qkv(self.ln1(x)).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """Byte-level decoder; the output head shares the token embedding matrix.

    Args:
        n_layer: transformer blocks.
        n_embd: width.
        n_head: attention heads (they divide ``n_embd``).
        seq_len: the longest context, in bytes.
    """

    def __init__(self, n_layer: int, n_embd: int, n_head: int, seq_len: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, n_embd)
        self.wpe = nn.Embedding(seq_len, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:  # GPT-2 init, residual projections scaled down with depth
                residual = name.endswith(("proj.weight", "out.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer) if residual else 0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-byte cross-entropy (nats) of ``targets`` given ``idx``."""
        x = self.wte(idx) + self.wpe.weight[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.view(-1, VOCAB).float(), targets.reshape(-1))


def model_flops_per_token(n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 * (params incl. tied head) + 12 * n_layer * n_embd * seq_len."""
    return 6 * (count_params(n_layer, n_embd) + VOCAB * n_embd) + 12 * n_layer * n_embd * seq_len


# ------------------------------------------------------------------------------------------ data


def _corpus_files(path: str | None) -> tuple[Path, list[Path]]:
    """Root and sorted text files of the corpus; the default is the stdlib's own .py sources."""
    if path is None:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages")]
            files += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
        return root, sorted(files)
    root = Path(path).expanduser()
    if root.is_file():
        return root.parent, [root]
    return root, sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def load_data(path: str | None = None, cap: int = DATA_CAP,
              device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) uint8 byte tensors on ``device``, read once per process and cached.

    Files go to validation when the md5 of their relative path is 0 mod 20 (about 5%); a single
    file (or a split that leaves either side empty) uses its last 5% as validation instead.
    On a GPU the whole corpus (at most 30 MiB) stays in device memory, so batches never cross
    from the host.
    """
    key = (str(path), cap, str(device))
    if key not in _DATA_CACHE and device != "cpu":
        _DATA_CACHE[key] = tuple(t.to(device) for t in load_data(path, cap))  # type: ignore
    if key not in _DATA_CACHE:
        root, files = _corpus_files(path)
        parts: dict[bool, list[bytes]] = {False: [], True: []}
        total = 0
        for f in files:
            if total >= cap:
                break
            blob = f.read_bytes()[: cap - total]
            is_val = hashlib.md5(f.relative_to(root).as_posix().encode()).digest()[0] % 20 == 0
            parts[is_val].append(blob)
            total += len(blob)
        train, val = b"".join(parts[False]), b"".join(parts[True])
        if len(files) == 1 or not train or not val:
            stream = train + val
            train, val = stream[: len(stream) * 19 // 20], stream[len(stream) * 19 // 20 :]
        if len(val) < 2 or len(train) < 2:
            raise ValueError(f"corpus {path or root} is too small ({total} bytes)")
        _DATA_CACHE[key] = (
            torch.frombuffer(bytearray(train), dtype=torch.uint8),
            torch.frombuffer(bytearray(val), dtype=torch.uint8),
        )
    return _DATA_CACHE[key]


def get_batch(
    data: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator,
    rows: slice = slice(None),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (inputs, targets) windows of ``seq_len`` bytes drawn with ``gen``, on the data's
    device (``gen`` must be on it too); ``rows``: the part of the batch to return (a rank's
    share), the whole batch drawn all the same so every rank's generator stays in step."""
    starts = torch.randint(len(data) - seq_len - 1, (batch_size, 1), generator=gen,
                           device=data.device)[rows]
    buf = data[starts + torch.arange(seq_len + 1, device=data.device)].long()
    return buf[:, :-1], buf[:, 1:]


@torch.no_grad()
def evaluate(model: GPT, val: torch.Tensor, n_tokens: int, seq_len: int, device: str, ctx,
             world: World = SOLO) -> float:
    """Mean cross-entropy (nats per byte) on a fixed validation slice.

    The slice is ``n_tokens // seq_len`` windows spread evenly over the validation bytes, the
    same for every trial with the same corpus and sequence length. With several ranks each
    scores its share of the windows and the sums are added up.
    """
    n = max(1, n_tokens // seq_len)
    starts = torch.linspace(0, len(val) - seq_len - 1, n).long().unique().to(val.device)
    buf = val[starts[:, None] + torch.arange(seq_len + 1, device=val.device)].long()
    mine = buf[world.share(len(buf))]
    total, chunk = torch.zeros((), device=device), max(1, 2**14 // seq_len)
    for i in range(0, len(mine), chunk):
        part = mine[i : i + chunk].to(device)
        with ctx:
            loss = model(part[:, :-1], part[:, 1:])
        total += loss.float() * len(part)
    return (world.sum(total) / len(buf)).item()


# -------------------------------------------------------------------------------------- training


def lr_at(step: int, total_steps: int, peak: float, warmup: float) -> float:
    """Linear warmup over ``warmup * total_steps`` steps, then cosine decay to 10% of peak."""
    n_warm = int(warmup * total_steps)
    if step < n_warm:
        return peak * (step + 1) / n_warm
    progress = (step - n_warm) / max(1, total_steps - n_warm)
    return peak * (MIN_LR + (1 - MIN_LR) / 2 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float,
                   fused: bool = True) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (not on LayerNorm gains); the fused kernel when
    available and ``fused``, else the multi-tensor (foreach) one."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if fused:
        with contextlib.suppress(RuntimeError, TypeError, ValueError):
            return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), foreach=True)


def report_steps(total_steps: int, n_reports: int) -> list[int]:
    """Evenly spaced steps (1-based) at which to evaluate; always includes the last step."""
    n = max(1, min(n_reports, total_steps))
    return sorted({math.ceil(total_steps * i / n) for i in range(1, n + 1)})


def rung_steps(rungs: list[float], tokens_per_step: int, total_steps: int) -> set[int]:
    """The first step at or past each rung (in tokens), short of the last step."""
    steps = {max(1, math.ceil(float(r) / tokens_per_step)) for r in rungs}
    return {s for s in steps if s < total_steps}


def _assigned(resource: str) -> float | None:
    """Amount of ``resource`` Ray assigned to this trial (0 if none); None outside a Ray worker.

    Never starts Ray: it only asks a Ray that this process already joined.
    """
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        with contextlib.suppress(Exception):
            return float(ray.get_runtime_context().get_assigned_resources().get(resource, 0))
    return None


def assigned_cpus() -> int:
    """CPUs Ray assigned to this trial, else ``os.cpu_count()`` (never starts Ray)."""
    n = _assigned("CPU")
    return max(1, int(n)) if n else os.cpu_count() or 1


def assigned_gpus() -> float | None:
    """GPUs Ray assigned to this trial (0 when it asked for none); None outside a Ray worker."""
    return _assigned("GPU")


def pick_device() -> str:
    """"cuda" when a GPU is visible and the trial was given one (or runs outside Ray), else "cpu".

    A trial that asked Ray for no GPU stays on the CPU even on a GPU node, so CPU trials never
    crowd the GPUs that other trials were promised. A Ray Train worker gets its own GPU among
    the ones its node's workers see ("cuda:1", ...).
    """
    if not (torch.cuda.is_available() and assigned_gpus() != 0):
        return "cpu"
    from raylaw.workers import in_train_worker

    if in_train_worker():
        from ray.train.torch import get_device

        return str(get_device())
    return "cuda"


def train_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, lr: float,
    ctx, share: float = 1.0, world: World = SOLO,
) -> torch.Tensor:
    """One AdamW step at learning rate ``lr`` with gradients clipped to norm 1; returns the loss.

    With several ranks (``model`` wrapped in DDP, which averages gradients over them), ``share``
    is this rank's fraction of the batch: the gradient is the whole batch's mean, and the
    returned loss this rank's part of it (the ranks' parts add up to the batch's mean loss).
    """
    for group in opt.param_groups:
        group["lr"] = lr
    with ctx:
        loss = model(x, y)
    if world.size > 1:
        loss = loss * share
        (loss * world.size).backward()
    else:
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach().float()


def cooled_loss(model: nn.Module, opt: torch.optim.Optimizer, steps: int, lr_from: float,
                lr_to: float, step: Callable[[float], object],
                evaluate_fn: Callable[[], float]) -> float:
    """Validation loss after ``steps`` more calls of ``step(lr)`` (one training step on the next
    batch) with lr falling linearly to ``lr_to``.

    The branch trains the live model and optimizer, then puts both back as they were, so the
    run itself goes on exactly as without it (a WSD-style cooldown used only to measure).
    """
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    try:
        for i in range(steps):
            step(lr_from + (lr_to - lr_from) * (i + 1) / steps)
        return evaluate_fn()
    finally:
        model.load_state_dict(saved_model)
        opt.load_state_dict(saved_opt)


@dataclass
class Progress:
    """Where a run stands; a checkpoint saves it with the model, optimizer and data order."""

    step: int = 0  # optimizer steps of the run itself
    extra: int = 0  # steps trained on the cooldown branches at rungs (thrown away, but paid)
    best: float = math.inf  # the lowest validation loss so far (to tell a blow-up)
    train_loss: float = math.nan  # the mean training loss since the last evaluation


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    gen: torch.Generator, at: Progress) -> None:
    """Everything a run needs to continue exactly: model, optimizer, data order, progress."""
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "step": at.step}
    state.update(rng=gen.get_state(), best=at.best, train_loss=at.train_loss,
                 extra_steps=at.extra)
    torch.save(state, path)


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    gen: torch.Generator, device: str) -> Progress:
    """Put ``save_checkpoint``'s state back into ``model``, ``opt`` and ``gen``."""
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optim"])
    gen.set_state(state["rng"].cpu())
    return Progress(int(state["step"]), int(state.get("extra_steps", 0)), state["best"],
                    state["train_loss"])


def run(config: dict, report: Reporter, checkpoint_dir: str | None = None) -> None:
    """Train one trial (its config: ``LMConfig``), calling ``report(metrics, checkpoint_dir)``
    at every evaluation.

    A checkpoint comes with the report at the end of the run and with the first report at
    least ``checkpoint_every`` seconds after the last one or the start; otherwise
    ``checkpoint_dir`` is None (always when the trial diverged, and on every rank but 0), and
    it is only valid during the call. A run restored from ``checkpoint_dir`` continues from the
    saved step with the saved model, optimizer and data order.

    Under torch.distributed (a Ray Train worker group) the model is wrapped in DDP and every
    rank draws the same batches but trains on its own share of each (``World.share``), so the
    run is the single-process run up to rounding; every rank calls ``report``.

    Metrics: ``loss`` (after the cooldown at a rung), ``raw_loss`` (never cooled down),
    ``tokens`` (the schedule's position), ``tokens_spent`` (cooldowns included),
    ``train_loss``, ``diverged`` and ``device``.
    """
    cfg = LMConfig.from_dict(config)
    world, device = World.current(), pick_device()
    ctx = _use_device(device, cfg)

    # data: the corpus on the device; a generator of its own draws the batches (data_seed)
    train_data, val_data = load_data(cfg.data, device=device)
    if min(len(train_data), len(val_data)) <= cfg.seq_len + 1:
        raise ValueError(f"corpus too small for seq_len={cfg.seq_len}")
    gen = torch.Generator(device=train_data.device).manual_seed(cfg.data_seed)
    rows = world.share(cfg.batch_size)
    share = (rows.stop - rows.start) / cfg.batch_size
    if world.size > 1 and share == 0:  # fewer sequences than ranks: a rank with none trains
        rows, share = slice(0, 1), 0.0  # on one at weight 0, so DDP's collectives still match

    # model: its shape from N (and n_layer), initialized from init_seed
    torch.manual_seed(cfg.init_seed)
    model = GPT(*shape_for(cfg.N, cfg.n_layer), seq_len=cfg.seq_len).to(device)

    # optimizer: AdamW, its learning rate set at every step by the schedule
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay, fused=cfg.fused)
    net = _wrap(model, world, device, cfg.compile)  # what trains: compiled, in DDP if asked
    total = cfg.total_steps

    def lr(step: int) -> float:
        return lr_at(step, total, cfg.lr, cfg.warmup)

    def train_on_next(lr: float, g: torch.Generator = gen) -> torch.Tensor:
        """One training step on this rank's share of the next batch drawn with ``g``."""
        x, y = get_batch(train_data, cfg.batch_size, cfg.seq_len, g, rows)
        return train_step(net, opt, x.to(device), y.to(device), lr, ctx, share, world)

    def val_loss_of(n_val: int) -> float:
        return evaluate(model, val_data, n_val, cfg.seq_len, device, ctx, world)

    # checkpoint: a restored run goes on where it was saved
    at = Progress()
    if checkpoint_dir is not None:
        at = load_checkpoint(Path(checkpoint_dir, CHECKPOINT_FILE), model, opt, gen, device)
    saved_at = clock()

    def send(loss: float, raw: float, diverged: bool) -> None:
        """Report the metrics at the current step, with a checkpoint when one is due (rank 0
        only, never for a diverged run)."""
        nonlocal saved_at
        metrics = {"loss": loss, "raw_loss": raw, "tokens": at.step * cfg.tokens_per_step,
                   "tokens_spent": (at.step + at.extra) * cfg.tokens_per_step}
        metrics.update(train_loss=_finite(at.train_loss), diverged=diverged,
                       device=torch.device(device).type)
        due = at.step >= total or clock() - saved_at >= cfg.checkpoint_every
        if diverged or world.rank != 0 or not due:
            return report(metrics, None)
        saved_at = clock()
        with tempfile.TemporaryDirectory(prefix="raylaw-lm-") as tmp:
            save_checkpoint(Path(tmp, CHECKPOINT_FILE), model, opt, gen, at)
            report(metrics, tmp)

    # loop: train up to each evaluation (evenly spaced, and at ASHA's rungs)
    rungs = rung_steps(list(cfg.rungs), cfg.tokens_per_step, total)
    evals = set(report_steps(total, cfg.eval_every))
    for end in sorted(s for s in evals | rungs if s > at.step) or [at.step]:  # resumed at the end
        running, count = torch.zeros((), device=device), 0
        while at.step < end:
            running += train_on_next(lr(at.step))
            at.step, count = at.step + 1, count + 1
            # NaN, inf or far worse than uniform: diverged
            if count % 32 == 0 and not world.sum(running).item() / count < 3 * UNIFORM_LOSS:
                at.train_loss = world.sum(running).item() / count
                return send(DIVERGED_LOSS, DIVERGED_LOSS, diverged=True)
        at.train_loss = world.sum(running).item() / count if count else at.train_loss

        # evaluation: the validation loss; at a rung also after a cooldown, on the batches the
        # run itself sees next
        n_val = cfg.final_eval_tokens if at.step == total else cfg.eval_tokens
        raw = val_loss = val_loss_of(n_val)
        if _diverged(raw, at.train_loss, at.best):
            return send(DIVERGED_LOSS, DIVERGED_LOSS, diverged=True)
        if at.step in rungs and cfg.cooldown > 0:
            n_cool = math.ceil(cfg.cooldown * at.step)
            ahead = torch.Generator(device=gen.device).set_state(gen.get_state())
            val_loss = cooled_loss(
                model, opt, n_cool, lr(at.step), MIN_LR * cfg.lr,
                functools.partial(train_on_next, g=ahead), functools.partial(val_loss_of, n_val))
            at.extra += n_cool
            if _diverged(val_loss, at.train_loss, at.best):
                return send(DIVERGED_LOSS, raw, diverged=True)
        at.best = min(at.best, raw)

        # report, with a checkpoint when one is due
        send(val_loss, raw, diverged=False)


def _use_device(device: str, cfg: LMConfig) -> contextlib.AbstractContextManager:
    """Set torch up for ``device``; the context the forward passes run in (bf16 autocast on
    CUDA unless turned off)."""
    if device.startswith("cuda"):
        if torch.device(device).index is not None:  # a Ray Train worker's own GPU
            torch.cuda.set_device(torch.device(device))
        torch.backends.cuda.matmul.allow_tf32 = True
        if cfg.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        torch.set_num_threads(cfg.threads or assigned_cpus())
    return contextlib.nullcontext()


def _wrap(model: GPT, world: World, device: str, compiled: bool) -> nn.Module:
    """What the training step calls: ``model``, compiled if asked, in DDP with several ranks."""
    net: nn.Module = torch.compile(model) if compiled else model  # type: ignore[assignment]
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        cuda = device.startswith("cuda")
        net = DistributedDataParallel(net, device_ids=[torch.device(device)] if cuda else None)
    return net


def _depth(value: object) -> int | None:
    """Config ``n_layer`` as a positive int (None: free shape), or a ValueError naming it."""
    if value is None:
        return None
    try:
        depth = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        depth = 0
    if isinstance(value, bool) or depth < 1 or depth != value and str(depth) != str(value).strip():
        raise ValueError(f"config n_layer: expected a positive integer, got {value!r}")
    return depth


def _diverged(val_loss: float, train_loss: float, best: float) -> bool:
    """True when a loss is non-finite or validation blew up (> 1.5 ln 256, or > 3x the best)."""
    if not (math.isfinite(val_loss) and math.isfinite(train_loss)):
        return True
    return val_loss > 1.5 * UNIFORM_LOSS or val_loss > 3 * best


def _finite(x: float) -> float:
    """``x`` if finite, else the diverged-loss sentinel."""
    return x if math.isfinite(x) else DIVERGED_LOSS


def train(config: dict) -> None:
    """Ray Tune function trainable, or a Ray Train ``train_loop_per_worker`` (multi-worker
    trials); continues from the latest checkpoint Ray has for the trial (a retried trial), or
    else from ``config["restore_from"]`` (a trial that ``--resume`` runs again) if given."""
    from raylaw.workers import latest_checkpoint, report

    # Ray logs a line per checkpoint, which buries the progress lines
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    with latest_checkpoint() as checkpoint_dir:
        restore = LMConfig.from_dict(config).restore_from
        if checkpoint_dir is None and restore and Path(restore, CHECKPOINT_FILE).is_file():
            checkpoint_dir = restore
        return run(config, report, checkpoint_dir=checkpoint_dir)


train.check_config = LMConfig.from_dict  # the sweep checks --config with it before Ray starts
