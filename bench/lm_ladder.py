"""A scale ladder on the built-in byte-level LM (CPU): is raylaw's answer at the target scale at
least as good as the law's prediction alone, and than tuning the target from scratch?

Run ``python bench/lm_ladder.py [--out DIR] [--seed S]`` (10-60 min on 2 cores, by load), or
``--smoke`` (a few trials of a tiny model, seconds; prints only). ``--report-from DIR`` rewrites
the report from ``DIR/result.json`` of a finished run without training; ``--runs LABEL=DIR ...``
adds a line per other finished run of the same code (a replicate at another sweeps' seed).

Protocol. Every model is 2 layers deep, so N sets the width alone: N = 1.25e4, 2.5e4, 5e4 and
the target 1e5 (widths 24, 32, 48, 64), each trained on D = 20 N tokens, space
``search_spaces/lm.yaml`` (lr and batch size governed; weight decay 0.03 and warmup 0.05 held
for every trial of every method, as trial constants). Sweep trials: ``raylaw.trainables.lm``
on Ray Tune, 1 CPU and one torch thread each, 2 at a time, trial seed 0 (``--seed``).

1. Ladder: ``run_sweep`` (LawSampler + ASHA, steplaw prior) with 20 trials at each smaller
   rung, smallest first; the law is refitted after each, so each sweep is narrowed by the law
   of the rungs before.
2. The law's prediction alone: the law after the smaller rungs, its center at the target,
   snapped to the space (batch size an integer >= 1): the target sweep's first trial.
3. (a) raylaw: ``run_sweep`` at the target, 16 trials under ASHA; its answer is the sweep's
   ``recommended`` params (the landscape model's optimum, possibly never tried). Its best
   trial is scored too, for comparison.
4. (b) ASHA + ``RandomSampler`` over the space's full ranges, run_sweep's ASHA settings, until
   its trials have trained as many tokens as (a)'s target sweep; (c) TPE
   (``TPESampler(multivariate=True, n_startup_trials=4)``) over the full ranges, no early
   stopping, round((a)'s tokens / D) full-length trials. Their answers: the best completed
   trial. (b)'s trials report their plain mid-schedule loss at ASHA's rungs; (a)'s, as
   run_sweep tells them, the loss after a cooldown (counted in its tokens).
5. Score: each answer trained at the target, full length, with the fresh trial seeds 1, 2, 3
   (initialization and data order; no method saw them), in 2 worker processes without Ray.
   Reported per method: mean final loss (on 2**19 validation bytes), sd and range over the
   seeds, and the difference to the law's prediction alone paired by seed (mean and standard
   error). Target: raylaw's answer no worse than the law's prediction alone.

Stores, law versions, Tune results and ``result.json`` go to ``--out`` (default: a temporary
directory). The report is printed and written to the section "## LM ladder on CPU
(bench/lm_ladder.py)" of BENCHMARKS.md, the figure to ``bench/lm_ladder.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import optuna  # noqa: E402
from benchmarks_md import update_section  # noqa: E402
from lm_common import (  # noqa: E402
    FULL,
    ROOT,
    SMOKE,
    Plan,
    TokenBudget,
    best_trial,
    load_space,
    quiet_tune,
    study_tokens,
    train_all,
    tune_study,
)

from raylaw import SearchSpace  # noqa: E402
from raylaw.files import atomic_write_text  # noqa: E402
from raylaw.ray_start import init_ray  # noqa: E402
from raylaw.records import LAW_CENTER_ATTR  # noqa: E402
from raylaw.store import open_store  # noqa: E402
from raylaw.sweep import SweepConfig, load_law, run_sweep  # noqa: E402

SECTION = "## LM ladder on CPU (bench/lm_ladder.py)"
GOVERNED = ("lr", "batch_size")
LABELS = {"law": "the law's prediction alone",
          "raylaw": "(a) raylaw: the target sweep's `recommended`",
          "raylaw-best": "(a) raylaw: the target sweep's best trial",
          "asha": "(b) ASHA + random sampler, full ranges: best trial",
          "tpe": "(c) TPE, full ranges, no early stopping: best trial"}
TICKS = {"law": "the law's\nprediction", "raylaw": "(a) raylaw:\nrecommended",
         "raylaw-best": "(a) raylaw:\nbest trial", "asha": "(b) ASHA +\nrandom",
         "tpe": "(c) TPE,\nfull ranges"}  # the figure's short labels


# ------------------------------------------------------------------------------- the methods
def ladder(plan: Plan, out: Path, space: SearchSpace, seed: int) -> tuple[list[dict], Any]:
    """run_sweep on every rung, smallest first; one summary per rung, and the target's
    SweepResult."""
    law_path, rungs, result = out / "lm.law.json", [], None
    for i, n in enumerate(plan.ladder):
        scale, last = plan.scale(n), i == len(plan.ladder) - 1
        before = load_law(law_path, space, prior="steplaw").predict(scale)
        cfg = SweepConfig(space=space, scale=scale, law_path=str(law_path),
                          store=f"sqlite:///{out / 'raylaw.db'}",
                          samples=plan.target_samples if last else plan.rung_samples,
                          prior="steplaw", constants=plan.constants(seed), seed=seed,
                          cpus_per_trial=1.0, max_concurrent=2, results_dir=str(out / "results"),
                          verbose=0)
        t0 = time.time()
        result = run_sweep(cfg)
        found = result.optimum
        rungs.append({
            "N": n, "D": scale["D"], "study": result.study_name,
            "counts": {k: int(v) for k, v in result.counts.items()},
            "tokens": result.tokens_trained, "wall": time.time() - t0,
            "predicted": {h: before[h].to_dict() for h in GOVERNED},
            "found": {h: found.values.get(h) for h in GOVERNED} if found else {},
            "bound": {h: found.mark(h) for h in GOVERNED} if found else {}})
        print(f"rung N={n:g}: predicted lr {before['lr'].center:.3g}, bs "
              f"{before['batch_size'].center:.3g}; found {rungs[-1]['found']}; "
              f"{result.counts}; {result.tokens_trained / 1e6:.2f}M tokens", flush=True)
    return rungs, result


def law_center(out: Path, study_name: str) -> dict[str, Any]:
    """The law's prediction at the target as the target sweep ran it: its first trial."""
    study = optuna.load_study(study_name=study_name,
                              storage=open_store(f"sqlite:///{out / 'raylaw.db'}"))
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(LAW_CENTER_ATTR):
            return {h: t.params[h] for h in GOVERNED}
    raise SystemExit(f"sweep {study_name}: no trial ran the law's prediction (no law fitted?)")


