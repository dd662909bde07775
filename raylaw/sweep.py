"""One sweep at a target scale on Ray Tune, then a refit of the law from every sweep in the store.

Trials come from ``LawSampler`` over the law-narrowed space (through ``LawSearch``), ASHA stops
poor trials on the fidelity the trainable reports (each trial is told ASHA's rungs, so it can
evaluate there), every trial lands in the store as it finishes, and afterwards the scale's
optimum updates the law (a new numbered version).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from raylaw import records
from raylaw.errors import RaylawError
from raylaw.history import save_version
from raylaw.law import Optimum, Prediction, ScalingLaw
from raylaw.records import create_sweep, scale_key, sweep_studies, trials_frame
from raylaw.sampler import LawSampler
from raylaw.space import SearchSpace
from raylaw.store import DEFAULT_STORE, open_store, optima_from_studies, shown_url

DEFAULT_TRAINABLE = "raylaw.trainables.lm:train"
GRACE_FRACTION = 1 / 9  # ASHA's first rung, as a share of the budget
_USER_PENDING = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")  # the user's own, if any
REDUCTION_FACTOR = 3  # ASHA promotes 1 in this many trials per rung


@dataclass
class SweepConfig:
    """What one sweep needs; the CLI fills it from flags."""

    space: SearchSpace
    scale: dict[str, float]
    law_path: str
    store: str = DEFAULT_STORE
    samples: int = 16
    prior: str | None = "steplaw"
    coverage: float = 0.9
    cpus_per_trial: float = 1.0  # per worker with workers_per_trial
    gpus_per_trial: float = 0.0  # per worker with workers_per_trial
    workers_per_trial: int | None = None  # K: each trial a Ray Train TorchTrainer of K workers
    trainable: str | None = None
    constants: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_concurrent: int | None = None
    max_failures: int = 0
    grace_fraction: float = GRACE_FRACTION
    reduction_factor: int = REDUCTION_FACTOR
    resume: bool = False
    study_name: str | None = None
    results_dir: str | None = None
    verbose: int = 1  # 0: the summary only; 1: a line per finished trial; 2: Ray Tune's output too
    reuse_actors: bool = True  # a finished trial's worker process runs the next trial
    label: str = ""  # starts the progress lines, e.g. "ladder step 2 of 5"


@dataclass
class SweepResult:
    """What a sweep found and what it did to the law."""

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
    center_value: float | None = None  # the metric the law's own prediction reached
    # the sweep's answer: the model's optimum with intervals (``LawSampler.recommendation``)
    recommended: dict[str, Any] | None = None
    resources: dict[str, float] | None = None  # what each trial asked Ray for (per worker)


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


def load_law(path: str | Path, space: SearchSpace, prior: str | None) -> ScalingLaw:
    """The law at ``path`` (checked against the space), or a fresh one from the prior."""
    path = Path(path)
    if not path.exists():
        try:
            return ScalingLaw.for_space(space, prior=prior)
        except RaylawError:
            return ScalingLaw.for_space(space, prior=None)
    law = ScalingLaw.load(path)
    if law.space_name != space.name:
        raise RaylawError(f"--law {path}: fitted for space '{law.space_name}', not "
                          f"'{space.name}'")
    for name, hp in space.governed.items():
        term = law.terms.get(name)
        if term is None or set(term.depends_on) != set(hp.depends_on):
            raise RaylawError(f"--law {path}: has no law for '{name}' on "
                              f"{list(hp.depends_on)} as space '{space.name}' declares")
    return law


def check_address(address: str) -> None:
    """Fail fast, in one line, when a Ray address cannot be reached (ray.init waits long)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    if address in ("auto", "local") or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass
    except (OSError, ValueError) as e:
        raise RaylawError(f"--address {address}: cannot reach a Ray cluster there "
                          f"({e.strerror if isinstance(e, OSError) else e})") from None


