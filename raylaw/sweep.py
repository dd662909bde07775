"""One sweep at a target scale on Ray Tune, then a refit of the law from every sweep in the store.

Trials come from ``LawSampler`` over the law-narrowed space (through ``LawSearch``), ASHA stops
poor trials on the fidelity the trainable reports (each trial is told ASHA's rungs, so it can
evaluate there), every trial lands in the store as it finishes, and afterwards the scale's
optimum updates the law (a new numbered version). This module puts those pieces together:
Ray start-up is ``raylaw.ray_start``, the study records ``raylaw.records``, the scheduler
``raylaw.scheduler``, the console ``raylaw.progress``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from raylaw import records
from raylaw.errors import RaylawError
from raylaw.history import save_version
from raylaw.law import Optimum, Prediction, ScalingLaw
from raylaw.ray_start import check_address, init_ray, loopback_ray_env, prepare_ray, start_ray
from raylaw.records import create_sweep, scale_key, sweep_studies, trials_frame
from raylaw.sampler import LawSampler
from raylaw.space import SearchSpace
from raylaw.store import default_store, open_store, optima_from_studies, shown_url, sqlite_path

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from raylaw.scheduler import LawASHA
    from raylaw.search import LawSearch

__all__ = ["DEFAULT_TRAINABLE", "GRACE_FRACTION", "REDUCTION_FACTOR", "SweepConfig",
           "SweepResult", "asha_scheduler", "check_address", "init_ray", "load_law",
           "load_trainable", "loopback_ray_env", "run_sweep"]

DEFAULT_TRAINABLE = "raylaw.trainables.lm:train"
GRACE_FRACTION = 1 / 9  # ASHA's first rung, as a share of the budget
REDUCTION_FACTOR = 3  # ASHA promotes 1 in this many trials per rung
_USER_PENDING = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")  # the user's own, if any


@dataclass
class SweepConfig:
    """What one sweep needs. Every default is the CLI's (``python -m raylaw.tune sweep``).

    Args:
        space: the search space.
        scale: the target scale, e.g. ``{"N": 1e5, "D": 2e6}``.
        law_path: the law file, read and refitted (default: ``<space name>.law.json``).
        store: the Optuna store's URL or SQLite path (default: ``$RAYLAW_STORE``, else
            ``sqlite:///raylaw.db``).
        samples: trials in the sweep (a resumed sweep runs what is missing).
        prior: published law for a law file that does not exist yet (None: no prior).
        coverage: the law's interval the search starts from.
        cpus_per_trial: CPUs of each trial (of each worker with ``workers_per_trial``).
        gpus_per_trial: GPUs of each trial (of each worker); fractions pack trials on a GPU.
        workers_per_trial: K: each trial a Ray Train ``TorchTrainer`` of K workers (None: one
            process).
        trainable: ``module:function`` (None: the space's, else the built-in LM).
        constants: passed to every trial's config; a free hyperparameter among them is held.
        seed: the sampler's seed.
        max_concurrent: trials at once (None: as resources allow).
        max_failures: retries of a crashed trial before it is recorded as errored.
        grace_fraction: ASHA's first rung as a share of the budget (1: no early stopping).
        reduction_factor: ASHA promotes the best 1 in this many trials at each rung.
        resume: continue the last unfinished sweep at this scale in the store.
        study_name: the sweep's study name (None: ``<space>[<scale>]#<n>``).
        results_dir: Ray Tune's results directory (None: Ray's).
        verbose: 0: no progress lines; 1: a line per finished trial; 2: Ray Tune's output too
            (the CLI prints the summary; from Python, ``raylaw.progress.format_summary``).
        reuse_actors: a finished trial's worker process runs the next trial.
        label: starts the progress lines, e.g. "ladder step 2 of 5".
    """

    space: SearchSpace
    scale: dict[str, float]
    law_path: str | None = None
    store: str = field(default_factory=default_store)
    samples: int = 16
    prior: str | None = "steplaw"
    coverage: float = 0.9
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int | None = None
    trainable: str | None = None
    constants: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_concurrent: int | None = None
    max_failures: int = 1
    grace_fraction: float = GRACE_FRACTION
    reduction_factor: int = REDUCTION_FACTOR
    resume: bool = False
    study_name: str | None = None
    results_dir: str | None = None
    verbose: int = 1
    reuse_actors: bool = True
    label: str = ""

    def __post_init__(self) -> None:
        if self.law_path is None:
            self.law_path = f"{self.space.name}.law.json"


@dataclass
class SweepResult:
    """What a sweep found and what it did to the law (``run_sweep`` returns it).

    Args:
        study_name: the sweep's study in the store.
        counts: trials per status (completed, stopped, diverged, errored).
        prediction: the law's prediction at the scale before the sweep.
        optimum: this scale's optimum from every sweep of it in the store (None: no
            completed full-length trial).
        best_value: the best completed trial's metric.
        best_params: its configuration, held hyperparameters included.
        law_before: the law the sweep started from.
        law_after: the law refitted after it (None: not refitted).
        law_version: the numbered version written (None: none).
        tokens_trained: what the trials cost in fidelity units, cooldowns included.
        tokens_full: what full-length runs of every trial would have cost.
        resumed: the sweep continued an interrupted one.
        center_value: the metric the law's own prediction reached.
        recommended: the sweep's answer, the model's optimum with intervals
            (``LawSampler.recommendation``).
        resources: what each trial asked Ray for (per worker).
    """

    study_name: str
    counts: dict[str, int]
    prediction: dict[str, Prediction]
    optimum: Optimum | None
    best_value: float | None
    best_params: dict[str, Any]
    law_before: ScalingLaw
    law_after: ScalingLaw | None
    law_version: int | None
    tokens_trained: float
    tokens_full: float
    resumed: bool = False
    center_value: float | None = None
    recommended: dict[str, Any] | None = None
    resources: dict[str, float] | None = None


def load_trainable(spec: str) -> Callable[[dict], Any]:
    """Import ``module:function``; a clear error when it cannot be imported or called."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise RaylawError(f"--trainable {spec!r}: expected module:function")
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to see
        raise RaylawError(f"--trainable {spec}: cannot import module '{module}' "
                          f"({type(e).__name__}: {e})") from e
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise RaylawError(f"--trainable {spec}: module '{module}' has no function '{name}'")
    return fn


