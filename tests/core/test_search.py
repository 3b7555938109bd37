"""A search's study and its trials as jobs, on SQLite and PostgreSQL: at most `parallel` trials
active and `trials` in all, a trial redone by a resumed attempt counted once, and a spent budget
(steps or wall time) that starts no further trial and says which were skipped."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import optuna
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from core import search
from core.db import session_scope
from core.jobspec import Hyperparameters
from core.tables import Experiment, Job, JobEvent
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


def _end_trial(job_id: str, *, state: str, step: int) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state, job.step, job.finished_at = state, step, job.created_at
        if state == "cancelled":
            session.add(JobEvent(job_id=job_id, kind="pruned", message="pruned"))


def test_a_spent_step_budget_queues_no_trial_and_says_which_were_skipped(settings: Any) -> None:
    url = settings.database_url
    experiment_id = _experiment(trials=5, budget={"steps": 10, "wall_time_s": None})
    first, second = _queue(url, experiment_id)
    _end_trial(first, state="succeeded", step=6)
    third = _queue(url, experiment_id)  # 6 of 10 steps spent: trial 2 starts
    assert len(third) == 1
    _end_trial(third[0], state="cancelled", step=3)  # pruned
    with session_scope() as session:  # trial 1 still running at step 1: 10 of 10 spent
        running = session.get(Job, second)
        assert running is not None
        running.state, running.step = "running", 1
        assert search.queue_trials(session, url, experiment_id, ended_job_id=third[0]) == []

    experiment = _experiment_row(experiment_id)
    ended = experiment.search["budget_ended"]  # type: ignore[index]
    assert ended["reason"] == "steps" and ended["spent"]["steps"] == 10 and ended["skipped"] == 2
    assert "10 optimizer steps of the 10 budgeted" in ended["message"]
    assert "2 trial(s) skipped" in ended["message"]
    with session_scope() as session:
        (event,) = session.scalars(select(JobEvent).where(JobEvent.job_id == third[0],
                                                          JobEvent.kind == "search_budget_spent")).all()
        assert "budget is spent" in event.message and event.data["skipped"] == 2
        # The running trial finishes; its end asks for nothing more.
        running = session.get(Job, second)
        assert running is not None
        running.state, running.step = "succeeded", 6
    assert _queue(url, experiment_id) == []
    with session_scope() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        jobs = session.scalars(select(Job).where(Job.experiment_id == experiment_id)).all()
        assert search.trial_outcomes(session, experiment, jobs) == {
            "finished": [0, 1], "pruned": [2], "failed": [], "cancelled": [], "active": [], "skipped": [3, 4]}
        assert search.spent(experiment, jobs)["steps"] == 15  # the running trial's steps count too


def test_a_spent_wall_time_budget_queues_no_trial(settings: Any) -> None:
    url = settings.database_url
    experiment_id = _experiment(trials=3, budget={"steps": None, "wall_time_s": 60.0})
    first, _ = _queue(url, experiment_id)
    _end_trial(first, state="succeeded", step=1)
    with session_scope() as session:  # the search started two minutes ago
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        experiment.created_at = experiment.created_at - timedelta(seconds=120)
    assert _queue(url, experiment_id) == []
    ended = _experiment_row(experiment_id).search["budget_ended"]  # type: ignore[index]
    assert ended["reason"] == "wall_time_s" and ended["spent"]["wall_time_s"] >= 120
    assert ended["skipped"] == 1 and "of the 60 s budgeted" in ended["message"]


def test_an_unspent_budget_leaves_the_search_alone(settings: Any) -> None:
    experiment_id = _experiment(trials=3, budget={"steps": 1000, "wall_time_s": 3600.0})
    first, _ = _queue(settings.database_url, experiment_id)
    _end_trial(first, state="succeeded", step=10)
    assert len(_queue(settings.database_url, experiment_id)) == 1
    assert "budget_ended" not in _experiment_row(experiment_id).search  # type: ignore[operator]


@pytest.mark.parametrize(("budget", "phrase"), [
    ({"steps": 0}, "greater than 0"), ({"wall_time_s": -5}, "greater than 0"),
    ({"steps": 10, "tokens": 5}, "Extra inputs"), ({}, "names steps, wall_time_s or both")])
def test_a_bad_budget_is_refused_in_words(budget: dict[str, Any], phrase: str) -> None:
    with pytest.raises(ValidationError, match=phrase):
        search.SearchSpec.model_validate({"space": {"epochs": [1]}, "budget": budget})
