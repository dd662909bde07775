"""Command line: ``python -m raylaw.tune {fit,predict,show,plot,...}``.

Every failure is one line on stderr and a non-zero exit; nothing is written on failure and
output files are replaced atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from raylaw.errors import RaylawError
from raylaw.law import ScalingLaw
from raylaw.optimum import optima_by_scale
from raylaw.space import SearchSpace
from raylaw.store import DEFAULT_STORE, default_store
from raylaw.sweep import GRACE_FRACTION, REDUCTION_FACTOR, SweepConfig


def parse_scale(items: list[str] | None, flag: str = "--scale") -> dict[str, float]:
    """Parse repeated NAME=VALUE flags into positive floats."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise RaylawError(f"{flag} {item!r}: expected NAME=VALUE, e.g. {flag} N=1e9")
        try:
            v = float(value)
        except ValueError:
            raise RaylawError(f"{flag} {name}={value!r}: not a number") from None
        if not math.isfinite(v) or v <= 0:
            raise RaylawError(f"{flag} {name}={value}: must be a positive, finite number")
        if name in out:
            raise RaylawError(f"{flag} {name}: given twice ({out[name]:g} and {v:g})")
        out[name] = v
    return out


def read_trials(csv: str, space: SearchSpace, renames: list[str] | None) -> pd.DataFrame:
    """Read a CSV of trials, apply COLUMN=NAME renames, and check the columns the space uses."""
    path = Path(csv)
    if not path.is_file():
        raise RaylawError(f"--csv {csv}: no such file")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise RaylawError(f"{csv}: cannot parse as CSV ({str(e).splitlines()[0]})") from e
    for item in renames or []:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise RaylawError(f"--rename {item!r}: expected COLUMN=NAME")
        if old not in df.columns:
            raise RaylawError(f"--rename {item!r}: {csv} has no column '{old}' "
                              f"(columns: {', '.join(map(str, df.columns))})")
        if new in df.columns and new != old:
            df = df.drop(columns=[new])  # a rename onto an existing name replaces that column
        df = df.rename(columns={old: new})
    needed = list(space.scale) + [space.metric]
    for col in needed:
        if col not in df.columns:
            raise RaylawError(f"{csv}: no column '{col}' (space '{space.name}' needs "
                              f"{needed + list(space.governed)}; use --rename COLUMN={col})")
    if df.empty:
        raise RaylawError(f"{csv}: no trials (the file has a header and no rows)")
    missing = [h for h in space.governed if h not in df.columns]
    if len(missing) == len(space.governed):
        raise RaylawError(f"{csv}: none of the governed hyperparameters "
                          f"{list(space.governed)} is a column")
    for h in missing:  # a sweep that held it: its law stays the prior
        print(f"raylaw: {csv} has no column '{h}' (governed by space '{space.name}'): its law "
              "is not fitted from these trials", file=sys.stderr)
    for col in list(space.scale) + [h for h in space.governed if h in df.columns]:
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = ~(vals.notna() & (vals > 0) & vals.abs().lt(float("inf")))
        if bad.any():
            row = int(bad.idxmax())
            raise RaylawError(f"{csv}: column '{col}' row {row + 2}: expected a positive finite "
                              f"number, got {df[col].iloc[row]}")
        df[col] = vals
    metric = pd.to_numeric(df[space.metric], errors="coerce")
    bad = metric.isna() & df[space.metric].notna() & ~df[space.metric].astype(str).str.lower().isin(
        ["nan", "inf", "-inf"])
    if bad.any():
        row = int(bad.idxmax())
        raise RaylawError(f"{csv}: column '{space.metric}' row {row + 2}: not a number: "
                          f"{df[space.metric].iloc[row]!r}")
    df[space.metric] = metric
    return df


