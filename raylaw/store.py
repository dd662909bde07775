"""The durable store: an Optuna RDB storage (SQLite by default), one study per sweep, and
the laws its sweeps imply.

What a sweep records in its study (``raylaw.records``) is plain Optuna data, so any tool that
reads Optuna studies (optuna-dashboard, ``law_from_studies``) sees the sweeps.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage

from raylaw.errors import RaylawError
from raylaw.law import Optimum, ScalingLaw
from raylaw.optimum import optima_pooled
from raylaw.records import (  # the last five lived here before raylaw.records
    STATE_ATTR,
    create_sweep,
    most_at_once,
    of_space,
    scale_key,
    study_scale,
    sweep_studies,
    trials_frame,
)

if TYPE_CHECKING:
    from raylaw.space import SearchSpace

__all__ = ["DEFAULT_STORE", "STATE_ATTR", "create_sweep", "default_store", "law_from_studies",
           "most_at_once",
           "open_store", "optima_from_studies", "scale_key", "shown_url", "sqlite_path",
           "store_url", "sweep_studies"]

DEFAULT_STORE = "sqlite:///raylaw.db"


def default_store() -> str:
    """The store when none is given: ``$RAYLAW_STORE``, else ``sqlite:///raylaw.db``."""
    return os.environ.get("RAYLAW_STORE") or DEFAULT_STORE


def store_url(url: str) -> str:
    """The SQLAlchemy URL of a ``--store`` value: a plain path is a SQLite file, and
    ``postgresql://`` means psycopg 3 (``raylaw[postgres]``) unless psycopg2 is installed."""
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None:
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def shown_url(url: str) -> str:
    """``url`` with its password masked, for messages."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return url


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite ``--store`` value (a URL or a plain path); None for other databases."""
    url = store_url(url)
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def open_store(url: str, create: bool = True) -> RDBStorage:
    """Open (creating if needed, unless not ``create``) the store at a SQLAlchemy URL, or fail
    with one clear line."""
    url = store_url(url)
    where = f"--store {shown_url(url)}"
    path = sqlite_path(url)
    if path is not None:
        parent = path.expanduser().resolve().parent
        if not parent.is_dir():
            raise RaylawError(f"{where}: directory {parent} does not exist")
        if not create and not path.expanduser().exists():
            raise RaylawError(f"{where}: no such file {path}")
    for attempt in range(4):
        try:
            storage = RDBStorage(url, engine_kwargs=_engine_kwargs(url),
                                 heartbeat_interval=None)
            if url.startswith("sqlite"):
                sqlalchemy.event.listen(storage.engine, "connect", _sqlite_wal)
                storage.engine.dispose()  # the connections opened so far: reopened with it
            return storage
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError,
                sqlalchemy.exc.ProgrammingError) as e:
            # two drivers creating a new store at once: the other one's tables or version row
            # appeared between Optuna's check and its CREATE/INSERT; the next try finds them
            if attempt == 3 or not _schema_race(e):
                raise RaylawError(f"{where}: cannot open ({_first_line(e)})") from e
            time.sleep(0.2 * (attempt + 1))
        except ImportError as e:
            hint = "; pip install 'raylaw[postgres]'" if url.startswith("postgresql") else ""
            raise RaylawError(f"{where}: no database driver ({e}{hint})") from e
        except (sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
            raise RaylawError(f"{where}: cannot open ({_first_line(e)})") from e
    raise AssertionError("unreachable")


def _sqlite_wal(dbapi_conn: Any, _record: Any) -> None:
    """SQLite's write-ahead log: a commit is one fsync of the log instead of the default
    journal's three (19 ms -> 4 ms a write here, about 1,000 writes in a 40-trial sweep), and
    readers (optuna-dashboard, another sweep) no longer block the writer. Every commit is still
    synced (synchronous=FULL). Like any SQLite store, it needs a local disk, not NFS."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
    finally:
        cur.close()


def _first_line(e: Exception) -> str:
    """The first line of a driver's error, without SQLAlchemy's '(driver.Error)' prefix."""
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _schema_race(e: Exception) -> bool:
    """True for the errors a concurrent creation of the same schema causes."""
    text = str(e).lower()
    return "already exists" in text or "unique constraint" in text or "duplicate" in text


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):  # several sweeps may write one file: wait for the lock
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql+psycopg"):  # an unreachable host fails in seconds, not minutes
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {"pool_pre_ping": True}


# laws from the sweeps in a store --------------------------------------------------------------
def optima_from_studies(storage: str | BaseStorage, space: SearchSpace,
                        study_names: Iterable[str] | None = None) -> list[Optimum]:
    """One optimum per scale from the studies in ``storage`` whose scale is recorded.

    Studies recorded at the same scale are pooled; studies whose ``space`` attribute names
    another search space, or with no scale, are skipped. A URL is opened as ``--store`` is.
    """
    if isinstance(storage, str):
        storage = open_store(storage, create=False)  # a mistyped path must not read as empty
    names = list(study_names) if study_names is not None else [
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    by_scale: dict[tuple, list[pd.DataFrame]] = {}
    scales: dict[tuple, dict[str, float]] = {}
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        if not of_space(study, space):
            continue
        scale = study_scale(study, space)
        if scale is None:
            continue
        df = trials_frame(study)
        if df.empty or not set(space.governed) & set(df.columns):
            continue
        key = tuple(sorted(scale.items()))
        scales[key] = scale
        by_scale.setdefault(key, []).append(df.rename(columns={"value": space.metric}))
    groups = [(scales[key], pd.concat(frames, ignore_index=True))
              for key, frames in sorted(by_scale.items())]
    # a scale with no completed trial is no evidence
    return optima_pooled(groups, space, source="optuna", noise=space.noise, skip_empty=True)


def law_from_studies(storage: str | BaseStorage, space: SearchSpace,
                     prior: str | None = "steplaw",
                     study_names: Iterable[str] | None = None) -> ScalingLaw:
    """Fit a law from Optuna studies (scale in study user attributes): sweeps become evidence."""
    optima = optima_from_studies(storage, space, study_names)
    if not optima and prior is None:
        raise RaylawError("no study with a recorded scale and completed trials to fit from")
    return ScalingLaw.for_space(space, prior=prior).fit(optima, source="optuna studies")
