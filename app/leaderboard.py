"""An experiment's standing: its state, the leaderboard and the recommendation, from the rows
its jobs wrote (job fields, metric points, events, and each job's `comparison` with the
baselines). Pure functions over rows: no HTTP, no queries, no training code.

Every model of an experiment trained on the same stored split, and the baselines fit on that
split's train rows and were scored on the same validation and test rows as each tuned model
(worker/families/classification/compare.py), so one job's baselines stand for all of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from statistics import fmean
from typing import Any

from app.schemas.experiments import ExperimentJobPublic, LeaderboardRow, Recommendation
from core.jobstate import JobState
from core.tables import Experiment, Job, JobEvent, MetricPoint

BASELINES = ("tfidf", "majority")


def state_of(experiment: Experiment, jobs: Sequence[Job]) -> str:
    states = {JobState(job.state) for job in jobs}
    if JobState.RUNNING in states:
        return JobState.RUNNING
    if JobState.QUEUED in states:
        return JobState.QUEUED
    if experiment.cancel_requested or states == {JobState.CANCELLED}:
        return JobState.CANCELLED
    return JobState.SUCCEEDED if JobState.SUCCEEDED in states else JobState.FAILED


def progress_of(jobs: Sequence[Job]) -> float:
    return fmean(job.progress or 0.0 for job in jobs) if jobs else 0.0


def job_rows(experiment: Experiment, jobs: Sequence[Job]) -> list[ExperimentJobPublic]:
    return [ExperimentJobPublic(base_model=_name(experiment, job), job_id=job.id, state=job.state,  # type: ignore[arg-type]
                                progress=job.progress, step=job.step, total_steps=job.total_steps,
                                eta_s=job.eta_s, error=job.error, model_id=job.model_id) for job in jobs]


def _name(experiment: Experiment, job: Job) -> str:
    """The base model as the user named it in the experiment (a job records a resolved path)."""
    if experiment.search is not None:
        for name, (base_model, _) in experiment.search["resolved"].items():
            if base_model == job.base_model:
                return str(name)
        return job.base_model
    if job.id in experiment.job_ids:
        return str(experiment.base_models[experiment.job_ids.index(job.id)])
    return job.base_model


def _scalars(figures: dict[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (figures or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())  # both zone-aware (UtcDateTime), on SQLite too


def leaderboard(experiment: Experiment, jobs: Sequence[Job], points: Sequence[MetricPoint],
                events: Sequence[JobEvent], greater_is_better: bool) -> tuple[list[LeaderboardRow],
                                                                              dict[str, Any] | None]:
    """(rows ranked by the primary metric on validation, the baselines' description and figures)."""
    metric = experiment.primary_metric
    by_job: dict[str, dict[str, list[MetricPoint]]] = defaultdict(lambda: defaultdict(list))
    for point in points:
        by_job[point.job_id][point.kind].append(point)
    started: dict[str, datetime] = {}
    finished: dict[str, datetime] = {}
    for event in events:
        if event.kind == "started":
            started.setdefault(event.job_id, event.time)
        elif event.kind == "finished":
            finished[event.job_id] = event.time

    rows: list[LeaderboardRow] = []
    baselines: dict[str, Any] | None = None
    for job in jobs:
        comparison = job.comparison or {}
        splits = comparison.get("splits") or {}
        evals, trains = by_job[job.id]["eval"], by_job[job.id]["train"]
        validation = _scalars((splits.get("validation") or {}).get("tuned"))
        if not validation and evals:
            # No comparison yet (training, or it failed): the best evaluation so far.
            scored = [p for p in evals if isinstance(p.values.get(metric), int | float)]
            if scored:
                pick = max if greater_is_better else min
                validation = _scalars(pick(scored, key=lambda p: p.values[metric]).values)
        speeds = [p.values["samples_per_second"] for p in trains
                  if isinstance(p.values.get("samples_per_second"), int | float)]
        rows.append(LeaderboardRow(
            kind="model", name=_name(experiment, job), job_id=job.id, model_id=job.model_id, state=job.state,
            validation=validation, test=_scalars((splits.get("test") or {}).get("tuned")) or None,
            training_time_s=_seconds(started.get(job.id), finished.get(job.id)),
            samples_per_second=fmean(speeds) if speeds else None, peak_memory_mb=job.peak_memory_mb,
            parameters=comparison.get("parameters"),
            fit=evals[-1].values.get("fit") if evals else None,
            trial=job.search_trial,
            search_parameters={k: job.hyperparameters.get(k) for k in experiment.search["space"]
                               if k in job.hyperparameters} if experiment.search is not None else None,
        ))
        if baselines is None and comparison.get("baselines"):
            baselines = {"job_id": job.id, "about": comparison["baselines"],
                         "splits": {split: {name: figures[name] for name in BASELINES if name in figures}
                                    for split, figures in splits.items()}}
    if baselines is not None:
        for name in BASELINES:
            about = baselines["about"].get(name) or {}
            validation = _scalars(baselines["splits"].get("validation", {}).get(name))
            if not validation and about.get("error"):
                continue
            rows.append(LeaderboardRow(
                kind="baseline", name=name, validation=validation,
                test=_scalars(baselines["splits"].get("test", {}).get(name)) or None,
                training_time_s=about.get("fit_seconds"), parameters=about.get("parameters")))
    return _ranked(rows, metric, greater_is_better), baselines


# Scores this close are a tie: the same figure computed on the same rows, up to float noise.
TIE_DIGITS = 9


def _rank_key(row: LeaderboardRow, metric: str, greater_is_better: bool) -> tuple[float, float, float]:
    """Best score first; a tie goes to the faster model, then the smaller one (unknown last):
    with equal quality, the cheaper model to train and to serve is the better choice."""
    score = round(row.validation[metric], TIE_DIGITS)
    seconds = row.training_time_s if row.training_time_s is not None else float("inf")
    parameters = float(row.parameters) if row.parameters is not None else float("inf")
    return (-score if greater_is_better else score, seconds, parameters)


def _ranked(rows: list[LeaderboardRow], metric: str, greater_is_better: bool) -> list[LeaderboardRow]:
    scored = [r for r in rows if metric in r.validation]
    scored.sort(key=lambda r: _rank_key(r, metric, greater_is_better))
    for rank, row in enumerate(scored, start=1):
        row.rank = rank
    return scored + [r for r in rows if metric not in r.validation]


def recommend(rows: Sequence[LeaderboardRow], metric: str, greater_is_better: bool,
              final: bool) -> Recommendation | None:
    """The best fine-tuned model by the primary metric on validation (the test split, when there
    is one, is reported, never used to choose), and how it stands against TF-IDF."""
    models = [r for r in rows
              if r.kind == "model" and r.state == JobState.SUCCEEDED and metric in r.validation]
    if not models:
        return None
    best = models[0]  # rows are ranked
    tfidf = next((r for r in rows if r.kind == "baseline" and r.name == "tfidf"), None)
    value = best.validation[metric]
    test = (best.test or {}).get(metric)
    tfidf_value = tfidf.validation.get(metric) if tfidf else None
    tfidf_test = (tfidf.test or {}).get(metric) if tfidf else None
    margin = beats = None
    if tfidf_value is not None:
        margin = value - tfidf_value if greater_is_better else tfidf_value - value
        beats = margin > 0
    message = _message(best, metric, value, test, tfidf_value, tfidf_test, margin, final)
    return Recommendation(model_id=best.model_id, base_model=best.name, job_id=str(best.job_id),
                          metric=metric, validation=value, test=test, tfidf_validation=tfidf_value,
                          tfidf_test=tfidf_test,
                          margin_over_tfidf=margin, beats_tfidf=beats, final=final, message=message)


def _message(best: LeaderboardRow, metric: str, value: float, test: float | None, tfidf: float | None,
             tfidf_test: float | None, margin: float | None, final: bool) -> str:
    on_test = f" ({test:.4f} on test)" if test is not None else ""
    head = "" if final else "So far (some jobs are still running): "
    if margin is None or tfidf is None:
        return (f"{head}Use {best.model_id} ({best.name}): {metric} {value:.4f} on validation{on_test}. "
                "There is no TF-IDF baseline to compare with (it is made for classification data, and "
                "needs two classes in the train split).")
    tfidf_on_test = f" ({tfidf_test:.4f} on test)" if tfidf_test is not None else ""
    if margin > 0:
        return (f"{head}Use {best.model_id} ({best.name}): {metric} {value:.4f} on validation{on_test}, "
                f"{margin:.4f} better than the TF-IDF + logistic regression baseline "
                f"({tfidf:.4f}{tfidf_on_test}).")
    return (f"{head}No fine-tuned model beats the TF-IDF + logistic regression baseline on {metric}: "
            f"the best, {best.model_id} ({best.name}), has {value:.4f} on validation{on_test} against "
            f"{tfidf:.4f}{tfidf_on_test}. Fine-tuning bought nothing a linear model does not give here: "
            "try a base model made for the data's language, more epochs or more data.")