def law_table(law: ScalingLaw) -> str:
    """A readable table of a law: coefficients with standard errors, evidence, fit quality."""
    curved = sum(o.curvature is not None for o in law.optima)
    joint = (f", {curved} with their bowl's curvature: hyperparameters fitted jointly"
             if curved else "")
    lines = [f"law for space '{law.space_name}'  (prior: {law.provenance.get('prior', '?')}, "
             f"{len(law.optima)} optima{joint})"]
    for name, s in law.summary().items():
        term = law.terms[name]
        if not s["fitted"]:
            lines.append(f"\n{name}: not fitted (no prior and no optima)")
            continue
        form = " * ".join(["exp(log_a)"] + [f"{k}^b_{k}" for k in term.depends_on])
        lines.append(f"\n{name} = {form}")
        lines.append(f"  {'coefficient':<12}{'value':>12}{'std err':>12}")
        for c, v in s["coef"].items():
            lines.append(f"  {c:<12}{v:>12.4f}{s['se'][c]:>12.4f}")
        rms = s["rms_residual"]
        lines.append(f"  scatter of log-optima around the law (tau): {s['scatter']:.3f}; "
                     f"observations: {s['n_obs']}; rms residual: "
                     f"{'-' if rms is None else f'{rms:.3f}'}; prior: {s['prior'] or 'none'}")
    if law.optima:
        names = list(law.terms)
        scales = sorted({k for o in law.optima for k in o.scale})
        lines.append("\nobserved optima (value +- log-space std; <= / >=: the best trial sat on "
                     "the space's bound, so the optimum is at most / at least that):")
        head = "".join(f"{k:>12}" for k in scales) + "".join(f"{n:>22}" for n in names)
        lines.append("  " + head + f"{'trials':>8}{'excl.':>7}  method")
        for o in law.optima:
            row = "".join(f"{o.scale.get(k, float('nan')):>12.4g}" for k in scales)
            row += "".join(f"{o.mark(n) + f'{o.values[n]:.4g}':>12} +-{o.sigmas.get(n, 0):>7.3f}"
                           if n in o.values else f"{'-':>22}" for n in names)
            lines.append(f"  {row}{o.n_trials:>8}{o.n_excluded:>7}  {o.method}")
    return "\n".join(lines)


def prediction_table(preds: dict[str, Any], coverage: float) -> str:
    head = f"{'hyperparameter':<16}{'center':>12}{'low':>12}{'high':>12}"
    lines = [f"{head}   ({coverage:.0%} interval)"]
    for name, p in preds.items():
        lines.append(f"{name:<16}{p.center:>12.4g}{p.low:>12.4g}{p.high:>12.4g}")
    return "\n".join(lines)


def cmd_fit(a: argparse.Namespace) -> None:
    space = SearchSpace.load(a.space)
    df = read_trials(a.csv, space, a.rename)
    optima = optima_by_scale(df, space, source=str(a.csv))
    law = ScalingLaw.for_space(space, prior=None if a.prior == "none" else a.prior)
    law.fit(optima, source=f"fit --csv {a.csv}")
    law.save(a.out)
    print(law_table(law))
    print(f"\nwrote {a.out}")


def cmd_predict(a: argparse.Namespace) -> None:
    law = ScalingLaw.load(a.law)
    scale = parse_scale(a.scale)
    unknown = set(scale) - set(law.scale_names)
    if unknown:
        raise RaylawError(f"--scale: unknown scale variable '{sorted(unknown)[0]}' for this law "
                          f"(expected {law.scale_names})")
    preds = law.predict(scale, a.coverage)
    if a.json:
        print(json.dumps({k: p.to_dict() for k, p in preds.items()}))
    else:
        print(prediction_table(preds, a.coverage))


def cmd_show(a: argparse.Namespace) -> None:
    print(law_table(ScalingLaw.load(a.law)))


def cmd_plot(a: argparse.Namespace) -> None:
    from raylaw.plot import plot_law

    if Path(a.out).suffix.lower() != ".png":
        raise RaylawError(f"--out {a.out}: expected a .png file (the plot is a PNG)")
    plot_law(ScalingLaw.load(a.law), a.out, a.coverage)
    print(f"wrote {a.out}")


def sweep_config(a: argparse.Namespace, scale: dict[str, float]) -> SweepConfig:
    """A SweepConfig from the shared sweep/ladder flags."""
    space = SearchSpace.load(a.space)
    if a.samples < 1:
        raise RaylawError(f"--samples {a.samples}: must be at least 1")
    if a.cpus_per_trial <= 0 or a.gpus_per_trial < 0:
        raise RaylawError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    if a.workers_per_trial is not None and a.workers_per_trial < 1:
        raise RaylawError(f"--workers-per-trial {a.workers_per_trial}: expected an integer >= 1")
    if not 0 < a.grace_fraction <= 1:
        raise RaylawError(f"--grace-fraction {a.grace_fraction:g}: expected a share of the "
                          "budget in (0, 1] (1 turns early stopping off)")
    if a.reduction_factor < 2:
        raise RaylawError(f"--reduction-factor {a.reduction_factor}: expected an integer >= 2")
    if a.max_concurrent is not None and a.max_concurrent < 1:
        raise RaylawError(f"--max-concurrent {a.max_concurrent}: expected an integer >= 1")
    if a.max_failures < 0:
        raise RaylawError(f"--max-failures {a.max_failures}: expected an integer >= 0 "
                          "(retries of a crashed trial)")
    constants = {}
    for item in a.config or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RaylawError(f"--config {item!r}: expected KEY=VALUE")
        try:
            constants[key] = json.loads(value)
        except ValueError:
            constants[key] = value
    return SweepConfig(
        space=space, scale=scale, law_path=a.law, store=a.store,
        samples=a.samples, prior=None if a.prior == "none" else a.prior, coverage=a.coverage,
        cpus_per_trial=a.cpus_per_trial, gpus_per_trial=a.gpus_per_trial,
        workers_per_trial=a.workers_per_trial, trainable=a.trainable, constants=constants,
        seed=a.seed, max_concurrent=a.max_concurrent, max_failures=a.max_failures,
        grace_fraction=a.grace_fraction, reduction_factor=a.reduction_factor, resume=a.resume,
        study_name=getattr(a, "study", None), results_dir=a.results, verbose=a.verbose,
        reuse_actors=not a.no_reuse_actors)


