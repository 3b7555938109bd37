"""A search experiment on real workers over PostgreSQL: 4 trials of a tiny model on two workers
sharing one Optuna study, a weak trial pruned at its evaluations, and the best trial by
validation recommended with its margin over TF-IDF."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from core import search
from core.db import session_scope
from core.settings import get_settings
from core.tables import Job
from tests.integration.conftest import upload, write_sentiment_csv

pytestmark = pytest.mark.slow

# Random sampler, seed 10: the study draws learning rates 5e-3, 5e-3, 1e-9, 5e-3 for trials
# 0..3 (each process seeds its sampler with seed + trials so far). Trial 2 starts only once a
# trial has completed (the first two run at once), so the median pruner has a finished trial to
# compare it with, and a model that does not move (1e-9) loses to it at the first evaluation.
BASE = {"epochs": 2, "batch_size": 16, "max_seq_length": 32, "eval_strategy": "steps", "eval_steps": 1,
        "logging_steps": 1, "metric_for_best_model": "loss", "seed": 10}
SEARCH = {"space": {"learning_rate": [5e-3, 1e-9], "warmup_ratio": {"low": 0.0, "high": 0.1}},
          "trials": 4, "sampler": "random", "pruner": "median", "parallel": 2}


def _wait(client: Any, experiment_id: str, workers: list[Any], timeout_s: float = 400) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/experiments/{experiment_id}").json()
        done = [j for j in body["jobs"] if j["state"] not in {"queued", "running"}]
        if len(done) == SEARCH["trials"]:
            return body
        assert sum(j["state"] in {"queued", "running"} for j in body["jobs"]) <= SEARCH["parallel"]
        time.sleep(0.5)
    logs = "\n".join(w.log_text()[-3000:] for w in workers)
    raise TimeoutError(f"search still {body.get('state')}: {body.get('jobs')}\n{logs}")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_search_of_four_trials_on_two_workers_prunes_the_weak_one(stack: Any, tmp_path: Path,
                                                                    tiny_encoder_dir: Path) -> None:
    client, start_worker = stack()
    workers = [start_worker(), start_worker()]
    dataset = upload(client, write_sentiment_csv(tmp_path / "sentiment.csv"))
    resp = client.post("/experiments", json={"dataset_id": dataset["id"],
                                             "base_models": [str(tiny_encoder_dir)],
                                             "hyperparameters": BASE, "search": SEARCH})
    assert resp.status_code == 201, resp.text
    assert len(resp.json()["jobs"]) == 2  # `parallel` trials queued at first
    body = _wait(client, resp.json()["id"], workers)

    jobs = {row["trial"]: row for row in body["leaderboard"] if row["kind"] == "model"}
    assert sorted(jobs) == [0, 1, 2, 3]
    assert [jobs[n]["search_parameters"]["learning_rate"] for n in range(4)] == [5e-3, 5e-3, 1e-9, 5e-3]
    pruned = jobs[2]
    assert pruned["state"] == "cancelled"
    job = client.get(f"/jobs/{pruned['job_id']}").json()
    events = client.get(f"/jobs/{pruned['job_id']}/events").json()
    (event,) = [e for e in events if e["kind"] == "pruned"]
    assert event["data"]["trial"] == 2 and "pruned" in event["message"]
    assert job["step"] < job["total_steps"]  # stopped at once, not at the end
    assert all(jobs[n]["state"] == "succeeded" for n in (0, 1, 3))
    # Both workers took trials.
    with session_scope() as session:
        hosts = {session.get(Job, row["job_id"]).worker for row in jobs.values()}  # type: ignore[union-attr]
    assert len(hosts) >= 2, hosts

    # The study, in the service's PostgreSQL: told once per trial.
    study = optuna.load_study(study_name=search.study_name(body["id"]),
                              storage=search.storage(get_settings().database_url))
    states = [t.state.name for t in sorted(study.get_trials(), key=lambda t: t.number)]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert body["search"]["trials"] == {"complete": 3, "pruned": 1}
    assert set(body["search"]["importance"]) == {"warmup_ratio", "learning_rate"} or \
        set(body["search"]["importance"]) == {"warmup_ratio"}  # one learning rate among completed ones
    assert body["state"] == "succeeded"

    # The recommendation: the best completed trial by validation loss, with its margin over TF-IDF.
    rec = body["recommendation"]
    completed = [jobs[n] for n in (0, 1, 3)]
    best = min(completed, key=lambda r: r["validation"]["loss"])
    assert rec["job_id"] == best["job_id"] and rec["metric"] == "loss" and rec["final"] is True
    assert rec["validation"] == best["validation"]["loss"]
    assert rec["tfidf_validation"] is not None and rec["margin_over_tfidf"] == pytest.approx(
        rec["tfidf_validation"] - rec["validation"])
