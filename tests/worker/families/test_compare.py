"""The tuned model beside the majority and TF-IDF baselines, on a real database: every figure
is checked against scikit-learn (or the tuned model) run directly on the same rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.multiclass import OneVsRestClassifier

from core.db import session_scope
from core.serving.runtime import LoadedModel
from core.store import write_model_meta
from core.tables import Dataset, Job, JobEvent, MetricPoint, TunedModel
from tests.conftest import FIXTURES, make_tiny_classifier
from tests.worker.helpers import LABELS as TOPICS
from tests.worker.helpers import write_dataset
from worker.families.classification.compare import EXAMPLES_SHOWN
from worker.families.classification.metrics import cross_fitted_predictions

HATE_LABELS = ["hate", "none", "offensive"]
# The documented baseline, spelled out here rather than imported, so the test checks the
# service against scikit-learn itself.
TFIDF = {"analyzer": "char_wb", "ngram_range": (1, 3), "sublinear_tf": True, "min_df": 2,
         "max_features": 200_000}
LOGISTIC = {"C": 1.0, "max_iter": 1000, "class_weight": "balanced"}


def _korean_splits(directory: Path) -> dict[str, tuple[list[str], list[int]]]:
    """120 rows of the Korean hate-speech slice: 80 train, 20 validation, 20 test."""
    frame = pd.read_csv(FIXTURES / "korean_hate_speech_slice.tsv", sep="\t")
    texts, labels = frame["comments"].astype(str).tolist(), [HATE_LABELS.index(h) for h in frame["hate"]]
    directory.mkdir()
    splits = {"train": (0, 80), "validation": (80, 100), "test": (100, 120)}
    out = {}
    for split, (start, end) in splits.items():
        table = pa.table({"row": list(range(start + 2, end + 2)), "text": texts[start:end],
                          "label": labels[start:end]})
        pq.write_table(table, directory / f"{split}.parquet")
        out[split] = (texts[start:end], labels[start:end])
    return out


def _rows(tmp_path: Path, dataset_dir: Path, labels: list[str], *, multi_label: bool = False,
          thresholds: dict[str, float] | None = None) -> tuple[str, str, Path]:
    task = "multi_label" if multi_label else "single_label"
    tuned_dir = make_tiny_classifier(tmp_path / "tuned", labels, multi_label=multi_label, seed=3)
    write_model_meta(tuned_dir, {"task": task, "labels": labels, "max_seq_length": 32})
    with session_scope() as session:
        dataset = Dataset(name="d", task=task, format="tsv", encoding="utf-8", text_column="text",
                          label_columns=["label"], labels=labels, sha256="0" * 64,
                          storage_path=str(dataset_dir))
        session.add(dataset)
        session.flush()
        job = Job(dataset_id=dataset.id, base_model="tiny", task=task, state="succeeded",
                  hyperparameters={"seed": 42}, best_metric_name="f1_macro", step=7, epoch=2.0)
        session.add(job)
        session.flush()
        model = TunedModel(job_id=job.id, base_model="tiny", task=task, labels=labels, thresholds=thresholds,
                           max_seq_length=32, path=str(tuned_dir))
        session.add(model)
        session.flush()
        return job.id, model.id, tuned_dir


def test_single_label_baselines_match_scikit_learn_on_the_same_rows(settings: Any, tmp_path: Path) -> None:
    from worker.families.classification.compare import compare_job

    splits = _korean_splits(tmp_path / "dataset")
    job_id, model_id, tuned_dir = _rows(tmp_path, tmp_path / "dataset", HATE_LABELS)
    report = compare_job(job_id, model_id)

    assert set(report["splits"]) == {"validation", "test"}
    assert report["primary_metric"] == "f1_macro" and report["greater_is_better"] is True
    train_texts, train_labels = splits["train"]
    vectorizer = TfidfVectorizer(**TFIDF).fit(train_texts)
    linear = LogisticRegression(**LOGISTIC).fit(vectorizer.transform(train_texts), train_labels)
    majority_class = np.bincount(train_labels, minlength=3).argmax()
    tuned = LoadedModel(tuned_dir, task="single_label", num_labels=3, max_seq_length=32)
    for split in ("validation", "test"):
        texts, truth = splits[split]
        figures = report["splits"][split]
        assert figures["rows"] == len(texts) == 20
        expected = {
            "majority": np.full(len(texts), majority_class),
            "tfidf": linear.predict(vectorizer.transform(texts)),
            "tuned": np.asarray(tuned.forward(tuned.encode(texts))).argmax(axis=1),
        }
        for name, predicted in expected.items():
            got = figures[name]
            assert got["accuracy"] == pytest.approx(accuracy_score(truth, predicted)), name
            assert got["f1_macro"] == pytest.approx(f1_score(truth, predicted, average="macro",
                                                             labels=[0, 1, 2], zero_division=0)), name
            # As complete as the training loop's evaluation: per class and the confusion matrix.
            matrix = confusion_matrix(truth, predicted, labels=[0, 1, 2]).tolist()
            assert got["confusion_matrix"]["matrix"] == matrix
            assert set(got["per_class"]) == set(HATE_LABELS)
            assert got["loss"] > 0
        for name in ("majority", "tfidf"):
            assert figures[f"delta_vs_{name}"]["f1_macro"] == pytest.approx(
                figures["tuned"]["f1_macro"] - figures[name]["f1_macro"], abs=1e-6)
        # Every row where the two disagree is a candidate (at most EXAMPLES_SHOWN are listed).
        differ = {texts[i][:300] for i in np.flatnonzero(expected["tfidf"] != expected["tuned"])}
        shown = figures["disagreements_with_tfidf"]
        assert len(shown) == min(EXAMPLES_SHOWN, len(differ))
        assert {example["text"] for example in shown} <= differ
        assert all(example["tfidf"] != example["tuned"] for example in shown)
    assert report["baselines"]["tfidf"]["fit_rows"] == 80
    assert report["baselines"]["tfidf"]["parameters"] == linear.coef_.size + linear.intercept_.size
    assert report["parameters"] == sum(p.numel() for p in tuned.model.parameters())

    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.comparison == report
        events = session.query(JobEvent).filter(JobEvent.job_id == job_id).all()
        points = session.query(MetricPoint).filter(MetricPoint.job_id == job_id).all()
    assert [e.kind for e in events] == ["comparison"]
    assert "tfidf" in events[0].message and "majority" in events[0].message
    # The final model's test figures are a metric point too, at the job's final step.
    assert [(p.kind, p.step) for p in points] == [("test", 7)]
    assert points[0].values == report["splits"]["test"]["tuned"]

    # Recomputing replaces the test point rather than adding one.
    compare_job(job_id, model_id)
    with session_scope() as session:
        assert session.query(MetricPoint).filter(MetricPoint.job_id == job_id).count() == 1


def test_multi_label_baselines_are_one_vs_rest_and_the_label_prior(settings: Any, tmp_path: Path) -> None:
    from worker.families.classification.compare import compare_job

    dataset_dir = write_dataset(tmp_path / "dataset", 60, 30, multi_label=True, seed=5)
    thresholds = {"sports": 0.3, "politics": 0.5, "tech": 0.7}
    job_id, model_id, tuned_dir = _rows(tmp_path, dataset_dir, TOPICS, multi_label=True,
                                        thresholds=thresholds)
    report = compare_job(job_id, model_id)

    assert set(report["splits"]) == {"validation"}  # no test split in this dataset
    train = pq.read_table(dataset_dir / "train.parquet").to_pydict()
    valid = pq.read_table(dataset_dir / "validation.parquet").to_pydict()

    def hot(rows: list[list[int]]) -> np.ndarray:
        out = np.zeros((len(rows), 3), dtype=int)
        for i, positives in enumerate(rows):
            out[i, positives] = 1
        return out

    train_y, valid_y = hot(train["label"]), hot(valid["label"])
    vectorizer = TfidfVectorizer(**TFIDF).fit(train["text"])
    linear = OneVsRestClassifier(LogisticRegression(**LOGISTIC))
    linear.fit(vectorizer.transform(train["text"]), train_y)
    at_half = (linear.predict_proba(vectorizer.transform(valid["text"])) >= 0.5).astype(int)
    figures = report["splits"]["validation"]
    assert figures["tfidf"]["f1_macro_at_0_5"] == pytest.approx(
        f1_score(valid_y, at_half, average="macro", zero_division=0))
    # The prior: each label's train rate, the same for every row.
    rates = train_y.mean(axis=0)
    prior_at_half = np.tile(rates >= 0.5, (len(valid_y), 1)).astype(int)
    assert figures["majority"]["f1_macro_at_0_5"] == pytest.approx(
        f1_score(valid_y, prior_at_half, average="macro", zero_division=0))
    # On the validation rows, where thresholds are tuned, every model is scored cross-fitted:
    # each row decided at thresholds tuned on the other half of the rows, never on itself.
    tuned = LoadedModel(tuned_dir, task="multi_label", num_labels=3, max_seq_length=32)
    decided = cross_fitted_predictions(np.asarray(tuned.forward(tuned.encode(valid["text"]))), valid_y)
    assert figures["tuned"]["f1_macro"] == pytest.approx(
        f1_score(valid_y, decided, average="macro", zero_division=0))
    assert "cross-fitted" in figures["tuned"]["threshold_evaluation"]
    for j, name in enumerate(TOPICS):
        label = figures["tuned"]["per_label"][name]
        assert label["support"] == int(valid_y[:, j].sum())
        assert label["recall"] == pytest.approx(
            float(decided[valid_y[:, j] == 1, j].mean()) if valid_y[:, j].any() else 0.0)
    assert set(figures["tfidf"]["per_label"]) == set(TOPICS)
    assert 0 <= figures["tfidf"]["hamming_loss"] <= 1


def test_a_class_missing_from_train_and_a_single_class_train(tmp_path: Path) -> None:
    from worker.families.classification.baselines import fit_baselines

    texts = ["좋아요 정말", "최고의 영화", "별로였다", "다시 볼래요", "추천합니다", "재미없다"]
    # Class 2 never occurs in train: it gets a zero column, the others still sum to one.
    fitted = fit_baselines(texts, np.array([0, 1, 0, 1, 0, 1]), {"validation": texts[:2]}, 3, False)
    for baseline in fitted.values():
        probs = baseline.probabilities["validation"]
        assert probs.shape == (2, 3) and np.all(probs[:, 2] == 0)
        assert probs.sum(axis=1) == pytest.approx([1.0, 1.0])
    single = fit_baselines(texts, np.zeros(6, dtype=int), {"validation": texts[:2]}, 3, False)
    assert single["tfidf"].error and "single class" in single["tfidf"].error
    assert single["tfidf"].probabilities == {}
