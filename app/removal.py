"""Deleting a job or a tuned model: its rows, its files and the copies the API holds loaded.

DELETE /models/{id}, DELETE /jobs/{id} (with or without its model) and DELETE /experiments/{id}
(each of its jobs) all go through here, so a deletion removes the same things whichever route
asks. No HTTP: a model that a queued or running job trains from raises `ModelInUse`, whose text
the route sends as the 409's detail.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.crud import jobs as jobs_crud
from app.crud import models as models_crud
from app.serving.generations import Generations, checkpoint_runtime_id
from app.serving.predictor import Predictor
from core import store
from core.settings import Settings
from core.tables import Job, TunedModel

log = logging.getLogger("tuneserve.api")


class ModelInUse(Exception):
    """A queued or running job continues training from the model, so it must stay."""

    def __init__(self, model_id: str, users: list[str]) -> None:
        super().__init__(f"model {model_id!r} is the base model of job(s) {', '.join(users)}; cancel them "
                         "or wait for them to finish before deleting it")
        self.model_id, self.users = model_id, users


def jobs_training_from(session: Session, *, model_id: str | None) -> list[str]:
    """The queued or running jobs that train from the model, each as "id (state)"."""
    if model_id is None:
        return []
    return [f"{job.id} ({job.state})"
            for job in models_crud.active_jobs_from_model(session=session, model_id=model_id)]


class Removal:
    """The things a deletion reaches, for one request: its session, the store, the loaded copies."""

    def __init__(self, session: Session, settings: Settings, predictor: Predictor,
                 generations: Generations) -> None:
        self.session, self.settings = session, settings
        self.predictor, self.generations = predictor, generations

    async def remove_model(self, model: TunedModel) -> None:
        """Row, files (when inside the store) and loaded copies; `ModelInUse` while a job trains
        from it."""
        model_id = model.id
        users = await run_in_threadpool(jobs_training_from, self.session, model_id=model_id)
        if users:
            raise ModelInUse(model_id, users)
        path = model.path
        await run_in_threadpool(models_crud.delete_model, session=self.session, model=model)
        self.predictor.evict(model_id)
        self.generations.evict(model_id)  # a chat model's adapter leaves its shared base
        directory = _owned_dir(self.settings, path)
        if directory is not None:
            await run_in_threadpool(shutil.rmtree, directory, True)
        else:
            log.warning("model %s deleted; its files at %s lie outside the store and were kept",
                        model_id, path)

    async def remove_job(self, job: Job, *, delete_model: bool) -> None:
        """Rows, files and (when asked) the tuned model of a job that has stopped."""
        model = self.session.get(TunedModel, job.model_id) if job.model_id else None
        if delete_model and model is not None:
            await self.remove_model(model)
        job_id = job.id
        checkpoints = await run_in_threadpool(jobs_crud.list_checkpoints, self.session, job_id=job_id)
        for row in checkpoints:
            self.generations.evict(checkpoint_runtime_id(job_id, row.step))  # one /v1 served
        await run_in_threadpool(_delete_job_rows, self.session, job)
        await run_in_threadpool(shutil.rmtree, store.job_dir(self.settings.models_dir, job_id), True)


def _owned_dir(settings: Settings, path: str) -> Path | None:
    """The model's directory if it lies inside the store: deleting a model never removes
    files it merely points at elsewhere."""
    directory = Path(path).resolve()
    models_root = (Path(settings.models_dir) / "models").resolve()
    return directory if directory.is_relative_to(models_root) and directory != models_root else None


def _delete_job_rows(session: Session, job: Job) -> None:
    jobs_crud.delete_job(session, job=job)
    session.commit()
