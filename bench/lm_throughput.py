"""Training throughput of raylaw's byte-level GPT against raw matmul FLOP/s on this machine.

Run ``python bench/lm_throughput.py`` (CPU) or ``python bench/lm_throughput.py --device cuda``
(``--smoke``: a tiny model for a few steps on the CPU, seconds, prints only).
For each model width it measures

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

On CUDA (``--device cuda``) the reference is the bf16 rate of an 8192^3 matmul measured in the
same run (MFU = model FLOP/s over it), the default shape is GPT-2-like (sequences of 1024 bytes,
depth = width / 64), and every width runs as the trainable runs on a GPU (bf16 autocast, fused
AdamW, data on the device) eagerly, and from width 768 on also under ``torch.compile``; at the
first width >= 768 the switches are also turned off one at a time (``--no-ablate`` skips that).
Its section is "## LM training throughput on CUDA (bench/lm_throughput.py --device cuda)";
``--rehearse`` runs that protocol small on the CPU (a check of the script, no figures).
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
CUDA_SECTION = "## LM training throughput on CUDA (bench/lm_throughput.py --device cuda)"
SHAPES = {128: 4, 256: 8}  # width -> depth (aspect ratio 32, what shape_for prefers)
# what the trainable does on a GPU by default, then with torch.compile (config key compile)
CUDA_VARIANTS = {"eager": {"autocast": True, "fused": True, "compile": False},
                 "compiled": {"autocast": True, "fused": True, "compile": True}}
COMPILE_NEEDS_S = 75  # budget a compiled variant needs: compiling a 12-16 layer model ~a minute
ABLATIONS = {"fp32 (tf32), foreach AdamW": {"autocast": False, "fused": False, "compile": False},
             "bf16, foreach AdamW": {"autocast": True, "fused": False, "compile": False}}


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
    """The trainable's training step (get_batch + train_step on its cosine schedule), on data
    and a sampler on ``device``; ``variant`` holds the trainable's CUDA switches."""

    def __init__(self, n_layer: int, n_embd: int, batch_size: int, seq_len: int, device: str,
                 variant: dict | None = None):
        variant = variant or {}
        self.train_data, _ = lm.load_data(device=device)
        torch.manual_seed(0)
        self.model = lm.GPT(n_layer, n_embd, lm.n_heads(n_embd), seq_len).to(device)
        self.opt = lm.make_optimizer(self.model, 1e-3, 0.1, fused=variant.get("fused", True))
        self.net = torch.compile(self.model) if variant.get("compile") else self.model
        self.gen = torch.Generator(device=device).manual_seed(0)
        amp = device == "cuda" and variant.get("autocast", True)
        self.ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        self.shape, self.device, self.step = (batch_size, seq_len), device, 0
        flops_per_token = lm.model_flops_per_token(n_layer, n_embd, seq_len)
        self.flops_per_step = flops_per_token * batch_size * seq_len

    def rate(self, n: int) -> float:
        """Model FLOP/s over ``n`` training steps."""
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = lm.get_batch(self.train_data, *self.shape, self.gen)
            lr = lm.lr_at(self.step, 10_000, 1e-3, 0.01)
            loss = lm.train_step(self.net, self.opt, x, y, lr, self.ctx)
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
        "The built-in LM's training speed on CPU as model FLOP/s against the speed of its "
        "largest matmul alone, measured side by side; it shows the trainable wastes little "
        "beyond the arithmetic it must do.",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}  ",
        f"Device: {device} ({cpu}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average at start {args.load:.2f}  ",
        f"Batch: {args.batch_size} sequences x {args.seq_len} bytes; "
        f"{args.square}^3 matmul peak: {peak / 1e9:.1f} GFLOP/s",
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
    worst = min((r["best"] / r["mm_best"] for r in rows), default=0.0)
    lines += ["", f"Target: >= 50% of the matmul's speed at every width: "
              f"**{'met' if worst >= 0.5 else 'MISSED'}** (lowest {worst:.0%})."]
    return "\n".join(lines) + "\n"


