"""What raylaw records in Optuna studies: one module declares it, the docs' table is its own,
and the Optuna internals it needs still work."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution, IntDistribution

from raylaw import records

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_table_of_attributes_is_the_one_records_declares():
    docs = (ROOT / "docs" / "store.md").read_text()
    assert records.attribute_table() in docs, (
        "docs/store.md's attribute table differs from raylaw.records; replace it with:\n"
        + records.attribute_table())
    names = [name for name, _, _ in records.ATTRIBUTES]
    assert len(names) == len(set(names))
    assert {on for _, on, _ in records.ATTRIBUTES} == {"trial", "study"}


def test_only_records_reads_or_writes_user_attributes_and_optunas_storage():
    """Every attribute raylaw writes is declared in raylaw.records: no other module sets or
    reads one, nor reaches into Optuna's storage."""
    pattern = re.compile(r"user_attrs|set_user_attr|\._storage\b|\._trial_id\b|\._study_id\b")
    others = {p.relative_to(ROOT).as_posix(): p.read_text()
              for p in (ROOT / "raylaw").rglob("*.py") if p.name != "records.py"}
    assert {path: pattern.findall(text) for path, text in others.items()
            if pattern.search(text)} == {}


def test_optuna_internals_raylaw_relies_on_still_work(tmp_path):
    """mark_law_center, set_curve_point, reopen and the study creation order use Optuna's
    private storage handle (no public API does these): this fails when Optuna changes it."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="a", storage=storage)
    later = optuna.create_study(study_name="b", storage=storage)
    dists = {"lr": FloatDistribution(1e-4, 1.0, log=True), "bs": IntDistribution(1, 64)}
    live = study.ask()
    lr = live.suggest_float("lr", 1e-4, 1.0, log=True)  # a driver killed mid-ask: no bs
    frozen = study.get_trials(deepcopy=False)[0]
    assert not records.marked_law_center(study, live)
    records.mark_law_center(study, frozen)  # as the sampler does, from a FrozenTrial
    assert records.is_law_center(study.trials[0]) and records.marked_law_center(study, live)
    again = records.reopen(study, frozen, dists)
    assert again.number == live.number and again.params["lr"] == lr
    assert set(study.trials[0].params) == {"lr", "bs"}  # the missing parameter was suggested
    records.set_curve_point(study, again, 10, 2.0)
    records.set_curve_point(study, again, 10, 1.5)  # a retried run's value replaces it
    assert study.trials[0].intermediate_values == {10: 1.5}
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    assert [s.study_name for s in sorted(summaries, key=records._creation_order)] == [
        study.study_name, later.study_name]


def test_raylaw_optuna_still_gives_the_names_users_import():
    """``raylaw.optuna`` is a thin alias: the same objects as their new homes."""
    import raylaw.optuna as alias
    from raylaw import sampler, store

    assert alias.LawSampler is sampler.LawSampler
    assert alias.enqueue_prediction is sampler.enqueue_prediction
    assert alias.narrowed_distributions is sampler.narrowed_distributions
    assert alias.law_from_studies is store.law_from_studies
    assert alias.optima_from_studies is store.optima_from_studies
    assert alias.trials_frame is records.trials_frame
    assert alias.LAW_CENTER_ATTR == records.LAW_CENTER_ATTR == "law_center"
    assert alias.STATUS_ATTR == "raylaw_status"
