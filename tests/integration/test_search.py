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
from tests.integration.conftest import upload, wait_until, write_sentiment_csv

pytestmark = pytest.mark.slow

# Random sampler, seed 10: the study draws learning rates 5e-3, 5e-3, 1e-9, 5e-3 for trials
# 0..3 (each process seeds its sampler with seed + trials so far). Trial 2 starts only once a
# trial has completed (the first two run at once), so the median pruner has a finished trial to
# compare it with, and a model that does not move (1e-9) loses to it at the first evaluation.
BASE = {"epochs": 2, "batch_size": 16, "max_seq_length": 32, "eval_strategy": "steps", "eval_steps": 1,
        "logging_steps": 1, "metric_for_best_model": "loss", "seed": 10}
SEARCH = {"space": {"learning_rate": [5e-3, 1e-9], "warmup_ratio": {"low": 0.0, "high": 0.1}},
          "trials": 4, "sampler": "random", "pruner": "median", "parallel": 2}


def _wait(client: Any, experiment_id: str, workers: list[Any], timeout_s: float = 400,
          trials: int = SEARCH["trials"]) -> dict[str, Any]:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/experiments/{experiment_id}").json()
        done = [j for j in body["jobs"] if j["state"] not in {"queued", "running"}]
        if len(done) == trials:
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
                                             "hyperparameters": BASE,
                                             # A budget checked at each trial's end, never reached.
                                             "search": SEARCH | {"budget": {"steps": 10_000}}})
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
    assert body["search"]["trial_outcomes"] == {"finished": [0, 1, 3], "pruned": [2], "failed": [],
                                                "cancelled": [], "active": [], "skipped": []}
    assert body["search"]["budget_ended"] is None
    assert body["search"]["spent"]["steps"] == sum(row["step"] for row in body["jobs"]) > 0
    assert set(body["search"]["importance"]) == {"warmup_ratio", "learning_rate"} or \
        set(body["search"]["importance"]) == {"warmup_ratio"}  # one learning rate among completed ones
    assert body["state"] == "succeeded"

    # The recommendation: the best completed trial by validation loss, with its margin over TF-IDF.
    rec = body["recommendation"]
    completed = [jobs[n] for n in (0, 1, 3)]
    best = min(completed, key=lambda r: r["validation"]["loss"])
    # Trials of the same parameters can tie; a tie goes to the faster run (app/leaderboard.py).
    tied = {r["job_id"] for r in completed if r["validation"]["loss"] == best["validation"]["loss"]}
    assert rec["job_id"] in tied and rec["metric"] == "loss" and rec["final"] is True
    assert rec["validation"] == best["validation"]["loss"]
    assert rec["tfidf_validation"] is not None and rec["margin_over_tfidf"] == pytest.approx(
        rec["tfidf_validation"] - rec["validation"])


SLOW = {"fault_step_delay_s": 0.3, "job_lease_s": 3, "heartbeat_interval_s": 0.5}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_trial_whose_worker_is_sigkilled_resumes_and_is_counted_once(stack: Any, tmp_path: Path,
                                                                       tiny_encoder_dir: Path) -> None:
    client, start_worker = stack(**SLOW)
    dataset = upload(client, write_sentiment_csv(tmp_path / "sentiment.csv"))
    first = start_worker()
    resp = client.post("/experiments", json={
        "dataset_id": dataset["id"], "base_models": [str(tiny_encoder_dir)],
        "hyperparameters": BASE | {"epochs": 3},
        "search": {"space": {"warmup_ratio": {"low": 0.0, "high": 0.1}, "learning_rate": [5e-3]},
                   "trials": 2, "sampler": "random", "pruner": "none", "parallel": 1}})
    assert resp.status_code == 201, resp.text
    experiment_id = resp.json()["id"]
    (trial_job,) = [j["job_id"] for j in resp.json()["jobs"]]

    def checkpoints() -> list[int]:
        return [c["step"] for c in client.get(f"/jobs/{trial_job}/checkpoints").json()]

    saved = wait_until(lambda: max(checkpoints(), default=0), timeout_s=120, what="a checkpoint")
    wait_until(lambda: client.get(f"/jobs/{trial_job}").json()["step"] > saved + 1, what="steps past it")
    first.kill()
    second = start_worker()
    body = _wait(client, experiment_id, [first, second], trials=2)

    job = client.get(f"/jobs/{trial_job}").json()
    assert job["state"] == "succeeded" and job["attempts"] == 2
    events = [e["kind"] for e in client.get(f"/jobs/{trial_job}/events").json()]
    assert "resumed" in events
    study = optuna.load_study(study_name=search.study_name(experiment_id),
                              storage=search.storage(get_settings().database_url))
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]  # two trials, each told once
    # Every evaluation of the killed trial is in the study once, and its value is the job's best.
    evals = client.get(f"/jobs/{trial_job}/metrics").json()["eval"]
    assert sorted(trials[0].intermediate_values) == [p["step"] for p in evals]
    assert trials[0].value == pytest.approx(job["best_metric"])
    assert body["search"]["trials"] == {"complete": 2}
