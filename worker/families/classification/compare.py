"""The tuned model beside cheap baselines, on the same held-out rows, with the same metrics.

The baselines (baselines.py beside this file: the label prior, and TF-IDF character n-grams +
logistic regression) fit on the job's train split in seconds; the tuned model is scored as /predict
scores it. All three get the same metrics as the training loop's evaluation (per class and the
confusion matrix included), on every row of the validation split and of the test split when the
dataset has one. The tuned model's test figures are also recorded as a `test` metric point.

The base model with a freshly initialized head is no longer compared: it never saw these labels,
so its figures sat near chance and told the user nothing they could act on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from sqlalchemy import delete

from core.catalogue import LOWER_IS_BETTER
from core.dataset import LABEL, SPLITS, TEXT, TRAIN, split_path
from core.db import session_scope
from core.serving.decode import DEFAULT_THRESHOLD
from core.serving.runtime import LoadedModel
from core.tables import Job, JobEvent, MetricPoint, utcnow
from worker.families.classification.baselines import BASELINE_NAMES, fit_baselines, targets_matrix
from worker.families.classification.metrics import (
    cross_fitted_predictions,
    log_loss,
    multi_label_metrics,
    single_label_metrics,
    tune_thresholds,
)
from worker.families.comparison import compared_job

log = logging.getLogger("tuneserve.worker.families.classification.compare")

BATCH_SIZE = 32
EXAMPLES_SHOWN = 8
NOTE = ("The baselines fit on the train split and are scored on the same rows as the tuned model. "
        "`majority` predicts the label prior; `tfidf` is a linear model over character n-grams. "
        "A fine-tune that does not beat `tfidf` bought nothing a linear model would not give.")


def compare_job(job_id: str, model_id: str | None = None) -> dict[str, Any]:
    """Score the job's tuned model (`model_id`, default: the job's) and the baselines on the
    validation and test splits; store the report on the job and the test figures as a metric point."""
    compared = compared_job(job_id, model_id)
    model_id = compared.model_id
    tuned_path, labels, task = compared.tuned_path, compared.labels, compared.task
    thresholds = compared.thresholds
    max_len = compared.max_seq_length or 128
    dataset_dir, base_model = compared.dataset_dir, compared.base_model
    primary = compared.best_metric_name if compared.best_metric_name not in (None, "loss") else "f1_macro"

    multi = task == "multi_label"
    rows = {split: _read_split(split_path(dataset_dir, split), len(labels), multi)
            for split in SPLITS if split_path(dataset_dir, split).is_file()}
    train_texts, train_truth = rows.pop(TRAIN)
    baselines = fit_baselines(train_texts, train_truth, {s: texts for s, (texts, _) in rows.items()},
                              len(labels), multi)
    model = LoadedModel(tuned_path, task=task, num_labels=len(labels), max_seq_length=max_len)
    tuned_probs = {split: _scores(model, texts) for split, (texts, _) in rows.items()}
    # Multi-label decisions. On test rows: the tuned model keeps the thresholds it was tuned to on
    # validation; each baseline gets its own, tuned the same way on the same validation rows. On
    # the validation rows themselves every model is cross-fitted (each row decided at thresholds
    # tuned on the other half), as the training loop's evaluation is: thresholds tuned on the
    # rows they score would flatter the figures.
    cuts = {"tuned": [float(thresholds.get(name, DEFAULT_THRESHOLD)) for name in labels]}
    for name, baseline in baselines.items():
        validation = baseline.probabilities.get("validation")
        if multi and validation is not None and "validation" in rows:
            cuts[name] = tune_thresholds(validation, rows["validation"][1])

    report: dict[str, Any] = {
        "model_id": model_id, "base_model": base_model, "task": task, "primary_metric": primary,
        "greater_is_better": primary not in LOWER_IS_BETTER,
        "parameters": sum(p.numel() for p in model.model.parameters()),
        "baselines": {name: b.describe() for name, b in baselines.items()},
        "note": NOTE, "splits": {},
    }
    for split, (texts, truth) in rows.items():
        probs = {"tuned": tuned_probs[split]}
        probs.update({name: b.probabilities[split] for name, b in baselines.items() if not b.error})
        tuned_here = multi and split == "validation"
        split_cuts = {name: None if tuned_here else cuts.get(name) for name in probs}
        figures = {name: _figures(p, truth, labels, multi, split_cuts[name]) for name, p in probs.items()}
        entry: dict[str, Any] = {"rows": len(texts), **figures}
        for name in BASELINE_NAMES:
            if name in figures:
                entry[f"delta_vs_{name}"] = _delta(figures["tuned"], figures[name])
        if "tfidf" in probs:
            entry["disagreements_with_tfidf"] = _disagreements(
                texts, truth, _decide(probs["tfidf"], truth, multi, split_cuts["tfidf"]),
                _decide(probs["tuned"], truth, multi, split_cuts["tuned"]), labels, multi)
        report["splits"][split] = entry
    report["created_at"] = utcnow().isoformat()
    _store(job_id, report)
    return report


def _store(job_id: str, report: dict[str, Any]) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.comparison = report
        test = report["splits"].get("test")
        # One `test` point per job, at the step the model was trained to; recomputing replaces it.
        session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.kind == "test"))
        if test is not None:
            session.add(MetricPoint(job_id=job_id, kind="test", step=job.step, epoch=job.epoch,
                                    values=test["tuned"]))
        session.add(JobEvent(job_id=job_id, kind="comparison", message=_summary(report), data=None))


def _summary(report: dict[str, Any]) -> str:
    split = "validation" if "validation" in report["splits"] else next(iter(report["splits"]), None)
    if split is None:
        return "Nothing to compare: the dataset has no validation or test split."
    metric, figures = report["primary_metric"], report["splits"][split]
    scored = ", ".join(f"{name} {figures[name][metric]:.3f}" for name in ("tuned", *BASELINE_NAMES)
                       if name in figures and metric in figures[name])
    return f"On {split} ({figures['rows']} rows), {metric}: {scored}."


def _read_split(path: Path, num_labels: int, multi: bool) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(path, columns=[TEXT, LABEL]).to_pydict()
    texts = ["" if t is None else str(t) for t in table[TEXT]]
    return texts, targets_matrix(table[LABEL], num_labels, multi)


def _scores(model: LoadedModel, texts: list[str]) -> np.ndarray:
    """Probabilities per label, scored exactly as /predict scores them, in bounded batches."""
    rows: list[list[float]] = []
    for start in range(0, len(texts), BATCH_SIZE):
        rows.extend(model.forward(model.encode(texts[start:start + BATCH_SIZE])))
    return np.asarray(rows, dtype=np.float64).reshape(len(texts), -1)


def _figures(probs: np.ndarray, truth: np.ndarray, labels: list[str], multi: bool,
             thresholds: list[float] | None) -> dict[str, Any]:
    figures = (multi_label_metrics(probs, truth, labels, thresholds) if multi
               else single_label_metrics(probs, truth, labels))
    figures["loss"] = log_loss(probs, truth, multi)
    return figures


def _delta(tuned: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    return {k: round(v - other[k], 6) for k, v in tuned.items()
            if isinstance(v, float) and isinstance(other.get(k), float)}


def _decide(probs: np.ndarray, truth: np.ndarray, multi: bool, thresholds: list[float] | None) -> np.ndarray:
    """Decisions as _figures scores them: multi-label without thresholds is cross-fitted."""
    if not multi:
        return probs.argmax(axis=1)
    if thresholds is None:
        return cross_fitted_predictions(probs, truth).astype(np.int64)
    return (probs >= np.asarray(thresholds)).astype(np.int64)


def _names(row: np.ndarray | np.int64, labels: list[str], multi: bool) -> str | list[str]:
    if multi:
        return [labels[i] for i in np.flatnonzero(row)]
    return labels[int(row)]


def _disagreements(texts: list[str], truth: np.ndarray, tfidf: np.ndarray, tuned: np.ndarray,
                   labels: list[str], multi: bool) -> list[dict[str, Any]]:
    differ = [i for i in range(len(texts)) if not np.array_equal(tfidf[i], tuned[i])]
    # Where the fine-tune is right and the linear model is not, first: that is what it bought.
    differ.sort(key=lambda i: not np.array_equal(tuned[i], truth[i]))
    return [{"text": texts[i][:300], "label": _names(truth[i], labels, multi),
             "tfidf": _names(tfidf[i], labels, multi), "tuned": _names(tuned[i], labels, multi),
             "tuned_correct": bool(np.array_equal(tuned[i], truth[i]))}
            for i in differ[:EXAMPLES_SHOWN]]