def loopback_ray_env(address: str | None) -> None:
    """Keep an embedded (or 127.0.0.1) Ray on loopback; call before Ray is imported.

    Ray 2.60 on Linux replaces 127.0.0.1 by the machine's address (and then listens on all
    interfaces) unless this variable is 0; it must not be set when joining a remote cluster.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    host = (address or "").split("://", 1)[-1].rsplit(":", 1)[0]
    if not address or host in ("127.0.0.1", "localhost"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def init_ray(address: str | None, dashboard: bool = False) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS, set under ``ray job submit``);
    otherwise start an embedded local Ray that listens on 127.0.0.1 only.

    ``dashboard``: the embedded Ray also serves its dashboard (on 127.0.0.1, when
    ``ray[default]`` is installed), whose state API Ray Train's placement-group cleaner polls
    (multi-worker trials); without it that cleaner logs a warning every second.
    """
    loopback_ray_env(address)
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
        ray.init(address=address, log_to_driver=True)
        return
    extra: dict[str, Any] = {"include_dashboard": False}
    if dashboard and importlib.util.find_spec("aiohttp_cors") is not None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        extra = {"include_dashboard": True, "dashboard_host": "127.0.0.1",
                 "dashboard_port": port}
        # Ray's processes inherit it: their state-API calls go to this Ray, never to another
        # Ray instance on the machine
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(address="local", _node_ip_address="127.0.0.1", configure_logging=False, **extra)


def run_sweep(cfg: SweepConfig, address: str | None = None) -> SweepResult:
    """Run one sweep and refit the law; see the module docstring."""
    loopback_ray_env(address)
    from raylaw.search import LawSearch

    # a free hyperparameter among the constants is held there, not searched
    space, scale = cfg.space.fix(cfg.constants), cfg.space.check_scale(cfg.scale)
    spec = cfg.trainable or space.trainable or DEFAULT_TRAINABLE
    trainable = load_trainable(spec)
    law = load_law(cfg.law_path, space, cfg.prior)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
    new_file = _sqlite_path(cfg.store)
    new_file = new_file if new_file is not None and not new_file.exists() else None
    storage = open_store(cfg.store)  # the first thing written: every check above passed
    prediction = law.predict(scale, cfg.coverage) if any(
        t.fitted for t in law.terms.values()) else {}
    sampler = LawSampler(law if prediction else None, space, scale, coverage=cfg.coverage,
                         seed=cfg.seed)
    study, resumed = create_sweep(storage, space, scale, space.mode, sampler, cfg.resume,
                                  cfg.study_name)
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
    rungs = asha_rungs(scheduler, budget)  # the trainable may evaluate there (and cool down)
    search = LawSearch(study, distributions, space.metric, space.mode,
                       constants={"scale": scale, **({"rungs": rungs} if rungs else {}),
                                  **cfg.constants},
                       fidelity=space.fidelity, budget=budget, resources=resources,
                       keep=getattr(scheduler, "keep", None),
                       experiment_dir=_experiment_dir(cfg.results_dir, study.study_name))
    if remaining > 0:
        try:
            init_ray(address, dashboard=bool(cfg.workers_per_trial))
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


def _run_tuner(cfg: SweepConfig, space: SearchSpace, study: optuna.Study, search: Any,
               scheduler: Any, trainable: Callable, spec: str, resources: dict[str, float],
               remaining: int) -> None:
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
        # trial): on one H200, trials that take ~10 s to start (torch, CUDA) at 0.25 GPU each
        # then ran 2 at once, not 4. As many pending as fit the cluster now (or the limit).
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


def _refit(cfg: SweepConfig, space: SearchSpace, scale: dict[str, float], law: ScalingLaw,
           storage: Any, study: optuna.Study, prediction: dict[str, Prediction],
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
                   study: optuna.Study | None = None) -> Any:
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
        _restore_rungs(scheduler, study, space)
    return scheduler


def asha_rungs(scheduler: Any, budget: float | None) -> list[float]:
    """The fidelity values at which ``scheduler`` (ASHA) compares trials, short of the budget."""
    milestones = {float(m) for b in getattr(scheduler, "_brackets", []) for m, _ in b._rungs}
    return sorted(m for m in milestones if budget is None or m < budget * (1 - 1e-9))


