"""The /models resource: the registry of tuned models, deletion and export."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.auth import Principal
from app.crud import models as crud
from app.deps import Authenticated, PrincipalDep, RemovalDep, SessionDep, SettingsDep
from app.removal import ModelInUse
from app.schemas.common import Limit, ModelIdPath, Offset, errors
from app.schemas.models import ModelPublic, ModelsPublic
from app.serving.export import Snapshot, iter_targz
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


@router.delete("/{model_id}", status_code=204, response_class=Response)
async def delete_model(
    model_id: ModelIdPath, session: SessionDep, removal: RemovalDep, principal: PrincipalDep,
) -> Response:
    """Delete a tuned model (row, files, loaded copy); 409 while a job trains from it."""
    model = await run_in_threadpool(_get_or_404, session, principal, model_id)
    try:
        await removal.remove_model(model)
    except ModelInUse as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    return Response(status_code=204)


def _deleted_meanwhile(model_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"model {model_id!r} was deleted while its download "
                         "was starting; nothing was sent")


def _snapshot(session: Any, principal: Principal, directory: Path, name: str, model_id: str) -> Snapshot:
    """The files opened before the response starts, so a concurrent delete cannot cut it.

    A delete removes the row before the files; so the row, read again once every file is
    open, says whether the listing could have raced the removal (and missed files)."""
    try:
        snapshot = Snapshot(directory, name)
    except FileNotFoundError as e:
        raise _deleted_meanwhile(model_id) from e
    session.rollback()  # a fresh transaction, which sees a delete committed since the first read
    if principal.visible(crud.get_model(session=session, model_id=model_id)) is None:
        snapshot.close()
        raise _deleted_meanwhile(model_id)
    return snapshot


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
            iter_targz(_snapshot(session, principal, directory, name, model_id)),
            media_type="application/gzip",
            headers={"Content-Disposition": f'attachment; filename="{name}.tar.gz"'},
        )
    from core.serving.generation import merge_to_directory, read_spec  # torch: only for a merge

    staging = Path(tempfile.mkdtemp(prefix=f".merge-{model_id}-", dir=settings.data_dir))
    try:
        try:
            merged_into = merge_to_directory(read_spec(model_id, directory), staging / model_id)
        except FileNotFoundError as e:
            raise _deleted_meanwhile(model_id) from e
        # Opened before the staging directory can go: the stream reads only these handles.
        snapshot = _snapshot(session, principal, staging / model_id, f"{model_id}-merged", model_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    return StreamingResponse(
        iter_targz(snapshot), media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{model_id}-merged.tar.gz"',
                 # Also in the archive's tuneserve.json (merged_into).
                 "X-Tuneserve-Merged-Into": merged_into.encode("ascii", "replace").decode()},
    )