def _check_config(trainable: Callable, spec: str, space: SearchSpace, scale: dict[str, float],
                  constants: dict[str, Any]) -> None:
    """A trainable's own ``check_config(config)``, if it has one, run on a trial's config
    before Ray starts: a misspelt ``--config`` fails at once, not in every trial."""
    check = getattr(trainable, "check_config", None)
    if check is None:
        return
    example = {n: d.choices[0] if isinstance(d, optuna.distributions.CategoricalDistribution)
               else d.low for n, d in space.optuna_distributions().items()}
    try:
        check({**example, "scale": scale, **constants})
    except (ValueError, TypeError) as e:
        raise RaylawError(f"--trainable {spec}: refuses the trials' config: {e}") from None


def load_law(path: str | Path, space: SearchSpace, prior: str | None) -> ScalingLaw:
    """The law at ``path`` (checked against the space), or a fresh one from the prior."""
    path = Path(path)
    if not path.exists():
        try:
            return ScalingLaw.for_space(space, prior=prior)
        except RaylawError:
            return ScalingLaw.for_space(space, prior=None)
    law = ScalingLaw.load(path)
    try:
        space.check_law(law)
    except RaylawError as e:
        raise RaylawError(f"--law {path}: {e}") from None
    return law


def run_sweep(cfg: SweepConfig, address: str | None = None) -> SweepResult:
    """Run one sweep and refit the law; see the module docstring.

    ``address``: the Ray cluster to join (default: ``RAY_ADDRESS``, else an embedded local Ray).
    """
    address = prepare_ray(address)  # before Ray is imported
    from raylaw.search import LawSearch

    # a free hyperparameter among the constants is held there, not searched
    space, scale = cfg.space.fix(cfg.constants), cfg.space.check_scale(cfg.scale)
    spec = cfg.trainable or space.trainable or DEFAULT_TRAINABLE
    trainable = load_trainable(spec)
    _check_config(trainable, spec, space, scale, cfg.constants)
    law = load_law(cfg.law_path, space, cfg.prior)
    new_file = sqlite_path(cfg.store)
    new_file = new_file if new_file is not None and not new_file.exists() else None
    storage = open_store(cfg.store)  # the first thing written: every check above passed
    prediction = law.predict(scale, cfg.coverage) if any(
        t.fitted for t in law.terms.values()) else {}
    sampler = LawSampler(law if prediction else None, space, scale, coverage=cfg.coverage,
                         seed=cfg.seed)
    study, resumed = create_sweep(storage, space, scale, space.mode, sampler, cfg.resume,
                                  cfg.study_name)
    if cfg.resume and not resumed:
        print(f"raylaw: --resume: no unfinished sweep at {scale_key(scale)} in the store; "
              f"starting {study.study_name}", file=sys.stderr)
    records.record_fixed(study, {k: v for k, v in cfg.constants.items() if k in cfg.space.free})
    finished = study.get_trials(deepcopy=False, states=(
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    remaining = max(cfg.samples - len(finished), 0)
    # the objective's distributions are the space's hard ranges: the sampler narrows governed
    # ones itself (and can widen again when the law is off)
    distributions = space.optuna_distributions()
    budget = scale.get(space.budget) if space.budget else None
    resources = {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}
    if cfg.workers_per_trial:
        resources["workers"] = cfg.workers_per_trial  # cpu and gpu are then per worker
    scheduler = asha_scheduler(space, budget, cfg.grace_fraction, cfg.reduction_factor, study)
    rungs = scheduler.rungs() if scheduler else []  # the trainable evaluates there
    search = LawSearch(study, distributions, space.metric, space.mode,
                       constants={"scale": scale, **({"rungs": rungs} if rungs else {}),
                                  **cfg.constants},
                       fidelity=space.fidelity, budget=budget, resources=resources,
                       keep=getattr(scheduler, "keep", None),
                       experiment_dir=_experiment_dir(cfg.results_dir, study.study_name))
    if remaining > 0:
        try:
            start_ray(address, dashboard=bool(cfg.workers_per_trial))
            _run_tuner(cfg, space, study, search, scheduler, trainable, spec, resources,
                       remaining)
        except BaseException:
            if not resumed and not study.get_trials(deepcopy=False, states=(
                    TrialState.COMPLETE, TrialState.PRUNED)):
                optuna.delete_study(study_name=study.study_name, storage=storage)
                if new_file is not None and not optuna.get_all_study_names(storage):
                    storage.engine.dispose()
                    new_file.unlink(missing_ok=True)  # a store this failed run created
            raise
    records.finish_sweep(study)
    statuses = {records.recorded_status(t) for t in study.get_trials(deepcopy=False)}
    if statuses == {"errored"}:  # recorded in the store, but nothing to learn from
        raise RaylawError(f"every trial of sweep {study.study_name} errored (--trainable "
                          f"{spec}; see the trial errors above)")
    result = _refit(cfg, space, scale, law, storage, study, prediction, resumed, sampler)
    result.resources = resources
    return result


def _run_tuner(cfg: SweepConfig, space: SearchSpace, study: optuna.Study, search: LawSearch,
               scheduler: LawASHA | None, trainable: Callable, spec: str,
               resources: dict[str, float], remaining: int) -> None:
    """Run the trials on Ray Tune with ``scheduler`` (ASHA on the space's fidelity, or None);
    with ``workers_per_trial``, each trial drives a TorchTrainer (``raylaw.workers``)."""
    import ray
    from ray import tune

    from raylaw.progress import SweepProgress, tune_console

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    progress = [SweepProgress(search, list(space.governed), total=cfg.samples,
                              done=cfg.samples - remaining, label=cfg.label)
                ] if cfg.verbose >= 1 else []
    from raylaw import workers

    limit, cpus, gpus = cfg.max_concurrent, cfg.cpus_per_trial, cfg.gpus_per_trial
    if cfg.workers_per_trial:
        k = cfg.workers_per_trial
        trainable = workers.train_driver(trainable, k, cpus, gpus, workers.train_storage(
            cfg.results_dir, _safe(study.study_name)))
        resources = {"memory": workers.DRIVER_MEMORY}  # the workers hold the CPUs and GPUs
        limit = limit or workers.max_concurrent(ray.nodes(), k, cpus, gpus)
    if not _USER_PENDING:
        # With a searcher, Tune starts the next trial only once the last one runs (1 pending
        # trial), so trials slow to start (torch, CUDA) run fewer at once than fit: as many
        # pending as fit the cluster (or the limit).
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(
            limit or workers.max_concurrent(ray.nodes(), 1, cpus, gpus))
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, search_alg=search, scheduler=scheduler,
            num_samples=remaining, max_concurrent_trials=limit,
            # a worker is reused for the next trial; a Train run's workers are not
            reuse_actors=cfg.reuse_actors and not cfg.workers_per_trial),
        run_config=tune.RunConfig(
            name=_safe(study.study_name), storage_path=cfg.results_dir,
            verbose=2 if cfg.verbose >= 2 else 0, callbacks=progress,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            # a multi-worker trial's checkpoints are its Train run's, not Tune's
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_at_end=False if cfg.workers_per_trial else None)),
    )
    try:
        with tune_console(cfg.verbose):
            tuner.fit()
    except Exception as e:  # noqa: BLE001 - Tune wraps trainable/contract errors
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "did not include the specified metric" in str(e):
            raise RaylawError(f"--trainable {spec}: a trial's result has no "
                              f"'{space.metric}' (the space's metric); trainables must report "
                              "it with ray.tune.report") from e
        raise RaylawError(f"sweep {study.study_name} failed: {msg}") from e
    if sum(search.counts.values()) < remaining:
        # Tune ends its run quietly on Ctrl-C (SIGINT, or SIGUSR1), its trials marked as ended:
        # the sweep stays `running` in the store for --resume, and the law is not refitted
        raise KeyboardInterrupt(f"sweep {study.study_name} is unfinished in the store; "
                                "--resume continues it")


