"""Quickstart: a small ladder with the built-in byte-level LM on CPU, watching the law improve.

Each rung sweeps one scale (smallest first) on an embedded local Ray, narrowed by the law
refitted from the rungs before; before each sweep we print what the law predicts there, and
after it how far the prediction was from the optimum the sweep found.

Run (a few minutes on 2 cores):  python examples/quickstart.py
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from raylaw import SearchSpace
from raylaw.cli import law_table
from raylaw.sweep import SweepConfig, load_law, run_sweep

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, nargs="+", default=[1e4, 2e4, 4e4],
                    help="model sizes N of the ladder; D = 10 N tokens")
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--out", default=None, help="directory for the store and law "
                    "(default: a temporary one)")
    args = ap.parse_args()
    space = SearchSpace.load(ROOT / "search_spaces" / "lm.yaml")
    out = Path(args.out or tempfile.mkdtemp(prefix="raylaw-quickstart-"))
    out.mkdir(parents=True, exist_ok=True)
    law_path = out / "lm.law.json"
    rows = []
    for n in sorted(args.n):
        scale = {"N": n, "D": 10 * n}
        law = load_law(law_path, space, prior="steplaw")
        before = law.predict(scale)["lr"]
        cfg = SweepConfig(space=space, scale=scale, law_path=str(law_path),
                          store=f"sqlite:///{out / 'store.db'}", samples=args.samples,
                          constants={"eval_every": 8}, results_dir=str(out / "results"),
                          verbose=0)
        result = run_sweep(cfg)
        found = result.optimum.values.get("lr") if result.optimum else None
        err = math.log(found / before.center) if found else float("nan")
        rows.append((n, before.center, before.low, before.high, found, err))
        print(f"N={n:g}: law predicted lr {before.center:.3g} [{before.low:.3g}, "
              f"{before.high:.3g}], sweep found {found if found is None else f'{found:.3g}'} "
              f"(log error {err:+.2f}); trials {result.counts}")
    print("\nscale   predicted lr   90% interval          found     log error")
    for n, c, lo, hi, f, e in rows:
        print(f"{n:<8g}{c:<15.3g}[{lo:.3g}, {hi:.3g}]".ljust(45)
              + f"{'-' if f is None else f'{f:.3g}':<10}{e:+.2f}")
    print("\n" + law_table(load_law(law_path, space, prior="steplaw")))
    print(f"\nstore and law in {out}")


if __name__ == "__main__":
    main()
