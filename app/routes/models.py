"""The /models resource: the registry of tuned models, deletion and export."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.auth import Principal
from app.crud import models as crud
from app.deps import Authenticated, PredictorDep, PrincipalDep, SessionDep, SettingsDep
from app.models import TunedModel
from app.schemas.common import Limit, ModelIdPath, Offset, errors
from app.schemas.models import ModelPublic, ModelsPublic
from app.serving.export import iter_targz
from app.settings import Settings

router = APIRouter(prefix="/models", tags=["models"], dependencies=[Authenticated],
                   responses=errors(401, 404, 409, 422))
log = logging.getLogger("tuneserve.api")


def _get_or_404(session: Any, principal: Principal, model_id: str) -> TunedModel:
    model = principal.visible(crud.get_model(session=session, model_id=model_id))
    if model is None:
        raise HTTPException(status_code=404, detail=f"model {model_id!r} not found")
    return model


@router.get("", response_model=ModelsPublic)
def list_models(
    session: SessionDep, principal: PrincipalDep,
    skip: Offset = 0, limit: Limit = 100,
) -> Any:
    """Tuned models, newest first."""
    rows, count = crud.list_models(session=session, principal=principal, skip=skip, limit=limit)
    return ModelsPublic(data=[ModelPublic.model_validate(r) for r in rows], count=count)


@router.get("/{model_id}", response_model=ModelPublic)
def read_model(model_id: ModelIdPath, session: SessionDep, principal: PrincipalDep) -> Any:
    """One tuned model: source job, base model, task, labels, thresholds, metrics, size."""
    return _get_or_404(session, principal, model_id)


def _owned_dir(settings: Settings, path: str) -> Path | None:
    """The model's directory if it lies inside the store: deleting a model never removes
    files it merely points at elsewhere."""
    directory = Path(path).resolve()
    store = (Path(settings.models_dir) / "models").resolve()
    return directory if directory.is_relative_to(store) and directory != store else None


@router.delete("/{model_id}", status_code=204, response_class=Response)
async def delete_model(
    model_id: ModelIdPath, session: SessionDep, settings: SettingsDep, predictor: PredictorDep,
    principal: PrincipalDep,
) -> Response:
    """Delete a tuned model (row, files, loaded copy); 409 while a job trains from it."""
    model = await run_in_threadpool(_get_or_404, session, principal, model_id)
    active = await run_in_threadpool(crud.active_jobs_from_model, session=session, model_id=model_id)
    if active:
        jobs = ", ".join(f"{job.id} ({job.state})" for job in active)
        raise HTTPException(
            status_code=409,
            detail=f"model {model_id!r} is the base model of job(s) {jobs}; cancel them or wait "
            "for them to finish before deleting it",
        )
    path = model.path
    await run_in_threadpool(crud.delete_model, session=session, model=model)
    predictor.evict(model_id)
    directory = _owned_dir(settings, path)
    if directory is not None:
        await run_in_threadpool(shutil.rmtree, directory, True)
    else:
        log.warning("model %s deleted; its files at %s lie outside the store and were kept", model_id, path)
    return Response(status_code=204)


@router.get(
    "/{model_id}/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/gzip": {}}, "description": "A tar.gz of the model directory."}},
)
def download_model(model_id: ModelIdPath, session: SessionDep, principal: PrincipalDep) -> StreamingResponse:
    """The model as a tar.gz of a Hugging Face directory (transformers.pipeline loads it)."""
    model = _get_or_404(session, principal, model_id)
    directory = Path(model.path)
    if not (directory / "config.json").is_file():
        raise HTTPException(
            status_code=409,
            detail=f"the files of model {model_id!r} are missing (no config.json in its directory); "
            "it cannot be exported",
        )
    return StreamingResponse(
        iter_targz(directory, model_id),
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{model_id}.tar.gz"'},
    )
