"""The /jobs resource: start, watch and cancel fine-tuning jobs."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from starlette.concurrency import run_in_threadpool

from app.auth import Principal
from app.base_models import UnusableBaseModel, resolve_base_model
from app.crud import jobs as crud
from app.deps import Authenticated, PrincipalDep, RemovalDep, SessionDep, SettingsDep
from app.removal import ModelInUse
from app.schemas.common import MAX_INT32, IdQuery, JobIdPath, Limit, Offset, errors
from app.schemas.jobs import (
    CheckpointPublic,
    JobCreate,
    JobEventPublic,
    JobPublic,
    JobsPublic,
)
from core import catalogue, jobstate, store
from core.jobstate import ACTIVE_STATES, RESUMABLE_STATES, JobState
from core.queue import COMPARE_TASK, TRAIN_TASK, enqueue
from core.settings import Settings
from core.tables import Dataset, Job, TunedModel

log = logging.getLogger("tuneserve.api.jobs")
router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Authenticated],
                   responses=errors(400, 401, 404, 409, 413, 422, 429, 503))


def _get_job_or_404(session: SessionDep, principal: Principal, job_id: str) -> Job:
    job = principal.visible(crud.get_job(session, job_id=job_id))
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No job with id {job_id!r}; GET /jobs lists them.")
    return job


@router.post("", response_model=JobPublic, status_code=status.HTTP_201_CREATED)
def create_job(job_in: JobCreate, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> Job:
    """Queue a fine-tuning job on a dataset."""
    dataset = principal.visible(session.get(Dataset, job_in.dataset_id))
    if dataset is None:
        raise HTTPException(404, f"No dataset with id {job_in.dataset_id!r}; upload one with POST /datasets.")
    if dataset.task not in catalogue.TRAINABLE_TASKS:
        raise HTTPException(422, f"Dataset {dataset.id} is a {dataset.task!r} dataset, which no task family "
                                 f"trains; trainable: {', '.join(sorted(catalogue.TRAINABLE_TASKS))}.")
    hp = catalogue.with_job_defaults(job_in.hyperparameters, dataset.task)
    allowed = catalogue.entry_for(dataset.task).metrics
    if hp.metric_for_best_model not in allowed:
        raise HTTPException(422, f"metric_for_best_model {hp.metric_for_best_model!r} does not exist for "
                                 f"{dataset.task} jobs; choose one of {sorted(allowed)}.")
    if dataset.task != "chat":
        chat_only = [k for k in catalogue.CHAT_ONLY_FIELDS if k in hp.model_fields_set]
        chat_only += ["finetuning"] if hp.finetuning == "lora" else []
        chat_only += ["quantization"] if hp.quantization in ("8bit", "4bit") else []
        if chat_only:
            raise HTTPException(422, f"{', '.join(chat_only)} apply to chat jobs only; dataset {dataset.id} "
                                     f"is {dataset.task} (classifiers are fully fine-tuned).")
    elif not job_in.base_model:
        raise HTTPException(422, "A chat job needs a causal language model as base_model (a Llama, Qwen, "
                                 "GPT-2 ... directory or hub name); the default MiniLM is an encoder and "
                                 "cannot generate text.")
    try:
        base_model, base_model_id = resolve_base_model(session, settings, principal, job_in.base_model)
    except UnusableBaseModel as exc:
        raise HTTPException(422, str(exc)) from exc
    active = crud.count_active_jobs(session, tenant_id=principal.tenant_id)
    if active >= settings.max_active_jobs_per_key:
        raise HTTPException(429, f"this key has {active} queued or running jobs; the limit is "
                                 f"{settings.max_active_jobs_per_key} (TUNESERVE_MAX_ACTIVE_JOBS_PER_KEY): "
                                 "wait for one to finish or cancel one, then retry",
                            headers={"Retry-After": "60"})
    job = crud.create_job(session, values={
        "dataset_id": dataset.id, "tenant_id": principal.tenant_id, "base_model": base_model,
        "base_model_id": base_model_id, "task": dataset.task, "best_metric_name": hp.metric_for_best_model,
        "hyperparameters": hp.model_dump(mode="json"),
    })
    session.commit()
    try:
        enqueue(TRAIN_TASK, job.id)
    except Exception as exc:
        log.exception("could not enqueue job %s", job.id)
        error = (f"The job could not be queued: the broker did not answer ({type(exc).__name__}). "
                 "Check GET /readyz and start the job again.")
        if jobstate.fail_queued(session, job_id=job.id, error=error, error_kind="environment"):
            crud.add_event(session, job_id=job.id, kind="failed", message=error)
        session.commit()
        raise HTTPException(503, f"The broker did not answer, so job {job.id} could not be queued; it is "
                                 "marked failed. Check GET /readyz, then start the job again.") from exc
    session.refresh(job)
    return job


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    state: JobState | None = None,
    dataset_id: IdQuery = None,
    experiment_id: IdQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> JobsPublic:
    """List jobs, newest first (`experiment_id`: the jobs of one experiment)."""
    rows, count = crud.list_jobs(session, principal=principal, state=state, dataset_id=dataset_id,
                                 experiment_id=experiment_id, limit=limit, offset=offset)
    return JobsPublic(data=[_public(session, settings, r) for r in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic)
def read_job(job_id: JobIdPath, session: SessionDep, settings: SettingsDep,
             principal: PrincipalDep) -> JobPublic:
    """One job: state, progress, step/total, ETA, micro-batch, accumulation, best metric, error."""
    return _public(session, settings, _get_job_or_404(session, principal, job_id))


def _public(session: SessionDep, settings: Settings, job: Job) -> JobPublic:
    """The job as the API shows it, with what it holds on disk: its checkpoints, and its tuned
    model while that is registered (a model kept after DELETE /jobs is the model's, not the job's)."""
    disk_bytes = store.dir_size_bytes(store.job_dir(settings.models_dir, job.id))
    model = session.get(TunedModel, job.model_id) if job.model_id else None
    if model is not None:
        disk_bytes += model.size_bytes
    newest = store.latest_resumable_checkpoint(store.checkpoints_dir(settings.models_dir, job.id))
    return JobPublic.model_validate(job).model_copy(update={
        "disk_bytes": disk_bytes, "resume_from_step": newest[0] if newest else None})


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: JobIdPath, session: SessionDep, settings: SettingsDep,
               principal: PrincipalDep) -> JobPublic:
    """Cancel a job: at once when queued, at the next optimizer step when running."""
    job = _get_job_or_404(session, principal, job_id)
    if jobstate.cancel_queued(session, job_id=job_id):
        crud.add_event(session, job_id=job_id, kind="cancelled", message="Cancelled before it started.")
    elif jobstate.request_cancel(session, job_id=job_id):
        crud.add_event(session, job_id=job_id, kind="cancel_requested",
                       message="Cancel requested; the worker stops after the current optimizer step.")
    else:
        session.refresh(job)
        raise HTTPException(409, f"Job {job_id} already ended ({job.state}); there is nothing to cancel.")
    session.commit()
    session.refresh(job)
    return _public(session, settings, job)


@router.post("/{job_id}/resume", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED)
def resume_job(job_id: JobIdPath, session: SessionDep, settings: SettingsDep,
               principal: PrincipalDep) -> JobPublic:
    """Queue a failed or cancelled job again: it continues from its last good checkpoint with the
    same effective batch and data order (from the start if it never saved one)."""
    job = _get_job_or_404(session, principal, job_id)
    if job.state not in RESUMABLE_STATES:
        raise HTTPException(409, f"Job {job_id} is {job.state}; only a failed or cancelled job can be "
                                 "resumed." + (" Start a new job (POST /jobs) to train again."
                                               if job.state == JobState.SUCCEEDED else ""))
    if job.dataset_id is None or session.get(Dataset, job.dataset_id) is None:
        raise HTTPException(409, f"Job {job_id}'s dataset was deleted, so it cannot continue; upload the "
                                 "data again and start a new job.")
    if job.base_model_id and session.get(TunedModel, job.base_model_id) is None:
        raise HTTPException(409, f"Job {job_id}'s base model {job.base_model_id} was deleted, so it "
                                 "cannot continue; start a new job from another model.")
    if not jobstate.requeue_to_resume(session, job_id=job_id):
        session.rollback()
        raise HTTPException(409, f"Job {job_id} changed state meanwhile; GET /jobs/{job_id} shows it.")
    where = store.latest_resumable_checkpoint(store.checkpoints_dir(settings.models_dir, job_id))
    crud.add_event(session, job_id=job_id, kind="resume_requested",
                   message=f"Resume requested; it continues from the checkpoint at step {where[0]}."
                   if where else "Resume requested; no checkpoint was saved, so it starts from step 0.")
    session.commit()
    try:
        enqueue(TRAIN_TASK, job_id)
    except Exception as exc:
        log.exception("could not enqueue job %s", job_id)
        error = ("The job could not be queued: the broker did not answer. Check GET /readyz, then "
                 "POST /jobs/{id}/resume again.")
        if jobstate.fail_queued(session, job_id=job_id, error=error, error_kind="environment"):
            crud.add_event(session, job_id=job_id, kind="failed", message=error)
        session.commit()
        raise HTTPException(503, f"The broker did not answer, so job {job_id} could not be queued; it is "
                                 "marked failed again. Check GET /readyz, then resume it again.") from exc
    session.refresh(job)
    return _public(session, settings, job)


@router.delete("/{job_id}", status_code=204, response_class=Response)
async def delete_job(
    job_id: JobIdPath, session: SessionDep, removal: RemovalDep, principal: PrincipalDep,
    delete_model: bool = Query(False, description="Also delete the job's tuned model (kept by default)."),
) -> Response:
    """Delete a finished job: its rows (events, metrics, checkpoints) and files. 409 while it is
    queued or running. Its tuned model stays registered unless `delete_model=true`."""
    job = await run_in_threadpool(_get_job_or_404, session, principal, job_id)
    if job.state in ACTIVE_STATES:
        raise HTTPException(409, f"Job {job_id} is {job.state}; cancel it first (POST /jobs/{job_id}/cancel) "
                                 "and delete it once it has stopped.")
    try:
        await removal.remove_job(job, delete_model=delete_model)
    except ModelInUse as exc:
        raise HTTPException(409, str(exc)) from exc
    return Response(status_code=204)


@router.get("/{job_id}/events", response_model=list[JobEventPublic])
def list_job_events(job_id: JobIdPath, session: SessionDep, principal: PrincipalDep,
                    since_id: int = Query(0, ge=0, le=MAX_INT32)) -> list[Any]:
    """The job's event log, oldest first (`since_id` returns only newer events)."""
    _get_job_or_404(session, principal, job_id)
    return list(crud.list_events(session, job_id=job_id, since_id=since_id))