def _restore_rungs(scheduler: Any, study: optuna.Study, space: SearchSpace) -> None:
    """Seed ASHA's rungs with the learning curves already in the store (resumed sweeps).

    Ray's ``Tuner.restore`` loses ASHA's rung results (ray-project/ray#30838); the store has
    every finished trial's intermediate values, so the cutoffs carry over.
    """
    sign = -1.0 if space.mode == "min" else 1.0  # ASHA keeps rewards, larger is better
    for bracket in getattr(scheduler, "_brackets", []):
        for milestone, recorded in bracket._rungs:
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                               TrialState.PRUNED)):
                steps = [s for s in t.intermediate_values if s >= milestone]
                if steps:
                    recorded[f"store-{t.number}"] = sign * t.intermediate_values[min(steps)]


def _sqlite_path(url: str) -> Path | None:
    if "://" not in url:
        return Path(url)
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def _experiment_dir(results_dir: str | None, study_name: str) -> str | None:
    """Tune's folder for this sweep's trials (checkpoints a rerun trial continues from)."""
    if results_dir and "://" in results_dir:
        return None  # cloud storage: a rerun trial starts over
    return str(Path(results_dir or "~/ray_results").expanduser() / _safe(study_name))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def format_summary(r: SweepResult) -> str:
    """The end-of-sweep summary: prediction vs optimum, best trial, law before/after, cost."""
    lines = [f"\n== sweep {r.study_name}{' (resumed)' if r.resumed else ''} ==",
             "trials: " + ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items()))]
    if r.resources:
        lines.append(resources_line(r.resources))
    if r.best_value is not None:
        lines.append(f"best trial: {r.best_value:.5g}  " + ", ".join(
            f"{k}={_fmt(v)}" for k, v in r.best_params.items()))
    if r.center_value is not None:
        lines.append(f"law's prediction, trained to full length: {r.center_value:.5g}")
    if r.recommended is not None:
        rec = r.recommended
        parts = [f"{k}={_fmt(v)}" + (f" [{rec['low'][k]:.3g}, {rec['high'][k]:.3g}]"
                                     if k in rec["low"] else "")
                 for k, v in rec["params"].items()]
        noise = f"; metric noise ~{rec['noise']:.2%}" if rec.get("noise") is not None else ""
        lines.append("answer (the model's optimum, " f"{rec['coverage']:.0%} intervals): "
                     + ", ".join(parts) + noise)
    if r.optimum is not None:
        lines.append(f"{'hp':<14}{'predicted':>11}{'interval':>24}{'found':>11}"
                     f"{'log err':>9}  inside")
        for name, v in r.optimum.values.items():
            p = r.prediction.get(name)
            if p is None:
                lines.append(f"{name:<14}{'-':>11}{'-':>24}{v:>11.4g}")
                continue
            err = math.log(v / p.center)
            inside = r.optimum.inside(name, p.low, p.high)  # one-sided for a bound
            found = r.optimum.mark(name) + f"{v:.4g}"
            lines.append(f"{name:<14}{p.center:>11.4g}{f'[{p.low:.3g}, {p.high:.3g}]':>24}"
                         f"{found:>11}{err:>+9.3f}  {'yes' if inside else 'NO'}")
    else:
        lines.append("no completed full-length trial: no optimum at this scale")
    for label, law in (("law before", r.law_before), ("law after", r.law_after)):
        if law is None:
            continue
        parts = []
        for name, s in law.summary().items():
            if s.get("fitted"):
                parts.append(f"{name}: " + " ".join(f"{k}={v:+.3f}" for k, v in s["coef"].items()))
        lines.append(f"{label}: " + "; ".join(parts))
    if r.law_version is not None:
        lines.append(f"law version {r.law_version} written")
    if r.tokens_full:
        lines.append(f"tokens trained: {r.tokens_trained:.3g} vs {r.tokens_full:.3g} for a "
                     f"full-length run of every trial ({r.tokens_trained / r.tokens_full:.0%})")
    return "\n".join(lines)


def resources_line(res: dict[str, float]) -> str:
    """What each trial asked Ray for, e.g. "2 workers x (0.5 CPU, 0 GPU)" per trial."""
    each = f"{res['cpu']:g} CPU, {res['gpu']:g} GPU"
    if res.get("workers"):
        return (f"resources per trial: {res['workers']:g} Ray Train workers x ({each}) "
                f"= {res['workers'] * res['cpu']:g} CPU, {res['workers'] * res['gpu']:g} GPU")
    return f"resources per trial: {each}"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