def quiet_optuna(verbose: int) -> None:
    """Below ``--verbose 2``, Optuna's INFO lines (study created, ...) stay off the console."""
    if verbose < 2:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def cmd_sweep(a: argparse.Namespace) -> None:
    from raylaw.sweep import run_sweep

    cfg = sweep_config(a, parse_scale(a.scale))
    cfg.scale = cfg.space.check_scale(cfg.scale)
    quiet_optuna(a.verbose)
    result = run_sweep(cfg, address=a.address)
    from raylaw.progress import format_summary  # imports Ray: after run_sweep set it up

    print(format_summary(result))
    if result.law_after is not None:  # the coefficients are in the summary; the table on demand
        print(f"law: {cfg.law_path} (its table: python -m raylaw.tune show {cfg.law_path})")


def parse_scales(text: str, space: SearchSpace) -> list[dict[str, float]]:
    """Scales from a file (one per line) or a list 'N=1e5,D=2e6;N=2e5,D=4e6', smallest first."""
    path = Path(text)
    if path.is_file():
        items = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
        where = f"--scales {text}"
    else:
        items = [x.strip() for x in text.split(";")]
        where = "--scales"
    scales = []
    for item in items:
        if item:
            parts = [p for p in item.replace(",", " ").split() if p]
            scales.append(space.check_scale(parse_scale(parts, where), where))
    if not scales:
        raise RaylawError(f"{where}: no scales given (expected e.g. 'N=1e5,D=2e6;N=2e5,D=4e6')")
    return sorted(scales, key=lambda s: [s[k] for k in space.scale])


def cmd_ladder(a: argparse.Namespace) -> None:
    from raylaw.sweep import run_sweep

    space = SearchSpace.load(a.space)
    scales = parse_scales(a.scales, space)
    quiet_optuna(a.verbose)
    for i, scale in enumerate(scales):
        cfg = sweep_config(a, scale)
        cfg.label = f"ladder step {i + 1} of {len(scales)}"
        print(f"\n### {cfg.label}: " + ", ".join(f"{k}={v:g}" for k, v in scale.items()))
        result = run_sweep(cfg, address=a.address)
        from raylaw.progress import format_summary  # imports Ray: after run_sweep set it up

        print(format_summary(result))
    law = ScalingLaw.load(cfg.law_path)
    print(f"\n{law_table(law)}\nlaw: {cfg.law_path}")


def cmd_history(a: argparse.Namespace) -> None:
    from raylaw.history import history_rows

    rows = history_rows(a.law)
    if not rows and not Path(a.law).is_file():
        raise RaylawError(f"{a.law}: no such law file")
    if not rows:
        raise RaylawError(f"{a.law}: no versions (a law gets versions when a sweep refits it)")
    for r in rows:
        if "error" in r:
            print(f"{r['version']}  unreadable: {r['error']}")
            continue
        coefs = "; ".join(f"{n}: " + " ".join(f"{k}={v:+.3f}" for k, v in c.items())
                          for n, c in r["coef"].items())
        print(f"{r['version']}  {r['when']:<26} optima={r['optima']:<3} {coefs}  {r['note']}")