def _refit(cfg: SweepConfig, space: SearchSpace, scale: dict[str, float], law: ScalingLaw,
           storage: BaseStorage, study: optuna.Study, prediction: dict[str, Prediction],
           resumed: bool, sampler: LawSampler) -> SweepResult:
    """The sweep's answer (stored as study attribute ``recommended``), this scale's optimum,
    then the law refitted from every sweep of the space in the store."""
    df = trials_frame(study)
    counts = df["status"].value_counts().to_dict() if not df.empty else {}
    budget = scale.get(space.budget) if space.budget else None
    tokens = float(df["spent"].fillna(0).sum()) if not df.empty else 0.0
    full = float(len(df) * budget) if budget else 0.0
    best_value, best_params = None, {}
    completed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    fixed = records.fixed_params(study)
    if completed:
        best = min(completed, key=lambda t: t.value if space.mode == "min" else -t.value)
        best_value = best.value
        best_params = {**best.params, **fixed}
    center = [t.value for t in completed if records.is_law_center(t)]
    recommended = None
    if completed:
        recommended = sampler.recommendation(study)
        recommended["params"] = {**recommended["params"], **fixed}
        records.record_recommended(study, recommended)
    after, version = None, None
    evidence = optima_from_studies(storage, space, [s.study_name for s in sweep_studies(
        storage, space.name)])
    # this scale's optimum as the law sees it (pooled with earlier sweeps at this scale)
    optimum = next((o for o in evidence if scale_key(o.scale) == scale_key(scale)), None)
    if evidence:
        store_tag = f"store {shown_url(cfg.store)}"  # never a password in the law file
        kept = [o for o in law.optima if o.source != store_tag]  # replaced by the store's
        tagged = [dataclasses.replace(o, source=store_tag) for o in evidence]
        after = ScalingLaw(law.space_name, law.terms, provenance=law.provenance)
        try:
            after.fit(kept + tagged, source=f"sweep {study.study_name}")
        except RaylawError as e:
            print(f"raylaw: law not refitted yet: {e}")
            after = None
        if after is not None:
            version = save_version(after, cfg.law_path, note=f"after sweep {study.study_name}")
    return SweepResult(study.study_name, counts, prediction, optimum, best_value, best_params,
                       law, after, version, tokens, full, resumed,
                       center[0] if center else None, recommended)


