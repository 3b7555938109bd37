"""The /models resource: the registry of tuned models, deletion and export."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.auth import Principal
from app.crud import models as crud
from app.deps import Authenticated, PredictorDep, PrincipalDep, SessionDep, SettingsDep
from app.routes.generate import generations
from app.schemas.common import Limit, ModelIdPath, Offset, errors
from app.schemas.models import ModelPublic, ModelsPublic
from app.serving.export import iter_targz
from core.settings import Settings
from core.tables import TunedModel

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
    principal: PrincipalDep, request: Request,
) -> Response:
    """Delete a tuned model (row, files, loaded copy); 409 while a job trains from it."""
    model = await run_in_threadpool(_get_or_404, session, principal, model_id)
    await remove_model(session, settings, predictor, request, model)
    return Response(status_code=204)


async def remove_model(session: Any, settings: Settings, predictor: Any, request: Request,
                       model: TunedModel) -> None:
    """Row, files (when inside the store) and loaded copy; 409 while a job trains from it.
    DELETE /jobs/{id}?delete_model=true goes through here too."""
    model_id = model.id
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
    generations(request).evict(model_id)  # a chat model's adapter leaves its shared base
    directory = _owned_dir(settings, path)
    if directory is not None:
        await run_in_threadpool(shutil.rmtree, directory, True)
    else:
        log.warning("model %s deleted; its files at %s lie outside the store and were kept", model_id, path)


@router.get(
    "/{model_id}/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/gzip": {}}, "description": "A tar.gz of the model directory."}},
)
def download_model(
    model_id: ModelIdPath, session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
    merged: bool = Query(False, description="A LoRA chat model: its adapter merged into the base (a plain "
                         "model directory); without it, the adapter alone (a few MB, needs its base)."),
) -> StreamingResponse:
    """The model as a tar.gz of a Hugging Face directory (transformers.pipeline loads it; a LoRA
    adapter loads with peft on its base, or download it merged)."""
    model = _get_or_404(session, principal, model_id)
    directory = Path(model.path)
    adapter = (directory / "adapter_config.json").is_file()
    if not adapter and not (directory / "config.json").is_file():
        raise HTTPException(
            status_code=409,
            detail=f"the files of model {model_id!r} are missing (no config.json in its directory); "
            "it cannot be exported",
        )
    if not (adapter and merged):
        name = f"{model_id}-adapter" if adapter else model_id
        return StreamingResponse(
            iter_targz(directory, name),
            media_type="application/gzip",
            headers={"Content-Disposition": f'attachment; filename="{name}.tar.gz"'},
        )
    from core.serving.generation import merge_to_directory, read_spec  # torch: only for a merge

    staging = Path(tempfile.mkdtemp(prefix=f".merge-{model_id}-", dir=settings.data_dir))
    try:
        merged_into = merge_to_directory(read_spec(model_id, directory), staging / model_id)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    def stream() -> Iterator[bytes]:
        try:
            yield from iter_targz(staging / model_id, f"{model_id}-merged")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    return StreamingResponse(
        stream(), media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{model_id}-merged.tar.gz"',
                 # Also in the archive's tuneserve.json (merged_into).
                 "X-Tuneserve-Merged-Into": merged_into.encode("ascii", "replace").decode()},
    )