def baseline(plan: Plan, out: Path, space: SearchSpace, key: str, seed: int,
             tokens: float) -> dict[str, Any]:
    """(b) or (c) at the target with a budget of ``tokens``; its answer and what it trained."""
    asha = key == "asha"
    sampler = (optuna.samplers.RandomSampler(seed=seed) if asha else
               optuna.samplers.TPESampler(seed=seed + 1, multivariate=True, n_startup_trials=4))
    study = optuna.create_study(study_name=key, sampler=sampler, direction="minimize",
                                storage=open_store(f"sqlite:///{out / 'baselines.db'}"))
    target = plan.target
    if asha:  # as many trials as fit: the budget ends the run
        stop = TokenBudget(space.fidelity, tokens)
        tune_study(study, space, target, plan.constants(seed), 10_000, True, out / "results",
                   stop)
        spent = stop.spent
    else:
        n = max(1, round(tokens / target["D"]))
        tune_study(study, space, target, plan.constants(seed), n, False, out / "results")
        spent = study_tokens(study)
    found = best_trial(study)
    if found is None:
        raise SystemExit(f"({key}): no trial reported a loss")
    params, value, full = found
    print(f"({key}): {len(study.trials)} trials, {spent / 1e6:.2f}M tokens; best "
          f"{value:.4f} at {params}" + ("" if full else " (no completed trial)"), flush=True)
    return {"params": {h: params[h] for h in GOVERNED}, "tokens": spent, "seed0": value,
            "full": full, "trials": len(study.trials)}