def measure_cuda(width: int, n_layer: int, variant: dict, args: argparse.Namespace) -> dict:
    """Tokens/s and model FLOP/s of one CUDA variant: warm-up (compilation included) apart."""
    t0 = time.perf_counter()
    trainer = Trainer(n_layer, width, args.batch_size, args.seq_len, args.device, variant)
    trainer.rate(args.warmup)
    warm = time.perf_counter() - t0
    step_time = trainer.flops_per_step / trainer.rate(2)
    window = max(1, round(args.window / step_time))
    rates, t_start = [], time.perf_counter()
    while len(rates) < 3 or (time.perf_counter() - t_start < args.seconds
                             and len(rates) * window < args.steps):
        rates.append(trainer.rate(window))
    del trainer
    if args.device == "cuda":
        torch.cuda.empty_cache()
    best, median = max(rates), statistics.median(rates)
    return {"width": width, "n_layer": n_layer, "params": lm.count_params(n_layer, width),
            "steps": len(rates) * window, "warm_s": warm, "best": best, "median": median,
            "tokens_per_s": median / lm.model_flops_per_token(n_layer, width, args.seq_len)}


def run_cuda(args: argparse.Namespace) -> str:
    """Measure every width and variant on the GPU; the CUDA section of BENCHMARKS.md."""
    torch.backends.cuda.matmul.allow_tf32 = True
    peak_mm = Matmul(*[8192 if args.device == "cuda" else 1024] * 3, args.device)
    peak = statistics.median(peak_mm.rate(0.2) for _ in range(7))
    del peak_mm
    ablate = next((w for w in args.widths if w >= 768), args.widths[-1]) if args.ablate else None
    shape_rates, plan = {}, []
    for width in args.widths:  # eager first, everywhere: compiling takes ~a minute per width
        mm = Matmul(args.batch_size * args.seq_len, width, 4 * width, args.device)
        shape_rates[width] = statistics.median(mm.rate(0.1) for _ in range(5))
        del mm
        plan += [(width, "eager")] + [(width, a) for a in ABLATIONS if width == ablate]
    plan += [(w, "compiled") for w in args.widths if w >= args.compile_from]
    variants = {**CUDA_VARIANTS, **ABLATIONS}
    rows, t_start = [], time.perf_counter()
    for width, name in plan:
        n_layer = max(1, width // 64)
        left = args.budget - (time.perf_counter() - t_start)
        if left < (COMPILE_NEEDS_S if variants[name]["compile"] else 10):
            print(f"width {width} {name}: skipped ({left:.0f} s of --budget left)", flush=True)
            rows.append({"width": width, "n_layer": n_layer, "variant": name,
                         "error": f"skipped: {left:.0f} s of the time budget left"})
            continue
        try:
            r = measure_cuda(width, n_layer, variants[name], args)
        except Exception as e:  # noqa: BLE001 - one variant failing must not end the run
            print(f"width {width} {name}: FAILED ({type(e).__name__}: {e})", flush=True)
            rows.append({"width": width, "n_layer": n_layer, "variant": name,
                         "error": f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"})
            continue
        r.update(variant=name, shape_mm=shape_rates[width], mfu=r["median"] / peak)
        rows.append(r)
        print(f"width {width} {name}: {r['median'] / 1e12:.1f} TFLOP/s, MFU "
              f"{r['mfu']:.0%} of {peak / 1e12:.0f} TFLOP/s bf16 matmul, "
              f"{r['tokens_per_s']:,.0f} tokens/s (warm-up {r['warm_s']:.0f} s)", flush=True)
        if not args.no_write:  # so far, in case the run is cut short
            update_section(args.output, CUDA_SECTION, render_cuda(rows, args, peak))
    return render_cuda(rows, args, peak)


def render_cuda(rows: list[dict], args: argparse.Namespace, peak: float) -> str:
    """The CUDA section of BENCHMARKS.md for one run."""
    command = " ".join(["python bench/lm_throughput.py", *sys.argv[1:]])
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        name = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:  # a rehearsal of the protocol (--rehearse): not a GPU figure
        name = f"CPU rehearsal ({platform.machine()}), fp32 reference"
    lines = [
        CUDA_SECTION, "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}  ",
        f"Device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}  ",
        f"Batch: {args.batch_size} sequences x {args.seq_len} bytes; bf16 8192^3 matmul "
        f"(median of 7): {peak / 1e12:.1f} TFLOP/s",
        "",
        "What: the built-in LM's model FLOP/s against the bf16 matmul rate measured on the same "
        "GPU in the same run (MFU); eager is the trainable's default on CUDA (bf16 autocast, "
        "fused AdamW, data on the device), compiled adds `torch.compile` (`--config "
        "compile=true`, off by default: it pays on runs of minutes).",
        "",
        "| width | n_layer | non-emb params | variant | steps | tokens/s | model TFLOP/s median "
        "(best) | MFU | vs (batch*seq x width) @ (width x 4*width) matmul | warm-up s |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            what = r["error"] if r["error"].startswith("skipped") else f"failed: {r['error']}"
            lines.append(f"| {r['width']} | {r['n_layer']} | | {r['variant']} | {what} "
                         "| | | | | |")
            continue
        lines.append(
            f"| {r['width']} | {r['n_layer']} | {r['params']:,} | {r['variant']} | {r['steps']} "
            f"| {r['tokens_per_s']:,.0f} | {r['median'] / 1e12:.1f} ({r['best'] / 1e12:.1f}) "
            f"| {r['mfu']:.1%} | {r['median'] / r['shape_mm']:.0%} | {r['warm_s']:.0f} |")
    target = [r for r in rows if "error" not in r and r["width"] >= 768]
    if target and args.device == "cuda":
        best = max(target, key=lambda r: r["mfu"])
        eager = [r["mfu"] for r in target if r["variant"] == "eager"]
        lines += ["", f"Target (an H100/H200-class GPU): MFU >= 40% at width >= 768: "
                  f"**{'met' if best['mfu'] >= 0.4 else 'MISSED'}**, best {best['mfu']:.1%} "
                  f"({best['variant']}, width {best['width']}); eager "
                  + ", ".join(f"{m:.1%}" for m in eager) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure, print the table and update BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when visible")
    parser.add_argument("--widths", type=int, nargs="+")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--steps", type=int, default=300, help="most timed steps per width")
    parser.add_argument("--seconds", type=float, help="time budget per width (per variant)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per width")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per timing window")
    parser.add_argument("--no-ablate", dest="ablate", action="store_false",
                        help="CUDA: skip the runs with autocast / fused AdamW turned off")
    parser.add_argument("--budget", type=float, default=1e9, metavar="SECONDS",
                        help="CUDA: start no variant past this many seconds of measuring")
    parser.add_argument("--compile-from", type=int, default=768, metavar="WIDTH",
                        help="CUDA: run the torch.compile variant at widths from WIDTH on")
    parser.add_argument("--rehearse", action="store_true",
                        help="run the CUDA protocol on the CPU, small, to check it end to end")
    parser.add_argument("--smoke", action="store_true",
                        help="the CPU protocol on a tiny model for a few steps, in seconds; "
                        "prints only")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    args.load, args.square = os.getloadavg()[0], 2048  # the CPU's reference: a square matmul
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        args.no_write, args.widths, args.batch_size, args.seq_len = True, [32], 2, 32
        args.square = 256
        args.steps, args.seconds, args.warmup, args.window = 3, 0.1, 1, 0.05
        section, header = run_cpu(args, "cpu"), SECTION
    elif args.rehearse:
        args.device, args.no_write = "cpu", True
        args.widths, args.batch_size, args.seq_len = args.widths or [64, 96], 4, 64
        args.compile_from = min(args.compile_from, max(args.widths))
        args.seconds = args.seconds or 1.0
        section, header = run_cuda(args), CUDA_SECTION
    elif device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device")
        args.device = "cuda"
        args.widths = args.widths or [512, 768, 1024]
        args.batch_size, args.seq_len = args.batch_size or 32, args.seq_len or 1024
        args.seconds = args.seconds or 4.0
        section, header = run_cuda(args), CUDA_SECTION
    else:
        args.widths = args.widths or sorted(SHAPES)
        args.batch_size, args.seq_len = args.batch_size or 32, args.seq_len or 128
        args.seconds = args.seconds or 90.0
        section, header = run_cpu(args, device), SECTION
    print("\n" + section)
    if not args.no_write:
        update_section(args.output, header, section)
        print(f"updated {args.output}")


def run_cpu(args: argparse.Namespace, device: str) -> str:
    """Measure every width on the CPU; the CPU section of BENCHMARKS.md."""
    torch.set_num_threads(lm.assigned_cpus())
    square = Matmul(args.square, args.square, args.square, device)
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
    return render(rows, args, device, peak)


if __name__ == "__main__":
    main()
