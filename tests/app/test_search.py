"""Search experiments through the API without a worker: the space validated (a 422 naming what
is wrong, nothing written), and a valid search queues `parallel` trials, one job each, whose
hyperparameters are the study's draws, with the study in the service's own database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from sqlalchemy import func, select

from core import search
from core.db import session_scope
from core.tables import Experiment, Job
from tests.app.datasets_support import dataset_row


def _counts() -> tuple[int, int]:
    with session_scope() as session:
        return (session.scalar(select(func.count()).select_from(Experiment)) or 0,
                session.scalar(select(func.count()).select_from(Job)) or 0)


@pytest.mark.parametrize(("spec", "phrase"), [
    ({"space": {"learning_rate": {"low": 1e-3, "high": 1e-5, "log": True}}},
     "low 0.001 must be below high"),
    ({"space": {"learning_rate": {"low": 0, "high": 1e-3, "log": True}}}, "a log range needs low > 0"),
    ({"space": {"dropout_of_doom": [0.1, 0.2]}}, "dropout_of_doom"),
    ({"space": {"seed": [1, 2]}}, "cannot be searched"),
    ({"space": {"learning_rate": {"low": 1e-5, "high": 5.0}}}, "search.space.learning_rate: 5.0"),
    ({"space": {"lora_r": [8, 0]}}, "search.space.lora_r: 0"),
    ({"space": {"lora_r": [8, "big"]}}, "search.space.lora_r: 'big'"),
    ({"space": {"lora_r": {"low": 4, "high": 8.5}}}, "8.5 is not a whole number"),
    ({"space": {"lr_scheduler": {"low": 0, "high": 1}}}, "search.space.lr_scheduler"),
    ({"space": {"data_order": ["random", "sorted"]}}, "search.space.data_order: 'sorted'"),
    ({"space": {"lora_r": [4, 8]}}, "apply to chat jobs only"),
    ({"space": {"epochs": [1, 2]}, "sampler": "grid", "pruner": "none", "trials": 2} | {
        "space": {"epochs": [1, 2], "warmup_ratio": {"low": 0.0, "high": 0.2}}}, "grid sampler needs a list"),
    ({"space": {"epochs": [1]}, "sampler": "annealing"}, "sampler"),
    ({"space": {}}, "space"),
    ({"space": {"epochs": [1]}, "parallel": 0}, "parallel"),
    ({"space": {"epochs": [1]}, "budget": {"steps": 0}}, "greater than 0"),
    ({"space": {"epochs": [1]}, "budget": {"wall_time_s": -1}}, "greater than 0"),
    ({"space": {"epochs": [1]}, "budget": {"minutes": 5}}, "Extra inputs are not permitted"),
    ({"space": {"epochs": [1]}, "budget": {}}, "a budget names steps, wall_time_s or both"),
])
def test_a_bad_space_is_a_422_that_names_it_and_writes_nothing(client: Any, tiny_encoder_dir: Path,
                                                               spec: dict[str, Any], phrase: str) -> None:
    resp = client.post("/experiments", json={"dataset_id": dataset_row(),
                                             "base_models": [str(tiny_encoder_dir)], "search": spec})
    assert resp.status_code == 422, resp.text
    assert phrase in str(resp.json()["detail"])
    assert _counts() == (0, 0)


def test_a_search_queues_parallel_trials_drawn_by_the_study(client: Any, tiny_encoder_dir: Path,
                                                            settings: Any) -> None:
    resp = client.post("/experiments", json={
        "dataset_id": dataset_row(), "base_models": [str(tiny_encoder_dir)],
        "hyperparameters": {"epochs": 1, "learning_rate": "auto"},
        "search": {"space": {"learning_rate": {"low": 1e-5, "high": 1e-2, "log": True}, "epochs": [1, 2],
                             "weight_decay": [0.0, 0.1]},
                   "trials": 5, "sampler": "random", "pruner": "median", "parallel": 2,
                   "budget": {"steps": 500}}})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert len(body["jobs"]) == 2 and all(j["state"] == "queued" for j in body["jobs"])
    assert body["search"]["budget"] == {"steps": 500, "wall_time_s": None}
    assert body["search"]["spent"]["steps"] == 0 and body["search"]["budget_ended"] is None
    assert body["search"]["trial_outcomes"]["active"] == [0, 1]
    assert body["search"]["trials"] == {"running": 2} and body["search"]["importance"] is None
    study = optuna.load_study(study_name=search.study_name(body["id"]),
                              storage=search.storage(settings.database_url))
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1] and study.direction == optuna.study.StudyDirection.MAXIMIZE
    with session_scope() as session:
        jobs = session.scalars(select(Job).where(Job.experiment_id == body["id"])
                               .order_by(Job.search_trial)).all()
        for job, trial in zip(jobs, trials, strict=True):
            assert job.search_trial == trial.number
            for name in ("learning_rate", "epochs", "weight_decay"):
                assert job.hyperparameters[name] == trial.params[name]
            assert 1e-5 <= job.hyperparameters["learning_rate"] <= 1e-2
    # Two processes loading the study afresh draw different points (the seed moves with the count).
    assert trials[0].params != trials[1].params
    rows = [r for r in body["leaderboard"] if r["kind"] == "model"]
    assert sorted(r["trial"] for r in rows) == [0, 1]
    assert set(rows[0]["search_parameters"]) == {"learning_rate", "epochs", "weight_decay"}

    # Deleting the (cancelled) search removes its study too.
    cancelled = client.post(f"/experiments/{body['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert [j["state"] for j in cancelled.json()["jobs"]] == ["cancelled", "cancelled"]
    with session_scope() as session:  # a worker ending a trial now queues no other
        assert search.queue_trials(session, settings.database_url, body["id"]) == []
    assert client.delete(f"/experiments/{body['id']}").status_code == 204
    with pytest.raises(KeyError):
        optuna.load_study(study_name=search.study_name(body["id"]),
                          storage=search.storage(settings.database_url))


def test_data_order_is_a_choice_a_search_draws_for_its_trials(client: Any, tiny_encoder_dir: Path) -> None:
    resp = client.post("/experiments", json={
        "dataset_id": dataset_row(), "base_models": [str(tiny_encoder_dir)],
        "search": {"space": {"data_order": ["random", "windowed", "grouped"]},
                   "trials": 3, "sampler": "grid", "pruner": "none", "parallel": 3}})
    assert resp.status_code == 201, resp.text
    drawn = {r["job_id"]: r["search_parameters"]["data_order"]
             for r in resp.json()["leaderboard"] if r["kind"] == "model"}
    with session_scope() as session:
        jobs = session.scalars(select(Job).where(Job.experiment_id == resp.json()["id"])).all()
        assert len(jobs) == 3
        for job in jobs:  # the study's draw is the job's setting
            assert job.hyperparameters["data_order"] == drawn[job.id]
            assert drawn[job.id] in ("random", "windowed", "grouped")