@router.get("/{job_id}/metrics")
def read_job_metrics(
    job_id: JobIdPath, session: SessionDep, principal: PrincipalDep,
    kind: Literal["train", "eval", "test"] | None = None,
    since_step: int | None = Query(None, ge=0, le=MAX_INT32),
) -> dict[str, Any]:
    """Train and eval series, the final model's test figures, the best and final eval points, and
    the comparison with the majority and TF-IDF baselines on the same rows."""
    job = _get_job_or_404(session, principal, job_id)
    points = crud.list_metric_points(session, job_id=job_id, kind=kind, since_step=since_step)
    series: dict[str, list[dict[str, Any]]] = {"train": [], "eval": [], "test": []}
    for p in points:
        series.setdefault(p.kind, []).append({"step": p.step, "epoch": p.epoch, **p.values})
    metric = job.best_metric_name or "loss"
    greater_is_better = catalogue.greater_is_better(job.task, metric)
    return {**series, "summary": _summary(series["eval"], metric, greater_is_better),
            "comparison": job.comparison}


def _summary(evals: list[dict[str, Any]], metric: str, greater_is_better: bool) -> dict[str, Any]:
    scored = [e for e in evals if isinstance(e.get(metric), int | float)]
    best = None
    if scored:
        pick = max if greater_is_better else min
        best = pick(scored, key=lambda e: e[metric])
    return {"metric": metric, "greater_is_better": greater_is_better,
            "best": best, "final": evals[-1] if evals else None}


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointPublic])
def list_job_checkpoints(job_id: JobIdPath, session: SessionDep, principal: PrincipalDep) -> list[Any]:
    """Checkpoints with their eval metrics; `available` is false once pruned from disk."""
    _get_job_or_404(session, principal, job_id)
    return list(crud.list_checkpoints(session, job_id=job_id))


@router.post("/{job_id}/compare", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED)
def compare_job(job_id: JobIdPath, session: SessionDep, settings: SettingsDep,
                principal: PrincipalDep) -> JobPublic:
    """Recompute the comparison of a succeeded job with its baselines (the result lands in /metrics)."""
    job = _get_job_or_404(session, principal, job_id)
    if job.state != JobState.SUCCEEDED or not job.model_id:
        raise HTTPException(409, f"Job {job_id} is {job.state}; only a succeeded job has a tuned model "
                                 "to compare with the baselines.")
    if job.dataset_id is None or session.get(TunedModel, job.model_id) is None:
        raise HTTPException(409, f"Job {job_id}'s dataset or tuned model was deleted; there is nothing "
                                 "left to compare.")
    crud.add_event(session, job_id=job_id, kind="comparison_requested",
                   message="Comparison with the baselines queued.")
    session.commit()
    try:
        enqueue(COMPARE_TASK, job_id)
    except Exception as exc:
        raise HTTPException(503, "The broker did not answer; check GET /readyz and try again.") from exc
    return _public(session, settings, job)
