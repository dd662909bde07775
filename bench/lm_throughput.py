"""Training throughput of raylaw's byte-level GPT against raw matmul FLOP/s on this machine.

Run ``python bench/lm_throughput.py``. For each model width it measures

* the matmul rate torch reaches for the model's largest matmul, (batch*seq x width) @ (width x
  4*width), in the dtype training uses (fp32 on CPU, bf16 on CUDA), plus a 2048^3 square matmul;
* the training rate of ``raylaw.trainables.lm`` (the same ``get_batch`` + ``train_step`` code the
  trainable runs, AdamW and gradient clipping included), in model FLOPs: 6 * parameters (with the
  tied head) * tokens plus 12 * n_layer * width * seq_len * tokens for attention, as in nanoGPT.

After a few untimed warm-up steps, training windows of about one second alternate with matmul
samples of the same length, so both see the same background load; the table shows the best
sample of each (least disturbed by other processes) and the median. The result is printed and
written to the section "## LM training throughput (bench/lm_throughput.py)" of BENCHMARKS.md at
the repo root (replacing that section, keeping the rest of the file).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

from benchmarks_md import update_section  # noqa: E402

from raylaw.trainables import lm  # noqa: E402

SECTION = "## LM training throughput (bench/lm_throughput.py)"
SHAPES = {128: 4, 256: 8}  # width -> depth (aspect ratio 32, what shape_for prefers)


def _sync(device: str) -> None:
    """Wait for queued device work so wall-clock timings are honest."""
    if device == "cuda":
        torch.cuda.synchronize()


class Matmul:
    """An (m x k) @ (k x n) matmul in the dtype training uses (fp32 on CPU, bf16 on CUDA)."""

    def __init__(self, m: int, k: int, n: int, device: str) -> None:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.a = torch.randn(m, k, device=device, dtype=dtype)
        self.b = torch.randn(k, n, device=device, dtype=dtype)
        self.out = torch.empty(m, n, device=device, dtype=dtype)
        self.flops, self.device, self.per_rep = 2 * m * k * n, device, 1e-3
        self.rate(0.05)  # warm up the BLAS thread pool and estimate the time per matmul

    def rate(self, seconds: float) -> float:
        """FLOP/s over about ``seconds`` of back-to-back matmuls."""
        reps = max(1, round(seconds / self.per_rep))
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(self.a, self.b, out=self.out)
        _sync(self.device)
        self.per_rep = (time.perf_counter() - t0) / reps
        return self.flops / self.per_rep


class Trainer:
    """The trainable's training step (get_batch + train_step on its cosine schedule)."""

    def __init__(self, n_layer: int, n_embd: int, batch_size: int, seq_len: int, device: str):
        self.train_data, _ = lm.load_data()
        torch.manual_seed(0)
        self.model = lm.GPT(n_layer, n_embd, lm.n_heads(n_embd), seq_len).to(device)
        self.opt = lm.make_optimizer(self.model, 1e-3, 0.1)
        self.gen = torch.Generator().manual_seed(0)
        cuda = device == "cuda"
        self.ctx = (
            torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        )
        self.shape, self.device, self.step = (batch_size, seq_len), device, 0
        flops_per_token = lm.model_flops_per_token(n_layer, n_embd, seq_len)
        self.flops_per_step = flops_per_token * batch_size * seq_len

    def rate(self, n: int) -> float:
        """Model FLOP/s over ``n`` training steps."""
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = lm.get_batch(self.train_data, *self.shape, self.gen)
            lr = lm.lr_at(self.step, 10_000, 1e-3, 0.01)
            loss = lm.train_step(
                self.model, self.opt, x.to(self.device), y.to(self.device), lr, self.ctx
            )
            self.step += 1
        _sync(self.device)
        if not torch.isfinite(loss):
            raise RuntimeError("benchmark run diverged")
        return self.flops_per_step * n / (time.perf_counter() - t0)


