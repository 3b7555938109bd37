"""/v1/models: the tuned chat models this key can chat with, by id (`mdl_...`); retrieve also
takes a job's `fine_tuned_model` name (ft:<base>:<suffix>:<model id>)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import Principal
from app.crud import models as crud
from app.deps import Authenticated, PrincipalDep, SessionDep
from app.routes.openai.errors import OpenAIError
from app.routes.openai.view import ORGANIZATION, fine_tuned_model_name, unix
from app.schemas.openai import ModelList, ModelObject, OpenAIErrorOut
from core.tables import Job, TunedModel

router = APIRouter(prefix="/v1/models", tags=["openai"], dependencies=[Authenticated],
                   responses={code: {"model": OpenAIErrorOut} for code in (400, 401, 404)})
ModelPath = Annotated[str, Path(min_length=1, max_length=1200, description="A model id or its ft: name.")]


def _object(model: TunedModel) -> ModelObject:
    return ModelObject(id=model.id, created=unix(model.created_at) or 0,
                       owned_by=model.tenant_id or ORGANIZATION)


# What /v1/fine_tuning/jobs/{id}/checkpoints names each checkpoint: ft:<base>:<suffix>:<job id>:ckpt-step-N.
CHECKPOINT_NAME = re.compile(r"^ft:.*:(?P<job>[^:]+):ckpt-step-(?P<step>\d+)$")


def _checkpoint_words(session: Session, principal: Principal, name: str) -> str | None:
    """For a checkpoint's name: why it is not a model, and which name is (None: not one)."""
    match = CHECKPOINT_NAME.match(name)
    job = principal.visible(session.get(Job, match["job"])) if match else None
    if job is None:
        return None
    tuned = fine_tuned_model_name(job)
    served = (f"use '{tuned}', the job's fine_tuned_model" if tuned else
              f"the job ({job.state}) has no tuned model yet; it gets one when it succeeds")
    return (f"The model '{name}' is a checkpoint of fine-tuning job {job.id}: tuneserve serves a job's "
            f"tuned model, not each of its checkpoints; {served}.")


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
    if model is None and (words := _checkpoint_words(session, principal, name)) is not None:
        raise OpenAIError(404, words, param=param, code="model_not_found")
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
    """One chat model, by id or by its ft: name."""
    return _object(chat_model_or_404(session, principal, model, param="model"))
