"""/plan: will a base model fit a GPU, and in what precision? From its config alone, before a job."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from app.base_models import UnusableBaseModel, resolve_base_model
from app.deps import Authenticated, PrincipalDep, SessionDep, SettingsDep
from app.schemas.common import errors
from app.schemas.plan import MemoryPlanPublic, PlanCreate
from core import store
from core.catalogue import with_job_defaults
from core.planning import PlanError, PlanRequest, gpu_of_size, plan_for_source
from core.tables import TunedModel

router = APIRouter(prefix="/plan", tags=["plan"], dependencies=[Authenticated],
                   responses=errors(401, 413, 422))


@router.post("", response_model=MemoryPlanPublic, responses=errors(400, 401, 413, 422))
def create_plan(plan_in: PlanCreate, session: SessionDep, settings: SettingsDep,
                principal: PrincipalDep) -> dict[str, Any]:
    """The memory plan of a base model on a GPU of the given size: each term, each choice and why."""
    memory_gib = plan_in.gpu_memory_gib or settings.device_memory_gib
    if memory_gib is None:
        raise HTTPException(422, "Say how much GPU memory to plan for: gpu_memory_gib (e.g. 8 for an 8 GB "
                                 "card); this server has no TUNESERVE_DEVICE_MEMORY_GIB to default to.")
    try:
        base_model, model_id = resolve_base_model(session, settings, principal, plan_in.base_model)
    except UnusableBaseModel as exc:
        raise HTTPException(422, str(exc)) from exc
    tuned = session.get(TunedModel, model_id) if model_id else None
    source = str(tuned.path) if tuned is not None else store.resolve_base_model(base_model)
    hp = with_job_defaults(plan_in.hyperparameters, plan_in.task)
    request = PlanRequest.from_hyperparameters(hp, chat=plan_in.task == "chat",
                                               max_micro_batch_size=settings.max_micro_batch_size)
    try:
        plan = plan_for_source(base_model, source, request, gpu_of_size(memory_gib, bf16=plan_in.bf16),
                               lora_target_modules=hp.lora_target_modules,
                               trust_remote_code=settings.trust_remote_code)
    except PlanError as exc:
        raise HTTPException(422, str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - the config is the caller's data: no config.json, an
        # architecture transformers lacks, fields its class rejects all mean "cannot plan this one"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HTTPException(422, f"The config of base_model {plan_in.base_model!r} cannot be read as a "
                                 f"{'causal language model' if request.chat else 'text classifier'}: "
                                 f"{first[:300]}") from exc
    return plan.to_dict()
