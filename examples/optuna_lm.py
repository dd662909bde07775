"""The built-in language model tuned in a plain Optuna study (no Ray), guided by a law.

``LawSampler`` proposes the Step Law prior's predicted lr and batch size at the target scale
first, then searches around its interval; every trial trains ``raylaw.trainables.lm`` for real
(on CUDA when torch sees a GPU, else on the CPU), reports its validation loss against tokens to
Optuna, and the median pruner stops poor trials early, as ASHA does in a sweep.

Run: python examples/optuna_lm.py [--scale N=2e4 --scale D=6e4] [--trials 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import optuna
from optuna import distributions as od

from raylaw import LawSampler, ScalingLaw, SearchSpace
from raylaw.trainables import lm

ROOT = Path(__file__).resolve().parents[1]


def suggest(trial: optuna.Trial, name: str, dist: od.BaseDistribution) -> object:
    """``trial.suggest_*`` for one of the space's Optuna distributions."""
    if isinstance(dist, od.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, od.FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)  # type: ignore[attr-defined]


def make_objective(space: SearchSpace, scale: dict[str, float], extra: dict):
    """Train the LM once per trial; report the learning curve; prune like ASHA would."""
    dists = space.optuna_distributions()  # hard ranges: the sampler narrows governed ones

    def objective(trial: optuna.Trial) -> float:
        config = {name: suggest(trial, name, d) for name, d in dists.items()}
        config.update(extra, scale=scale)
        last: dict = {}

        def report(metrics: dict, _checkpoint: str | None) -> None:
            last.update(metrics)
            trial.set_user_attr("device", metrics["device"])
            if not metrics["diverged"]:
                trial.report(metrics["loss"], int(metrics["tokens"]))
                if trial.should_prune():
                    raise optuna.TrialPruned()

        lm.run(config, report)
        if last.get("diverged"):
            raise optuna.TrialPruned("diverged")
        return float(last["loss"])

    return objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", action="append", default=[], metavar="NAME=VALUE",
                        help="target scale (default N=2e4, D=6e4)")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=4, help="reports per trial")
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    args = parser.parse_args()
    scale = {"N": 2e4, "D": 6e4}
    for item in args.scale:
        name, _, value = item.partition("=")
        scale[name] = float(value)
    space = SearchSpace.load(ROOT / "search_spaces" / "lm.yaml")
    law = ScalingLaw.for_space(space, prior="steplaw")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        sampler=LawSampler(law, space, scale, seed=args.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    t0 = time.perf_counter()
    study.optimize(make_objective(space, scale, {"eval_every": args.eval_every}),
                   n_trials=args.trials)
    seconds = time.perf_counter() - t0
    print(f"{'trial':>5} {'state':>9} {'device':>6} {'loss':>8}  params")
    for t in study.trials:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        params = ", ".join(f"{k}={v:.4g}" for k, v in t.params.items())
        print(f"{t.number:>5} {t.state.name:>9} {t.user_attrs.get('device', '-'):>6} "
              f"{value:>8}  {params}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if done:
        print(f"best {study.best_value:.4f} at {study.best_params} ({seconds:.0f} s)")
    if args.json:
        print(json.dumps({
            "devices": sorted({t.user_attrs.get("device", "?") for t in study.trials}),
            "trials": len(study.trials), "completed": len(done),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
            "best": study.best_value if done else None, "seconds": round(seconds, 1),
            "scale": scale}))


if __name__ == "__main__":
    main()
