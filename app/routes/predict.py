"""The /predict resource: classify texts with a tuned model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.auth import LOCAL_ADMIN, Principal
from app.crud import models as crud
from app.deps import PredictorDep, PresentedKeyDep, principal_of_key, unauthorized
from app.schemas.common import errors
from app.schemas.predict import PredictRequest, PredictResponse
from app.serving import ModelLoadError, ModelSpec, QueueFull, decode_multi_label, decode_single_label
from app.serving.batching import BatcherClosed
from core.db import new_session
from core.settings import Settings
from core.tables import TunedModel

# No router-wide key check: POST /predict checks the key inside its one lookup (see below).
router = APIRouter(prefix="/predict", tags=["predict"],
                   responses=errors(400, 401, 404, 409, 413, 422, 429, 503))


def _check_limits(predict_in: PredictRequest, settings: Settings) -> None:
    max_texts, max_chars = settings.predict_max_texts, settings.predict_max_chars
    if not predict_in.texts:
        raise HTTPException(422, f"texts is empty: send between 1 and {max_texts} texts")
    if len(predict_in.texts) > max_texts:
        raise HTTPException(
            422,
            f"{len(predict_in.texts)} texts in one request; the limit is {max_texts} "
            "(TUNESERVE_PREDICT_MAX_TEXTS): split them over several requests",
        )
    for i, text in enumerate(predict_in.texts):
        if len(text) > max_chars:
            raise HTTPException(
                422,
                f"text {i} has {len(text)} characters; the limit is {max_chars} per text "
                "(TUNESERVE_PREDICT_MAX_CHARS)",
            )


def _visible_model(principal: Principal, model_id: str) -> TunedModel | None:
    with new_session() as session:
        return principal.visible(crud.get_model(session=session, model_id=model_id))


def _spec_or_404(model_id: str, principal: Principal) -> ModelSpec:
    return _spec_of(model_id, _visible_model(principal, model_id))


def _caller_and_model(presented: str | None,
                      model_id: str | None) -> tuple[Principal | None, TunedModel | None]:
    """The caller and the model row, read in one session on one thread hop: the key is checked
    on every request (a key revoked by any process stops working at once), and the model read
    beside it costs no second hop or session. (None, None): the key is not a live one."""
    with new_session() as session:
        principal = LOCAL_ADMIN if presented is None else principal_of_key(session, presented)
        if principal is None or model_id is None:
            return principal, None
        return principal, principal.visible(crud.get_model(session=session, model_id=model_id))


@dataclass(frozen=True)
class Caller:
    principal: Principal
    model_id: str | None      # the body's model_id as read for the lookup (None: none readable)
    model: TunedModel | None  # that row, when the caller may see it


async def get_caller(request: Request, presented_key: PresentedKeyDep) -> Caller:
    """The key check and the model row in one hop, as a dependency so that a wrong key is a 401
    before the body is validated (FastAPI has parsed the JSON before dependencies run; the row is
    looked up by the body's model_id as sent, and the route checks it is the one it validated)."""
    try:
        body = await request.json()
    except ValueError:  # not JSON: the body's own 422 follows once the key has passed
        body = None
    model_id = body.get("model_id") if isinstance(body, dict) else None
    model_id = model_id if isinstance(model_id, str) else None
    principal, model = await run_in_threadpool(_caller_and_model, presented_key, model_id)
    if principal is None:
        raise unauthorized()
    return Caller(principal=principal, model_id=model_id, model=model)


def _spec_of(model_id: str, model: TunedModel | None) -> ModelSpec:
    """The row as the predictor takes it; 404 for a row the caller may not see, 422 for a chat model."""
    if model is None:
        raise HTTPException(404, f"model {model_id!r} not found")
    if model.task == "chat":
        raise HTTPException(422, f"model {model_id!r} is a chat model; POST /generate answers with it")
    return ModelSpec(
        model_id=model.id,
        path=Path(model.path),
        task=model.task,
        labels=tuple(str(label) for label in model.labels),
        max_seq_length=model.max_seq_length,
        thresholds={str(k): float(v) for k, v in (model.thresholds or {}).items()},
    )


@router.post(
    "",
    response_model=PredictResponse,
)
async def create_prediction(
    predict_in: PredictRequest, predictor: PredictorDep, caller: Annotated[Caller, Depends(get_caller)]
) -> Any:
    """Classify texts: label and scores per text, in order (texts over max length are cut and flagged)."""
    # The hot path of the service: no sync dependencies (SessionDep, SettingsDep, nor the
    # key check of PrincipalDep), each of which costs a thread hop and a session per request.
    # One hop (get_caller) opens one session, checks the key, reads the model row and closes it.
    model = caller.model
    if caller.model_id != predict_in.model_id:  # not read from the raw body: look it up now
        model = await run_in_threadpool(_visible_model, caller.principal, predict_in.model_id)
    _check_limits(predict_in, predictor.settings)
    spec = _spec_of(predict_in.model_id, model)
    if predict_in.threshold is not None and spec.task != "multi_label":
        raise HTTPException(422, f"threshold applies to multi-label models; {spec.model_id!r} is {spec.task}")
    try:
        results = await predictor.predict(spec, predict_in.texts)
    except QueueFull as exc:
        return JSONResponse(
            status_code=429, content={"detail": str(exc)}, headers={"Retry-After": str(exc.retry_after_s)}
        )
    except ModelLoadError as exc:
        raise HTTPException(409, str(exc)) from exc
    except BatcherClosed as exc:
        raise HTTPException(503, "the server is shutting down; retry on another replica") from exc
    top_k = predict_in.top_k
    if spec.task == "multi_label":
        predictions = [
            decode_multi_label(
                spec.labels, r.probs, thresholds=spec.thresholds, threshold=predict_in.threshold, top_k=top_k
            )
            | {"truncated": r.truncated}
            for r in results
        ]
    else:
        predictions = [
            decode_single_label(spec.labels, r.probs, top_k=top_k) | {"truncated": r.truncated}
            for r in results
        ]
    return {"model_id": spec.model_id, "predictions": predictions}
