"""/v1/models: the tuned chat models this key can chat with, by id (`mdl_...`); retrieve also
takes a job's `fine_tuned_model` name (ft:<base>:<suffix>:<model id>) and a LoRA chat job's
checkpoint name (ft:<base>:<suffix>:<job id>:ckpt-step-N), which chat completions serve too."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import Principal
from app.crud import models as crud
from app.deps import Authenticated, PrincipalDep, SessionDep
from app.routes.openai.errors import OpenAIError
from app.routes.openai.view import ORGANIZATION, checkpoint_model_name, fine_tuned_model_name, unix
from app.schemas.openai import ModelList, ModelObject, OpenAIErrorOut
from app.serving.generations import checkpoint_runtime_id
from core import store
from core.tables import Checkpoint, Job, TunedModel

router = APIRouter(prefix="/v1/models", tags=["openai"], dependencies=[Authenticated],
                   responses={code: {"model": OpenAIErrorOut} for code in (400, 401, 404)})
ModelPath = Annotated[str, Path(min_length=1, max_length=1200, description="A model id or its ft: name.")]


def _object(model: TunedModel) -> ModelObject:
    return ModelObject(id=model.id, created=unix(model.created_at) or 0,
                       owned_by=model.tenant_id or ORGANIZATION)


# What /v1/fine_tuning/jobs/{id}/checkpoints names each checkpoint: ft:<base>:<suffix>:<job id>:ckpt-step-N.
CHECKPOINT_NAME = re.compile(r"^ft:.*:(?P<job>[^:]+):ckpt-step-(?P<step>\d+)$")


@dataclass(frozen=True)
class Servable:
    """What a chat completion is served from: a loaded-runtime id and the directory it loads, and
    the model object that retrieve answers with."""

    runtime_id: str
    path: str
    object: ModelObject


def _checkpoint(session: Session, principal: Principal, name: str, param: str | None) -> Servable | None:
    """A LoRA chat job's checkpoint that `name` names (None: not a checkpoint name of a job this
    key sees). Checkpoints are adapters beside the base, so each costs little to load; a pruned
    one, a full fine-tune's and a classifier's answer 404 in words that say what to use instead."""
    match = CHECKPOINT_NAME.match(name)
    job = principal.visible(session.get(Job, match["job"])) if match else None
    if match is None or job is None or checkpoint_model_name(job, int(match["step"])) != name:
        return None
    step = int(match["step"])
    tuned = fine_tuned_model_name(job)
    instead = (f"use '{tuned}', the job's fine_tuned_model" if tuned else
               f"GET /v1/fine_tuning/jobs/{job.id}/checkpoints lists the job's checkpoints")

    def missing(why: str) -> OpenAIError:
        return OpenAIError(404, f"The model '{name}' is a checkpoint of fine-tuning job {job.id}: {why}; "
                                f"{instead}.", param=param, code="model_not_found")

    if job.task != "chat":
        raise missing("the job tunes a classifier, which has no chat replies")
    row = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step == step)
                          .order_by(Checkpoint.created_at.desc())).first()
    if row is None:
        raise missing(f"the job has no checkpoint at step {step}")
    directory = FilePath(row.path)
    if not row.available or not directory.is_dir():
        raise missing(f"the checkpoint at step {step} was pruned (a running job keeps its best and "
                      "TUNESERVE_KEEP_LAST_CHECKPOINTS more, a succeeded one "
                      "TUNESERVE_KEEP_CHECKPOINTS_AFTER_SUCCESS); its metrics are kept, its weights are not")
    if not (directory / "adapter_config.json").is_file():
        raise missing("it is a full fine-tune's checkpoint, a whole copy of the model, and tuneserve "
                      "serves only LoRA checkpoints beside their shared base "
                      f"(GET /jobs/{job.id}/checkpoints gives its directory on the server)")
    if store.read_model_meta(directory).get("task") != "chat":
        raise missing("its files are not a chat model's")
    model = ModelObject(id=name, created=unix(row.created_at) or 0, owned_by=job.tenant_id or ORGANIZATION)
    return Servable(checkpoint_runtime_id(job.id, step), str(directory), model)


def servable_or_404(session: Session, principal: Principal, name: str, param: str | None = None) -> Servable:
    """What `name` serves: a tuned chat model (its id or ft: name) or a LoRA chat job's checkpoint
    (its ft: checkpoint name)."""
    checkpoint = _checkpoint(session, principal, name, param)
    if checkpoint is not None:
        return checkpoint
    model = chat_model_or_404(session, principal, name, param)
    return Servable(model.id, model.path, _object(model))


def chat_model_or_404(session: Session, principal: Principal, name: str,
                      param: str | None = None) -> TunedModel:
    """The caller's tuned chat model that `name` (an id or an ft: name) names; another key's model,
    a classifier and a name that does not match its job all answer as a missing one."""
    model_id = name.rsplit(":", 1)[-1] if name.startswith("ft:") else name
    model = principal.visible(crud.get_model(session=session, model_id=model_id))
    if model is not None and name.startswith("ft:"):
        job = session.get(Job, model.job_id) if model.job_id else None
        if job is None or fine_tuned_model_name(job) != name:
            model = None
    if model is None or model.task != "chat":
        raise OpenAIError(404, f"The model '{name}' does not exist or you do not have access to it; "
                               "GET /v1/models lists the chat models you can use.", param=param,
                          code="model_not_found")
    return model


@router.get("", response_model=ModelList)
def list_models(session: SessionDep, principal: PrincipalDep) -> ModelList:
    """The tuned chat models this key can use, newest first."""
    query = principal.scope(select(TunedModel), TunedModel).where(TunedModel.task == "chat")
    rows = session.scalars(query.order_by(TunedModel.created_at.desc(), TunedModel.id)).all()
    return ModelList(data=[_object(r) for r in rows])


@router.get("/{model}", response_model=ModelObject)
def retrieve_model(model: ModelPath, session: SessionDep, principal: PrincipalDep) -> ModelObject:
    """One chat model, by id or by its ft: name, or a LoRA chat job's checkpoint by its ft: name."""
    return servable_or_404(session, principal, model, param="model").object