def add_sweep_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="search-space YAML file")
    p.add_argument("--law", help="law JSON file, read and refitted (default: SPACE_NAME.law.json)")
    p.add_argument("--samples", type=int, default=16, help="trials per sweep (default 16)")
    p.add_argument("--store", default=default_store(),
                   help="SQLAlchemy URL or SQLite path of the trial store, e.g. "
                   "postgresql+psycopg://USER@HOST/DB (default: $RAYLAW_STORE, else "
                   f"{DEFAULT_STORE})")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an "
                   "embedded local Ray)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0,
                   help="CPUs of each trial (of each worker with --workers-per-trial)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs of each trial (of each worker with --workers-per-trial); "
                   "fractions pack trials on a GPU")
    p.add_argument("--workers-per-trial", type=int, metavar="K",
                   help="run each trial as a Ray Train TorchTrainer of K workers (DDP); the "
                   "trainable is then its train_loop_per_worker (docs/multi-worker.md)")
    p.add_argument("--trainable", help="module:function (default: the space's trainable)")
    p.add_argument("--prior", default="steplaw", choices=["steplaw", "none"],
                   help="prior for a law file that does not exist yet")
    p.add_argument("--coverage", type=coverage_arg, default=0.9,
                   help="interval the search starts from (default 0.9)")
    p.add_argument("--seed", type=int, default=0,
                   help="the sampler's seed: proposals depend only on it and the trial number")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default: as "
                   "resources allow)")
    p.add_argument("--max-failures", type=int, default=1,
                   help="retries of a crashed trial before it is recorded as errored (default 1)")
    p.add_argument("--grace-fraction", type=float, default=GRACE_FRACTION, metavar="F",
                   help=f"ASHA's first rung, as a share of the budget (default "
                   f"{GRACE_FRACTION:.3g}): every trial trains that far before it can be "
                   "stopped; 1 turns early stopping off")
    p.add_argument("--reduction-factor", type=int, default=REDUCTION_FACTOR, metavar="R",
                   help=f"ASHA promotes the best 1 in R trials at each rung (default "
                   f"{REDUCTION_FACTOR})")
    p.add_argument("--config", action="append", metavar="KEY=VALUE",
                   help="constant passed to every trial's config (JSON or string)")
    p.add_argument("--resume", action="store_true",
                   help="continue the last unfinished sweep at this scale in the store")
    p.add_argument("--results", help="Ray Tune results directory (default: Ray's)")
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2],
                   help="0: the summary only; 1 (default): a line per finished trial and a "
                   "status line every 30 s; 2: Ray Tune's full output as well")
    p.add_argument("--no-reuse-actors", action="store_true",
                   help="a new worker process for every trial, for trainables that keep state "
                   "between runs (by default a finished trial's worker runs the next trial)")


def coverage_arg(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {v!r}") from None
    if not 0 < f < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {v!r}")
    return f


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m raylaw.tune",
                                description="Hyperparameter sweeps narrowed by scaling laws.")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="fit a law from a CSV of trials at several scales")
    f.add_argument("--csv", required=True, help="trials: scale variables, hyperparameters, metric")
    f.add_argument("--space", required=True, help="search-space YAML file")
    f.add_argument("--out", required=True, help="law JSON file to write")
    f.add_argument("--rename", action="append", metavar="COLUMN=NAME",
                   help="rename a CSV column (replaces an existing column of that name)")
    f.add_argument("--prior", default="steplaw", choices=["steplaw", "none"],
                   help="published law to start from (default: steplaw)")
    f.set_defaults(func=cmd_fit)

    pr = sub.add_parser("predict", help="predict optima and intervals at a scale")
    pr.add_argument("--law", required=True, help="law JSON file")
    pr.add_argument("--scale", action="append", metavar="NAME=VALUE", required=True,
                    help="the target scale, one flag per variable, e.g. --scale N=1e9")
    pr.add_argument("--coverage", type=coverage_arg, default=0.9,
                    help="the intervals' coverage (default 0.9)")
    pr.add_argument("--json", action="store_true", help="one JSON object on stdout")
    pr.set_defaults(func=cmd_predict)

    s = sub.add_parser("show", help="print a law as a table")
    s.add_argument("law")
    s.set_defaults(func=cmd_show)

    pl = sub.add_parser("plot", help="plot a law's optima, fit and interval band to PNG")
    pl.add_argument("law")
    pl.add_argument("--out", required=True)
    pl.add_argument("--coverage", type=coverage_arg, default=0.9,
                    help="the band's coverage (default 0.9)")
    pl.set_defaults(func=cmd_plot)

    sw = sub.add_parser("sweep", help="run one law-narrowed sweep on Ray Tune, then refit")
    add_sweep_flags(sw)
    sw.add_argument("--scale", action="append", metavar="NAME=VALUE", required=True,
                    help="the target scale, one flag per variable, e.g. --scale N=1e5")
    sw.add_argument("--study", help="name of the sweep's study in the store")
    sw.set_defaults(func=cmd_sweep)

    la = sub.add_parser("ladder", help="sweep several scales, smallest first, refitting "
                        "the law after each")
    add_sweep_flags(la)
    la.add_argument("--scales", required=True,
                    help="file with one scale per line, or 'N=1e5,D=2e6;N=2e5,D=4e6'")
    la.set_defaults(func=cmd_ladder)

    hi = sub.add_parser("history", help="list every version of a law file")
    hi.add_argument("law")
    hi.set_defaults(func=cmd_history)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RaylawError as e:
        print(f"raylaw: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        why = f": {e}" if str(e) else ""
        print(f"raylaw: interrupted{why}", file=sys.stderr)
        return 130
    return 0
