"""Shared pieces of the LM benchmarks (``lm_ladder.py``, ``lm_noise.py``): the ladder's plan and
scales, training configurations for several seeds in worker processes (no Ray), Tune set-up
for studies of the built-in LM, and the tokens and best trial a study holds in the store."""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from ray.tune.stopper import Stopper  # noqa: E402

from raylaw import SearchSpace  # noqa: E402
from raylaw.ray_start import loopback_ray_env  # noqa: E402
from raylaw.records import trials_frame  # noqa: E402

SPACE_FILE = ROOT / "search_spaces" / "lm.yaml"
TRAINABLE = "raylaw.trainables.lm:train"


@dataclass(frozen=True)
class Plan:
    """Sizes of one LM ladder: its scales, trials per sweep, and how each trial evaluates."""

    name: str
    ladder: tuple[float, ...]  # N of each rung, smallest first; the last is the target scale
    tokens_per_param: float = 20.0  # D = this x N
    n_layer: int | None = 2  # every model this deep: N sets the width alone (None: free shapes)
    rung_samples: int = 20  # raylaw's trials per smaller rung
    target_samples: int = 16  # raylaw's trials at the target scale
    # held for every trial of every method (trial constants, not searched): early stopping
    # ranks weight decay backwards (at N = 1e5, lr 0.004, bs 1, weight decay 0.03 trails 0.005
    # by 1-1.3% through the first 40% of the run and ends 2.5% ahead)
    fixed: dict[str, float] = field(default_factory=lambda: {"weight_decay": 0.03,
                                                             "warmup": 0.05})
    eval_every: int = 16
    eval_tokens: int = 2**15
    # the last evaluation ranks finished trials: on 2**15 bytes a model's loss was off by 0.14%
    # (sd) relative to others against 2**19 bytes
    final_eval_tokens: int = 2**19
    seeds: tuple[int, ...] = (1, 2, 3)  # fresh trial seeds the answers are scored on

    def scale(self, n: float) -> dict[str, float]:
        return {"N": float(n), "D": float(self.tokens_per_param * n)}

    @property
    def target(self) -> dict[str, float]:
        return self.scale(self.ladder[-1])

    def constants(self, seed: int = 0) -> dict[str, Any]:
        """Every trial's constants: one torch thread, the evaluations, depth, seed and fixed
        hyperparameters."""
        depth = {} if self.n_layer is None else {"n_layer": self.n_layer}
        return {"threads": 1, "eval_every": self.eval_every, "eval_tokens": self.eval_tokens,
                "final_eval_tokens": self.final_eval_tokens, "seed": seed, **depth,
                **self.fixed}


# widths 24, 32, 48, 64 at depth 2 (with the free shapes the rung optima followed width, not N)
FULL = Plan("full", (1.25e4, 2.5e4, 5e4, 1e5))
SMOKE = Plan("smoke", (3e3, 6e3), tokens_per_param=2, rung_samples=3, target_samples=3,
             eval_every=4, eval_tokens=2**12, final_eval_tokens=2**13, seeds=(1, 2))


def load_space() -> SearchSpace:
    return SearchSpace.load(SPACE_FILE)


# --------------------------------------------------------------------- training without Ray
def learning_curve(config: dict[str, Any]) -> dict[str, Any]:
    """One run of the built-in LM in this process (one torch thread unless ``config`` says
    otherwise): its losses at every evaluation, whether it diverged, and its wall time."""
    from raylaw.trainables import lm

    reports: list[dict] = []
    t0 = time.perf_counter()
    lm.run({"threads": 1, **config}, lambda metrics, _ckpt: reports.append(metrics))
    return {"losses": [float(r["loss"]) for r in reports],
            "diverged": bool(reports and reports[-1]["diverged"]),
            "secs": time.perf_counter() - t0}


def train_all(configs: list[dict[str, Any]], workers: int = 2) -> list[dict[str, Any]]:
    """``learning_curve`` of every config, ``workers`` fresh processes at a time (spawned: the
    caller may hold Ray's or torch's threads, which a fork would copy half-way)."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(learning_curve, configs, chunksize=1))


# ------------------------------------------------------------------------------ Tune plumbing
def quiet_tune() -> None:
    """Optuna and Ray as the benchmarks run them: warnings only, an embedded Ray on loopback
    (call before Ray is imported)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # as run_sweep does: the store's own checkpoints are small, Tune's sync warning is noise
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    loopback_ray_env(None)


class TokenBudget(Stopper):
    """Ends a Tune run once its trials have trained ``max_tokens`` (running trials' tokens
    count, cooldowns included); ``spent`` is what they trained, trials cut off included."""

    def __init__(self, fidelity: str, max_tokens: float):
        self.fidelity, self.max_tokens = fidelity, max_tokens
        self.tokens: dict[str, float] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        t = float(result.get(f"{self.fidelity}_spent") or result.get(self.fidelity) or 0.0)
        self.tokens[trial_id] = max(t, self.tokens.get(trial_id, 0.0))
        return False

    def stop_all(self) -> bool:
        return self.spent >= self.max_tokens

    @property
    def spent(self) -> float:
        return float(sum(self.tokens.values()))


def tune_study(study: optuna.Study, space: SearchSpace, scale: dict[str, float],
               constants: dict[str, Any], samples: int, asha: bool, results: Path,
               stopper: Stopper | None = None) -> None:
    """Run ``samples`` trials of the built-in LM on Tune (1 CPU each, 2 at a time), suggested by
    ``study``'s sampler over ``space``'s hard ranges through raylaw's ``LawSearch`` (every trial
    recorded in the study); with ``asha``, under run_sweep's ASHA settings. Trials are not told
    ASHA's rungs: they report the plain mid-schedule loss, as a Ray Tune user's trainable does."""
    from ray import tune

    from raylaw.progress import tune_console
    from raylaw.search import LawSearch
    from raylaw.sweep import asha_scheduler, load_trainable

    budget = scale[space.budget]
    resources = {"cpu": 1.0, "gpu": 0.0}
    scheduler = asha_scheduler(space, budget, study=study) if asha else None
    search = LawSearch(study, space.fix(constants).optuna_distributions(), space.metric,
                       space.mode, constants={"scale": scale, **constants},
                       fidelity=space.fidelity, budget=budget, resources=resources)
    tuner = tune.Tuner(
        tune.with_resources(load_trainable(TRAINABLE), resources),
        tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, search_alg=search,
                                    scheduler=scheduler, num_samples=samples,
                                    max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(name="".join(c if c.isalnum() else "_"
                                               for c in study.study_name),
                                  storage_path=str(results), verbose=0, stop=stopper,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    with tune_console(0):
        tuner.fit()


# -------------------------------------------------------------------------- reading a store
def study_tokens(study: optuna.Study) -> float:
    """Tokens trained by a study's finished trials (the store's ``spent``: cooldowns included)."""
    df = trials_frame(study)
    return float(df["spent"].fillna(0).sum()) if not df.empty else 0.0


def best_trial(study: optuna.Study) -> tuple[dict[str, Any], float, bool] | None:
    """(params, value, full length?) of the best completed trial; failing any, of the best
    trial at the largest fidelity any trial reached (its stored learning curve); else None."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    if done:
        best = min(done, key=lambda t: t.value)
        return dict(best.params), float(best.value), True
    curves = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not curves:
        return None
    top = max(max(t.intermediate_values) for t in curves)
    at_top = [t for t in curves if top in t.intermediate_values]
    best = min(at_top, key=lambda t: t.intermediate_values[top])
    return dict(best.params), float(best.intermediate_values[top]), False
