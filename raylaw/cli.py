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
    if not any(h in df.columns for h in space.governed):
        raise RaylawError(f"{csv}: none of the governed hyperparameters "
                          f"{list(space.governed)} is a column")
    for col in list(space.scale) + [h for h in space.governed if h in df.columns]:
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = ~(vals.notna() & (vals > 0) & vals.abs().lt(float("inf")))
        if bad.any():
            row = int(bad.idxmax())
            raise RaylawError(f"{csv}: column '{col}' row {row + 2}: expected a positive finite "
                              f"number, got {df[col].iloc[row]!r}")
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
    lines = [f"law for space '{law.space_name}'  (prior: {law.provenance.get('prior', '?')}, "
             f"{len(law.optima)} optima)"]
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
        lines.append("\nobserved optima (value +- log-space std):")
        head = "".join(f"{k:>12}" for k in scales) + "".join(f"{n:>22}" for n in names)
        lines.append("  " + head + f"{'trials':>8}{'excl.':>7}  method")
        for o in law.optima:
            row = "".join(f"{o.scale.get(k, float('nan')):>12.4g}" for k in scales)
            row += "".join(f"{o.values[n]:>12.4g} +-{o.sigmas.get(n, 0):>7.3f}" if n in o.values
                           else f"{'-':>22}" for n in names)
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

    plot_law(ScalingLaw.load(a.law), a.out, a.coverage)
    print(f"wrote {a.out}")


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
    pr.add_argument("--law", required=True)
    pr.add_argument("--scale", action="append", metavar="NAME=VALUE", required=True)
    pr.add_argument("--coverage", type=coverage_arg, default=0.9)
    pr.add_argument("--json", action="store_true", help="one JSON object on stdout")
    pr.set_defaults(func=cmd_predict)

    s = sub.add_parser("show", help="print a law as a table")
    s.add_argument("law")
    s.set_defaults(func=cmd_show)

    pl = sub.add_parser("plot", help="plot a law's optima, fit and interval band to PNG")
    pl.add_argument("law")
    pl.add_argument("--out", required=True)
    pl.add_argument("--coverage", type=coverage_arg, default=0.9)
    pl.set_defaults(func=cmd_plot)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RaylawError as e:
        print(f"raylaw: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raylaw: interrupted", file=sys.stderr)
        return 130
    return 0
