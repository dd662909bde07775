"""The durable store: an Optuna RDB storage (SQLite by default), one study per sweep.

Each study records its scale, space and sweep state in user attributes, so any tool that
reads Optuna studies (optuna-dashboard, ``raylaw.optuna.law_from_studies``) sees the sweeps.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage

from raylaw.errors import RaylawError
from raylaw.optuna import SCALE_ATTR, SPACE_ATTR

DEFAULT_STORE = "sqlite:///raylaw.db"
STATE_ATTR = "raylaw_sweep"  # "running" or "finished"


def open_store(url: str) -> RDBStorage:
    """Open (creating if needed) the store at a SQLAlchemy URL, or fail with one clear line."""
    if "://" not in url:
        url = f"sqlite:///{url}"  # a plain path means a SQLite file
    if url.startswith("sqlite:///"):
        parent = Path(url[len("sqlite:///"):]).expanduser().resolve().parent
        if not parent.is_dir():
            raise RaylawError(f"--store {url}: directory {parent} does not exist")
    for attempt in range(4):
        try:
            return RDBStorage(url, engine_kwargs=_engine_kwargs(url),
                              heartbeat_interval=None)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as e:
            # two drivers creating a new store at once: the other one's tables or version row
            # appeared between Optuna's check and its CREATE/INSERT; the next try finds them
            if attempt == 3 or not _schema_race(e):
                raise RaylawError(f"--store {url}: cannot open ({str(e).splitlines()[0]})") from e
            time.sleep(0.2 * (attempt + 1))
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
            raise RaylawError(f"--store {url}: cannot open ({str(e).splitlines()[0]})") from e
    raise AssertionError("unreachable")


def _schema_race(e: Exception) -> bool:
    """True for the errors a concurrent creation of the same schema causes."""
    text = str(e).lower()
    return "already exists" in text or "unique constraint" in text or "duplicate" in text


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):  # several sweeps may write one file: wait for the lock
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def scale_key(scale: dict[str, float]) -> str:
    return ",".join(f"{k}={v:.6g}" for k, v in sorted(scale.items()))


def sweep_studies(storage: RDBStorage, space_name: str,
                  scale: dict[str, float] | None = None) -> list[optuna.study.StudySummary]:
    """Summaries of the sweeps of a space (optionally at one scale), oldest first."""
    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if s.user_attrs.get(SPACE_ATTR) != space_name:
            continue
        if scale is not None and scale_key(s.user_attrs.get(SCALE_ATTR, {})) != scale_key(scale):
            continue
        out.append(s)
    return sorted(out, key=lambda s: s._study_id)


def create_sweep(storage: RDBStorage, space: Any, scale: dict[str, float], mode: str,
                 sampler: optuna.samplers.BaseSampler, resume: bool,
                 name: str | None = None) -> tuple[optuna.Study, bool]:
    """The study for this sweep: a new one, or with ``resume`` the last unfinished one.

    Returns (study, resumed).
    """
    if resume:
        previous = [s for s in sweep_studies(storage, space.name, scale)
                    if s.user_attrs.get(STATE_ATTR) != "finished"]
        if name is not None:
            previous = [s for s in previous if s.study_name == name]
        if previous:
            study = optuna.load_study(study_name=previous[-1].study_name, storage=storage,
                                      sampler=sampler)
            return study, True
    if name is None:
        n = len(sweep_studies(storage, space.name, scale)) + 1
        name = f"{space.name}[{scale_key(scale)}]#{n}"
    direction = "minimize" if mode == "min" else "maximize"
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    direction=direction)
    except optuna.exceptions.DuplicatedStudyError:
        raise RaylawError(f"--study {name}: a sweep of that name exists in the store "
                          "(use --resume to continue it, or another name)") from None
    study.set_user_attr(SPACE_ATTR, space.name)
    study.set_user_attr(SCALE_ATTR, dict(scale))
    study.set_user_attr(STATE_ATTR, "running")
    study.set_user_attr("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return study, False


def most_at_once(trials: list) -> int:
    """The most trials that ran at one instant, from their ``ran`` = [start, end] attributes."""
    events = sorted((t, step) for tr in trials if "ran" in tr.user_attrs
                    for t, step in ((tr.user_attrs["ran"][0], 1), (tr.user_attrs["ran"][1], -1)))
    now = best = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start (+1)
        now += step
        best = max(best, now)
    return best
