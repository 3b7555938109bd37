"""A search's study and its trials as jobs, on SQLite and PostgreSQL: at most `parallel` trials
active and `trials` in all, and a trial redone by a resumed attempt counted once."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from sqlalchemy import select

from core import search
from core.db import session_scope
from core.jobspec import Hyperparameters
from core.tables import Experiment, Job
from tests.app.datasets_support import dataset_row


def _experiment(**search_fields: Any) -> str:
    hp = Hyperparameters(seed=3).model_dump(mode="json")
    spec = {"space": {"learning_rate": [1e-3, 1e-4], "epochs": {"low": 1, "high": 3, "log": False}},
            "trials": 3, "sampler": "random", "pruner": "median", "parallel": 2,
            "greater_is_better": True, "resolved": {"m": ["/models/m", None]}, "per_model": {"m": hp}}
    dataset_id = dataset_row()
    with session_scope() as session:
        experiment = Experiment(dataset_id=dataset_id, task="single_label", base_models=["m"], job_ids=[],
                                hyperparameters=hp, overrides={}, primary_metric="f1_macro",
                                search=spec | search_fields)
        session.add(experiment)
        session.flush()
        return experiment.id


def _queue(database_url: str, experiment_id: str) -> list[str]:
    with session_scope() as session:
        return search.queue_trials(session, database_url, experiment_id)


def _experiment_row(experiment_id: str) -> Experiment:
    with session_scope() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        session.expunge(experiment)
        return experiment


def test_trials_are_queued_up_to_parallel_and_told_once(settings: Any) -> None:
    url = settings.database_url
    experiment_id = _experiment()
    first = _queue(url, experiment_id)
    assert len(first) == 2 and _queue(url, experiment_id) == []  # `parallel` are active
    with session_scope() as session:
        jobs = session.scalars(select(Job).where(Job.id.in_(first)).order_by(Job.search_trial)).all()
        assert [j.search_trial for j in jobs] == [0, 1]
        assert all(j.hyperparameters["learning_rate"] in (1e-3, 1e-4) for j in jobs)
        assert all(1 <= j.hyperparameters["epochs"] <= 3 for j in jobs)
        assert all(j.hyperparameters["seed"] == 3 and j.base_model == "/models/m" for j in jobs)
    experiment = _experiment_row(experiment_id)
    assert experiment.job_ids == first

    # A resumed attempt redoes step 1 of trial 0: the study keeps the first value.
    assert search.report(url, experiment, 0, 1, 0.5) is False  # no finished trial to compare with
    search.report(url, experiment, 0, 1, 0.9)
    study = search.load_study(url, experiment)
    assert study.get_trials()[0].intermediate_values == {1: 0.5}
    # Told twice (two attempts reached the end): counted once, with the first value.
    search.tell(url, experiment, 0, "complete", 0.5)
    search.tell(url, experiment, 0, "complete", 0.7)
    trial = search.load_study(url, experiment).get_trials()[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.5
    # A finished trial is not pruned, nor reported to.
    assert search.report(url, experiment, 0, 2, 0.1) is False

    with session_scope() as session:
        job = session.get(Job, first[0])
        assert job is not None
        job.state = "succeeded"
    third = _queue(url, experiment_id)
    assert len(third) == 1 and _queue(url, experiment_id) == []  # 3 trials asked: the search is spent
    # Trial 1 far below trial 0 at step 1: the median pruner stops it.
    assert search.report(url, experiment, 1, 1, 0.1) is True
    search.tell(url, experiment, 1, "pruned", None)
    assert search.summary(url, experiment)["trials"] == {"complete": 1, "pruned": 1, "running": 1}


def test_a_cancelled_search_queues_nothing_more(settings: Any) -> None:
    experiment_id = _experiment()
    with session_scope() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        experiment.cancel_requested = True
    assert _queue(settings.database_url, experiment_id) == []


@pytest.mark.parametrize("parallel", [4])
def test_a_grid_search_asks_no_more_trials_than_the_grid_has(settings: Any, parallel: int) -> None:
    experiment_id = _experiment(sampler="grid", space={"learning_rate": [1e-3, 1e-4]}, trials=5,
                                parallel=parallel)
    assert len(_queue(settings.database_url, experiment_id)) == 2