def run(plan: Plan, out: Path, seed: int) -> dict[str, Any]:
    """The whole protocol; the result as ``result.json`` holds it."""
    space = load_space()
    init_ray(None)
    wall: dict[str, float] = {}
    t0 = time.time()
    rungs, target = ladder(plan, out, space, seed)
    wall["ladder and target sweep"] = time.time() - t0
    rec = target.recommended or {}
    if not rec.get("params"):
        raise SystemExit(f"sweep {target.study_name}: no completed trial, no recommendation")
    answers = {
        "law": {"params": law_center(out, target.study_name), "tokens": 0.0},
        "raylaw": {"params": {h: rec["params"][h] for h in GOVERNED}, "tokens": rungs[-1][
            "tokens"], "low": rec.get("low"), "high": rec.get("high"), "noise": rec.get("noise")},
        "raylaw-best": {"params": {h: target.best_params[h] for h in GOVERNED},
                        "tokens": rungs[-1]["tokens"], "seed0": target.best_value}}
    for key in ("asha", "tpe"):
        t0 = time.time()
        answers[key] = baseline(plan, out, space, key, seed, rungs[-1]["tokens"])
        wall[key] = time.time() - t0
    import ray

    ray.shutdown()  # the scoring runs in plain processes
    t0 = time.time()
    score(plan, answers)
    wall["scoring"] = time.time() - t0
    return {"plan": plan.name, "seed": seed, "rungs": rungs, "answers": answers, "wall": wall}


def score(plan: Plan, answers: dict[str, dict]) -> None:
    """Train every distinct answer at the target with each fresh seed; ``scores`` per answer."""
    configs = sorted({(a["params"]["lr"], a["params"]["batch_size"]) for a in answers.values()})
    jobs = [(lr, bs, s) for lr, bs in configs for s in plan.seeds]
    print(f"scoring {len(configs)} configurations x seeds {list(plan.seeds)}", flush=True)
    runs = train_all([{"lr": lr, "batch_size": bs, "scale": plan.target,
                       **plan.constants(seed=s)} for lr, bs, s in jobs])
    by_job = dict(zip(jobs, runs, strict=True))
    for a in answers.values():
        lr, bs = a["params"]["lr"], a["params"]["batch_size"]
        a["scores"] = [by_job[(lr, bs, s)]["losses"][-1] for s in plan.seeds]
        a["diverged"] = sum(by_job[(lr, bs, s)]["diverged"] for s in plan.seeds)
        a["secs"] = statistics.fmean(by_job[(lr, bs, s)]["secs"] for s in plan.seeds)


# ------------------------------------------------------------------------------------ report
def paired(a: list[float], ref: list[float]) -> tuple[float, float, list[float]]:
    """Mean and standard error of the relative difference a / ref - 1, paired by seed, and
    the per-seed differences."""
    d = [x / r - 1 for x, r in zip(a, ref, strict=True)]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return statistics.fmean(d), se, d


