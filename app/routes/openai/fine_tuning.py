"""/v1/fine_tuning/jobs: OpenAI's fine-tuning API as a view over tuneserve's own jobs. A job made
here is an ordinary job (POST /jobs makes it, the same worker trains it, /jobs and the dashboard
show it); what only OpenAI's API speaks of (suffix, metadata, the file ids, pause, what "auto"
became) sits in the job's own columns. Every chat job, however it was made, is listed here.

Pause is a cancel that is shown as `paused`; resume continues a paused, cancelled or failed job
from its last checkpoint, as POST /jobs/{id}/resume does.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, HTTPException, Query
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.auth import Principal
from app.crud import datasets as dataset_crud
from app.crud import jobs as job_crud
from app.crud import openai as v1_crud
from app.deps import Authenticated, PrincipalDep, SessionDep, SettingsDep
from app.ingest.storage import remove_dataset, write_dataset
from app.routes import jobs as native
from app.routes.openai import hyperparameters as auto
from app.routes.openai.errors import OpenAIError
from app.routes.openai.files import get_file_or_404
from app.routes.openai.view import checkpoint, fine_tuning_job, job_events, page
from app.schemas.common import MAX_ID_CHARS, JobIdPath
from app.schemas.jobs import JobCreate
from app.schemas.openai import (
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobCreate,
    FineTuningJobEventList,
    FineTuningJobList,
    OpenAIErrorOut,
)
from core import jobstate
from core.dataset import TRAIN, VALIDATION, split_path
from core.jobspec import Hyperparameters
from core.settings import Settings
from core.tables import Dataset, Job, new_id

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["openai"], dependencies=[Authenticated],
                   responses={code: {"model": OpenAIErrorOut} for code in (400, 401, 404, 409, 429, 503)})
After = Annotated[str | None, Query(max_length=MAX_ID_CHARS, description="The last id of the previous page.")]


def _view(session: SessionDep, job: Job) -> FineTuningJob:
    return fine_tuning_job(job, default_learning_rate=auto.default_learning_rate(),
                           tokens_per_epoch=v1_crud.tokens_per_epoch(session, job_id=job.id))


def _get_job_or_404(session: SessionDep, principal: Principal, job_id: str) -> Job:
    job = principal.visible(job_crud.get_job(session, job_id=job_id))
    if job is None or job.task != "chat":
        raise OpenAIError(404, f"Could not find fine-tuning job {job_id!r}; GET /v1/fine_tuning/jobs lists "
                               "them.", param="fine_tuning_job_id", code="fine_tuning_job_not_found")
    return job


def _chat_file(session: SessionDep, principal: Principal, file_id: str, param: str) -> Dataset:
    dataset = get_file_or_404(session, principal, file_id, param=param)
    if dataset.task != "chat":
        raise OpenAIError(400, f"File {file_id} holds {dataset.task} data, not conversations: fine-tuning "
                               "here trains chat models; upload chat JSONL with purpose=fine-tune.",
                          param=param, code="invalid_file")
    return dataset


def _all_rows(dataset: Dataset) -> pa.Table:
    directory = Path(dataset.storage_path)
    parts = [pq.read_table(split_path(directory, s)) for s in (TRAIN, VALIDATION)
             if split_path(directory, s).is_file()]
    return pa.concat_tables(parts, promote_options="default")


def _combined_dataset(session: SessionDep, settings: Settings, principal: Principal, training: Dataset,
                      validation: Dataset) -> Dataset:
    """A dataset whose train split is every row of the training file and whose validation split is
    every row of the validation file (each file alone was stored with a split carved out)."""
    dataset_id = new_id("ds")
    directory = settings.datasets_dir / dataset_id
    tables = {TRAIN: _all_rows(training), VALIDATION: _all_rows(validation)}
    write_dataset(directory, tables)
    try:
        dataset = dataset_crud.create_dataset(session, values={
            "id": dataset_id, "tenant_id": principal.tenant_id,
            "name": f"{training.name} + {validation.name}"[:255], "task": "chat", "format": training.format,
            "encoding": training.encoding, "text_column": training.text_column, "label_columns": [],
            "labels": [], "num_rows": {s: t.num_rows for s, t in tables.items()}, "label_distribution": {},
            "rejected_rows": [], "warnings": [],
            "report": {**training.report, "split": {"method": "validation_file", "training_file": training.id,
                                                    "validation_file": validation.id}},
            "sha256": training.sha256, "size_bytes": training.size_bytes + validation.size_bytes,
            "storage_path": str(directory.resolve()),
        })
        session.commit()
    except BaseException:
        session.rollback()
        remove_dataset(directory)
        raise
    return dataset


def _native_error(error: HTTPException) -> OpenAIError:
    message = str(error.detail)
    param = "model" if "base_model" in message else None
    return OpenAIError(error.status_code, message.replace("base_model", "model"), param=param,
                       headers=getattr(error, "headers", None))


@router.post("", response_model=FineTuningJob)
def create_fine_tuning_job(job_in: FineTuningJobCreate, session: SessionDep, settings: SettingsDep,
                           principal: PrincipalDep) -> FineTuningJob:
    """Start a supervised fine-tuning job of `model` on `training_file`.

    `learning_rate_multiplier` "auto" (the default) trains with learning_rate "auto": tuneserve's
    range test picks the rate on the worker before the first step. The job object reports the
    multiplier "auto" until then and the chosen rate over the family's default (chat: 2e-4) after,
    as OpenAI reports a resolved hyperparameter; a number is that multiple of the default, no test.
    """
    training = _chat_file(session, principal, job_in.training_file, "training_file")
    validation = (_chat_file(session, principal, job_in.validation_file, "validation_file")
                  if job_in.validation_file else None)
    n_train = training.num_rows.get(TRAIN, 0) + (training.num_rows.get(VALIDATION, 0) if validation else 0)
    requested = job_in.supervised_hyperparameters()
    resolved = auto.resolve(requested, n_train=n_train, default_learning_rate=auto.default_learning_rate())
    try:
        hyperparameters = Hyperparameters(**auto.native_hyperparameters(resolved, job_in.seed))
    except ValidationError as e:
        raise OpenAIError(400, f"The hyperparameters cannot train: {e.errors()[0]['msg']}",
                          param="method.supervised.hyperparameters") from e
    dataset = training
    if validation is not None:
        dataset = _combined_dataset(session, settings, principal, training, validation)
    try:
        created = native.create_job(JobCreate(dataset_id=dataset.id, base_model=job_in.model,
                                              hyperparameters=hyperparameters), session, settings, principal)
    except HTTPException as e:
        if validation is not None:
            _drop_dataset(session, dataset)
        raise _native_error(e) from e
    job = session.get(Job, created.id)
    assert job is not None
    job.suffix, job.job_metadata = job_in.suffix, job_in.metadata
    job.training_file, job.validation_file = training.id, validation.id if validation else None
    job.fine_tuning = resolved.record(requested)
    if resolved.reasons:
        job_crud.add_event(session, job_id=job.id, kind="hyperparameters",
                           message="; ".join(f"{k} {v}" for k, v in resolved.reasons.items()))
    session.commit()
    return _view(session, job)


def _drop_dataset(session: SessionDep, dataset: Dataset) -> None:
    directory = Path(dataset.storage_path)
    dataset_crud.delete_dataset(session, dataset=dataset)
    session.commit()
    shutil.rmtree(directory, ignore_errors=True)


@router.get("", response_model=FineTuningJobList)
def list_fine_tuning_jobs(session: SessionDep, principal: PrincipalDep, after: After = None,
                          limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> FineTuningJobList:
    """Chat fine-tuning jobs, newest first (`after`: the last id of the previous page)."""
    rows, has_more = v1_crud.list_chat_jobs(session, principal=principal, after=after, limit=limit)
    return FineTuningJobList(data=[_view(session, r) for r in rows], has_more=has_more)


@router.get("/{fine_tuning_job_id}", response_model=FineTuningJob)
def retrieve_fine_tuning_job(fine_tuning_job_id: JobIdPath, session: SessionDep,
                             principal: PrincipalDep) -> FineTuningJob:
    """One fine-tuning job."""
    return _view(session, _get_job_or_404(session, principal, fine_tuning_job_id))


@router.post("/{fine_tuning_job_id}/cancel", response_model=FineTuningJob)
def cancel_fine_tuning_job(fine_tuning_job_id: JobIdPath, session: SessionDep, settings: SettingsDep,
                           principal: PrincipalDep) -> FineTuningJob:
    """Cancel a job: at once when queued, after the current optimizer step when running."""
    return _through_native(native.cancel_job, fine_tuning_job_id, session, settings, principal)


@router.post("/{fine_tuning_job_id}/pause", response_model=FineTuningJob)
def pause_fine_tuning_job(fine_tuning_job_id: JobIdPath, session: SessionDep,
                          principal: PrincipalDep) -> FineTuningJob:
    """Pause a job: it stops after the current optimizer step (its last checkpoint is where resume
    continues) and shows as paused."""
    job = _get_job_or_404(session, principal, fine_tuning_job_id)
    if jobstate.cancel_queued(session, job_id=job.id):
        job_crud.add_event(session, job_id=job.id, kind="paused", message="Paused before it started.")
    elif jobstate.request_cancel(session, job_id=job.id):
        job_crud.add_event(session, job_id=job.id, kind="pause_requested",
                           message="Pause requested; the worker stops after the current optimizer step.")
    else:
        session.refresh(job)
        raise OpenAIError(409, f"Job {job.id} is {job.state}; only a queued or running job can be paused.",
                          param="fine_tuning_job_id")
    job.paused = True
    session.commit()
    session.refresh(job)
    return _view(session, job)


@router.post("/{fine_tuning_job_id}/resume", response_model=FineTuningJob)
def resume_fine_tuning_job(fine_tuning_job_id: JobIdPath, session: SessionDep, settings: SettingsDep,
                           principal: PrincipalDep) -> FineTuningJob:
    """Resume a paused (or cancelled, or failed) job from its last checkpoint."""
    return _through_native(native.resume_job, fine_tuning_job_id, session, settings, principal)


def _through_native(action: Callable[[str, Session, Settings, Principal], object], job_id: str,
                    session: Session, settings: Settings, principal: Principal) -> FineTuningJob:
    """Cancel or resume through the native route's rules (its refusals in OpenAI's error shape);
    either way the job is no longer paused."""
    job = _get_job_or_404(session, principal, job_id)
    try:
        action(job.id, session, settings, principal)
    except HTTPException as e:
        raise _native_error(e) from e
    job.paused = False
    session.commit()
    session.refresh(job)
    return _view(session, job)


@router.get("/{fine_tuning_job_id}/events", response_model=FineTuningJobEventList)
def list_fine_tuning_events(fine_tuning_job_id: JobIdPath, session: SessionDep, principal: PrincipalDep,
                            after: After = None,
                            limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> FineTuningJobEventList:
    """The job's events, newest first: `message` events (the native event log) and `metrics`
    events (each train and validation point)."""
    job = _get_job_or_404(session, principal, fine_tuning_job_id)
    events = job_events(job_crud.list_events(session, job_id=job.id),
                        job_crud.list_metric_points(session, job_id=job.id), job.total_steps)
    return FineTuningJobEventList(**_paged(events, after, limit))


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=FineTuningJobCheckpointList)
def list_fine_tuning_checkpoints(fine_tuning_job_id: JobIdPath, session: SessionDep, principal: PrincipalDep,
                                 after: After = None, limit: Annotated[int, Query(ge=1, le=1000)] = 10,
                                 ) -> FineTuningJobCheckpointList:
    """The job's checkpoints, newest first, with their train and validation metrics."""
    job = _get_job_or_404(session, principal, fine_tuning_job_id)
    rows = [checkpoint(r, job) for r in reversed(job_crud.list_checkpoints(session, job_id=job.id))]
    paged = _paged(rows, after, limit)
    data = paged["data"]
    return FineTuningJobCheckpointList(**paged, first_id=data[0].id if data else None,
                                       last_id=data[-1].id if data else None)


def _paged(items: list[Any], after: str | None, limit: int) -> dict[str, Any]:
    found = page(items, after=after, limit=limit)
    if found is None:
        raise OpenAIError(400, f"after={after!r} names no item of this list.", param="after")
    data, has_more = found
    return {"data": data, "has_more": has_more}