def asha_scheduler(space: SearchSpace, budget: float | None,
                   grace_fraction: float = GRACE_FRACTION,
                   reduction_factor: int = REDUCTION_FACTOR,
                   study: optuna.Study | None = None) -> LawASHA | None:
    """ASHA on the space's fidelity up to ``budget``, its rungs seeded from ``study``'s trials.

    The first rung is at ``grace_fraction`` of the budget; the law's own prediction is never
    stopped (``LawASHA``). None (every trial runs to the budget) when the space declares no
    fidelity or budget, or when ``grace_fraction`` is 1.
    """
    if not (space.fidelity and budget) or grace_fraction >= 1:
        return None
    from raylaw.scheduler import LawASHA

    scheduler = LawASHA(time_attr=space.fidelity, max_t=budget,
                        grace_period=budget * grace_fraction, reduction_factor=reduction_factor)
    if study is not None:
        scheduler.restore(study, space.mode)
    return scheduler


def _experiment_dir(results_dir: str | None, study_name: str) -> str | None:
    """Tune's folder for this sweep's trials (checkpoints a rerun trial continues from)."""
    if results_dir and "://" in results_dir:
        return None  # cloud storage: a rerun trial starts over
    return str(Path(results_dir or "~/ray_results").expanduser() / _safe(study_name))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