def _tok(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x else "0"


def section(res: dict[str, Any], plan: Plan, command: str) -> str:
    answers, rungs = res["answers"], res["rungs"]
    ref = answers["law"]["scores"]
    seeds = ", ".join(map(str, plan.seeds))
    ladder_raw = sum(r["tokens"] for r in rungs[:-1])
    ladder_w = sum(r["tokens"] * r["N"] / plan.ladder[-1] for r in rungs[:-1])
    t = plan.target
    L = [SECTION, "",
         "Whether raylaw's answer at a new scale, after a ladder of smaller sweeps, beats the "
         "law's prediction alone and tuning from scratch on a similar token budget. Each "
         f"method's answer is trained with {len(plan.seeds)} fresh seeds and scored by its "
         "mean final loss, since one run's loss varies 0.6% (sd) with its seed.", "",
         f"Command: `{command}`  ",
         f"Date: {res['date']}; {res['wall_total'] / 60:.0f} min wall on 2 cores (load average "
         f"{res['load'][0]:.1f} at start, {res['load'][1]:.1f} at end); one run of the "
         "protocol (see the script's docstring).  ",
         f"Ladder N = {', '.join(f'{n:g}' for n in plan.ladder)} at depth {plan.n_layer}, D = "
         f"{plan.tokens_per_param:g} N; {plan.rung_samples} raylaw trials per smaller rung, "
         f"{plan.target_samples} at the target (N = {t['N']:g}, D = {t['D']:.3g}); "
         + ", ".join(f"{k}={v:g}" for k, v in plan.fixed.items()) + f" held; sweeps at trial "
         f"seed {res['seed']}, answers scored at seeds {seeds} on "
         f"{plan.final_eval_tokens} validation bytes.", "",
         "| method | lr | bs | mean final loss | sd | min - max | vs the law's prediction, "
         "paired by seed: mean (se) [per seed] | tokens at the target |",
         "|---|---:|---:|---:|---:|---|---|---:|"]
    for key, a in answers.items():
        s, p = a["scores"], a["params"]
        mean = f"{statistics.fmean(s):.4f}" + (f" ({a['diverged']} diverged)"
                                               if a["diverged"] else "")
        sd = f"{statistics.stdev(s):.4f}" if len(s) > 1 else "-"
        if key == "law":
            diff = "-"
        else:
            m, se, d = paired(s, ref)
            diff = (f"{m:+.2%} ({se:.2%}) [" + ", ".join(f"{x:+.2%}" for x in d) + "]")
        extra = ""
        if key == "raylaw" and a.get("low"):
            extra = (f" [{a['low']['lr']:.3g}, {a['high']['lr']:.3g}]")
        L.append(f"| {LABELS[key]} | {p['lr']:.3g}{extra} | {p['batch_size']} | {mean} | {sd} | "
                 f"{min(s):.4f} - {max(s):.4f} | {diff} | {_tok(a['tokens'])} |")
    m, se, _ = paired(answers["raylaw"]["scores"], ref)
    verdict = "met" if m <= 0 else "MISSED"
    L += ["", f"Target, raylaw's answer no worse than the law's prediction alone: **{verdict}** "
          f"(paired difference {m:+.2%}, standard error {se:.2%}"
          + (", within the noise)." if abs(m) < 2 * se else ").")
          + f" The law's center needs no trial at the target; every method but it trained "
          f"about {_tok(answers['raylaw']['tokens'])} tokens there: (b) in "
          f"{answers['asha']['trials']} trials, (c) in {answers['tpe']['trials']}. The "
          f"ladder below cost {_tok(ladder_raw)} tokens ({_tok(ladder_w)} target-scale "
          "equivalents, weighted by N / N_target); the recommendation's 90% interval in lr "
          f"is in brackets, its estimated noise {answers['raylaw'].get('noise') or 0:.2%}.",
          "", "The law before each rung, against the optimum that rung's sweep found: "
          + "; ".join(_rung_text(r) for r in rungs) + ".", "",
          f"In-sample: the answers were chosen on seed-{res['seed']} runs (the sweeps'); the "
          "scoring seeds are fresh for every method. The space's declared noise (0.6%) was "
          "measured at the target scale (bench/lm_noise.py).", "",
          "![Final loss of each method's answer by seed](bench/lm_ladder.png)", ""]
    return "\n".join(L)


def _rung_text(r: dict) -> str:
    p, f, b = r["predicted"], r["found"], r["bound"]
    found = " / ".join("-" if f.get(h) is None else f"{b.get(h, '')}{f[h]:.3g}"
                       for h in GOVERNED)
    return (f"N = {r['N']:g}: lr / bs {p['lr']['center']:.3g} / {p['batch_size']['center']:.3g}"
            f" -> {found}")


def plot(res: dict[str, Any], plan: Plan, path: Path) -> None:
    """Each answer's final loss at every scoring seed (lines join a seed across methods)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(res["answers"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, s in enumerate(plan.seeds):
        ax.plot(range(len(keys)), [res["answers"][k]["scores"][i] for k in keys], "o-",
                alpha=0.7, label=f"seed {s}")
    means = [statistics.fmean(res["answers"][k]["scores"]) for k in keys]
    ax.plot(range(len(keys)), means, "k_", ms=24, mew=2, label="mean")
    ax.set_xticks(range(len(keys)), [TICKS[k] for k in keys], fontsize=8)
    ax.set_ylabel("final validation loss (nats/byte)")
    ax.set_title(f"LM ladder, answers at N = {plan.ladder[-1]:g}, D = {plan.target['D']:.3g}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny ladder with a few trials, in seconds; prints only")
    parser.add_argument("--seed", type=int, default=0, help="the sweeps' trial and sampler seed")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for stores, law and results (default: temporary)")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "lm_ladder.png")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--report-from", type=Path, default=None, metavar="DIR",
                        help="train nothing: rewrite the report from DIR/result.json")
    parser.add_argument("--runs", nargs="*", default=[], metavar="LABEL=DIR",
                        help="other finished runs (DIR/result.json), a line each")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    if args.report_from is not None:
        res = json.loads((args.report_from / "result.json").read_text())
        plan = SMOKE if res["plan"] == SMOKE.name else FULL
        return report(args, res, plan)
    if args.seed in plan.seeds:
        parser.error(f"--seed {args.seed}: the answers are scored at seeds {list(plan.seeds)}; "
                     "the sweeps' seed must be another")
    out = Path(args.out or tempfile.mkdtemp(prefix="raylaw-lm-ladder-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.db")):
        parser.error(f"--out {out}: already holds stores; use an empty directory")
    quiet_tune()
    print(f"lm ladder ({plan.name}): N = {list(plan.ladder)}, D = {plan.tokens_per_param:g} N; "
          f"stores in {out}", flush=True)
    load0, t0 = os.getloadavg()[0], time.time()
    try:
        res = run(plan, out, args.seed)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    res.update(command=" ".join(["python bench/lm_ladder.py", *sys.argv[1:]]),
               wall_total=time.time() - t0, load=(load0, os.getloadavg()[0]),
               date=f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    atomic_write_text(out / "result.json", json.dumps(res, indent=1))
    if args.smoke:  # the figure beside the stores, never BENCHMARKS.md
        args.plot, args.no_write = out / "lm_ladder.png", True
        plot(res, plan, args.plot)
    report(args, res, plan)
    print(f"wall time {res['wall_total'] / 60:.1f} min; stores in {out}")


def others(runs: list[str]) -> list[str]:
    """A line per other finished run of the protocol (``LABEL=DIR``, DIR holding result.json,
    e.g. a replicate at another sweeps' seed): each answer against that run's law prediction,
    paired by scoring seed."""
    out = []
    for spec in runs:
        label, _, folder = spec.partition("=")
        r = json.loads((Path(folder) / "result.json").read_text())
        a, ref = r["answers"], r["answers"]["law"]["scores"]
        vs = {k: "{:+.2%} (se {:.2%})".format(*paired(a[k]["scores"], ref)[:2])
              for k in ("raylaw", "asha", "tpe")}
        law, ray = a["law"], a["raylaw"]
        out.append(f"{label} (sweeps' seed {r['seed']}): the law's prediction lr "
                   f"{law['params']['lr']:.3g}, bs {law['params']['batch_size']} scored "
                   f"{statistics.fmean(law['scores']):.4f}; raylaw's answer lr "
                   f"{ray['params']['lr']:.3g}, bs {ray['params']['batch_size']} scored "
                   f"{statistics.fmean(ray['scores']):.4f}, **{vs['raylaw']}** against it; "
                   f"(b) {vs['asha']}, (c) {vs['tpe']}.")
    return [*out, ""] if out else []


def report(args: argparse.Namespace, res: dict[str, Any], plan: Plan) -> None:
    text = section(res, plan, res["command"])
    extra = others(args.runs)
    if extra:  # before the figure
        head, _, tail = text.rpartition("![")
        text = head + "\n".join(extra) + "\n![" + tail
    print("\n" + text)
    if not args.no_write:
        plot(res, plan, args.plot)
        update_section(args.output, SECTION, text)
        print(f"wrote {args.plot} and the section to {args.output}")


if __name__ == "__main__":
    main()