def measure(width: int, n_layer: int, args: argparse.Namespace, device: str) -> dict:
    """Interleave training windows with matmul timings, so both see the same background load."""
    mm = Matmul(args.batch_size * args.seq_len, width, 4 * width, device)
    trainer = Trainer(n_layer, width, args.batch_size, args.seq_len, device)
    trainer.rate(args.warmup)  # excluded: allocator, thread pool and optimizer-state warm-up
    step_time = trainer.flops_per_step / trainer.rate(1)
    window = max(1, min(10, round(args.window / step_time)))
    model_rates, mm_rates, t_start = [], [], time.perf_counter()
    while trainer.step - args.warmup - 1 < args.steps and (
        time.perf_counter() - t_start < args.seconds or len(model_rates) < 3
    ):
        mm_rates.append(mm.rate(args.window))  # same sample length as a training window
        model_rates.append(trainer.rate(window))
    mm_rates.append(mm.rate(args.window))
    steps = trainer.step - args.warmup - 1
    return {
        "width": width,
        "n_layer": n_layer,
        "n_head": lm.n_heads(width),
        "params": lm.count_params(n_layer, width),
        "steps": steps,
        "tokens_per_s": statistics.median(model_rates)
        / trainer.flops_per_step
        * args.batch_size
        * args.seq_len,
        "best": max(model_rates),
        "median": statistics.median(model_rates),
        "mm_best": max(mm_rates),
        "mm_median": statistics.median(mm_rates),
    }


def render(rows: list[dict], args: argparse.Namespace, device: str, peak: float) -> str:
    """The BENCHMARKS.md section (markdown) for one benchmark run."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [x for x in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in x]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    command = " ".join(["python bench/lm_throughput.py", *sys.argv[1:]])
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}  ",
        f"Device: {device} ({cpu}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average at start {args.load:.2f}  ",
        f"Batch: {args.batch_size} sequences x {args.seq_len} bytes; "
        f"2048^3 matmul peak: {peak / 1e9:.1f} GFLOP/s",
        "",
        "Model FLOPs = 6 x params (incl. tied head) + 12 x n_layer x width x seq_len, per token. "
        "Matmul = (batch*seq x width) @ (width x 4*width), the model's largest matmul. "
        "Training windows (~1 s) alternate with matmul samples of the same length; "
        "best = least disturbed sample, median over all samples.",
        "",
        "| width | n_layer | n_head | non-emb params | steps | tokens/s | model GFLOP/s best "
        "(median) | matmul GFLOP/s best (median) | ratio best (median) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['width']} | {r['n_layer']} | {r['n_head']} | {r['params']:,} | {r['steps']} "
            f"| {r['tokens_per_s']:,.0f} | {r['best'] / 1e9:.1f} ({r['median'] / 1e9:.1f}) "
            f"| {r['mm_best'] / 1e9:.1f} ({r['mm_median'] / 1e9:.1f}) "
            f"| {r['best'] / r['mm_best']:.0%} ({r['median'] / r['mm_median']:.0%}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure, print the table and update BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=sorted(SHAPES))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300, help="most timed steps per width")
    parser.add_argument("--seconds", type=float, default=90.0, help="time budget per width")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per width")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per timing window")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    args.load = os.getloadavg()[0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(lm.assigned_cpus())
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    square = Matmul(2048, 2048, 2048, device)
    peak = max(square.rate(0.3) for _ in range(5))
    rows = []
    for width in args.widths:
        r = measure(width, SHAPES.get(width, max(1, width // 32)), args, device)
        rows.append(r)
        print(
            f"width {width}: model {r['best'] / 1e9:.1f} GFLOP/s, matmul {r['mm_best'] / 1e9:.1f}"
            f" GFLOP/s, ratio {r['best'] / r['mm_best']:.0%} ({r['steps']} steps)",
            flush=True,
        )
    section = render(rows, args, device, peak)
    print("\n" + section)
    if not args.no_write:
        update_section(args.output, SECTION, section)
        print(f"updated {args.output}")


if __name__ == "__main__":
    main()
