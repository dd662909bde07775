"""Scaling-law priors in a plain Optuna study, outside Ray.

Three ways to reuse a law, on a toy objective whose optimum follows a power law:
  (a) LawSampler: the law's center first, then model-based search around its interval;
  (b) keep your own sampler: narrow the distributions, or enqueue the predicted optimum;
  (c) fit a law from Optuna studies you already ran (scale in study user attributes).

Run: python examples/optuna_prior.py
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import optuna

from raylaw import (
    LawSampler,
    ScalingLaw,
    SearchSpace,
    enqueue_prediction,
    law_from_studies,
    narrowed_distributions,
)

ROOT = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def true_optimum(n: float, d: float) -> tuple[float, float]:
    """The toy world's optimal (lr, batch size in sequences of 2048 tokens)."""
    return 3.0 * n**-0.7 * d**0.3, 0.6 * d**0.57 / 2048


def make_objective(n: float, d: float):
    lr_opt, bs_opt = true_optimum(n, d)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 2.4e-4, 2.2e-2, log=True)
        bs = trial.suggest_int("bs", 16, 2048, log=True)
        return 2.0 + 0.03 * math.log(lr / lr_opt) ** 2 + 0.01 * math.log(bs / bs_opt) ** 2

    return objective


def main() -> None:
    space = SearchSpace.load(ROOT / "search_spaces" / "steplaw.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{Path(tmp) / 'team.db'}"
        # (c) sweeps a team already ran at three scales become evidence for a law
        for n in (2e8, 4e8, 8e8):
            study = optuna.create_study(study_name=f"sweep-N{n:g}", storage=storage)
            study.set_user_attr("scale", {"N": n, "D": 20 * n})
            study.optimize(make_objective(n, 20 * n), n_trials=40)
        law = law_from_studies(storage, space, prior="steplaw")
        law.save(Path(tmp) / "law.json")
        law = ScalingLaw.load(Path(tmp) / "law.json")  # what ScalingLaw.load(path) returns

        target = {"N": 1.6e9, "D": 3.2e10}
        lr_opt, bs_opt = true_optimum(**{"n": target["N"], "d": target["D"]})
        pred = law.predict(target)
        print(f"law from 3 studies predicts lr {pred['lr'].center:.3g} "
              f"[{pred['lr'].low:.3g}, {pred['lr'].high:.3g}] (true {lr_opt:.3g}), "
              f"bs {pred['bs'].center:.0f} [{pred['bs'].low:.0f}, {pred['bs'].high:.0f}] "
              f"(true {bs_opt:.0f})")

        # (a) the prior-aware sampler at the new scale
        study = optuna.create_study(sampler=LawSampler(law, space, scale=target, seed=0))
        study.optimize(make_objective(target["N"], target["D"]), n_trials=10)
        print(f"LawSampler, 10 trials: best {study.best_value:.5f} at {study.best_params}")

        # (b) your own sampler: narrowed distributions, or just the predicted optimum first
        dists = narrowed_distributions(law, space, target)
        print("narrowed:", {k: (round(d.low, 6), round(d.high, 6)) for k, d in dists.items()})
        tpe = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
        enqueue_prediction(tpe, law, space, target)
        tpe.optimize(make_objective(target["N"], target["D"]), n_trials=10)
        print(f"TPE + enqueued prediction, 10 trials: best {tpe.best_value:.5f}")
        full = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
        full.optimize(make_objective(target["N"], target["D"]), n_trials=10)
        print(f"plain TPE, 10 trials: best {full.best_value:.5f}")


if __name__ == "__main__":
    main()
