"""POST /predict/file: classify every row of an uploaded file (CSV, TSV, JSON, JSONL, Parquet),
read as a dataset upload is, through the same batcher as /predict; the rows stream back with
the predictions added, or, with `?summary=true`, the figures on the file's own labels."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.deps import Authenticated, PredictorDep, PrincipalDep
from app.ingest import IngestError, UploadTooLarge
from app.ingest.guards import ReadLimits
from app.ingest.scoring import ScoringFile, read_scoring_file
from app.ingest.upload import save_upload
from app.limits import UploadLimitRoute, upload_too_large
from app.routes.predict import _spec_or_404
from app.schemas.common import errors
from app.serving import ModelLoadError, ModelSpec, QueueFull
from app.serving.batching import BatcherClosed
from app.serving.bulk import FORMATS, Chunk, FileScorer, output_columns, render
from app.serving.evaluate import evaluate
from core.settings import Settings

log = logging.getLogger("tuneserve.predict")

router = APIRouter(prefix="/predict", tags=["predict"], route_class=UploadLimitRoute,
                   dependencies=[Authenticated], responses=errors(400, 401, 404, 409, 413, 422, 429, 503))

ModelIdField = Annotated[str | None, Form(max_length=64, description="The tuned model to predict with.")]
FileField = Annotated[UploadFile | None, File(description="CSV, TSV, JSON, JSONL or Parquet, as uploads.")]
TextColumnField = Annotated[str | None, Form(max_length=1000, description="Inferred as uploads' if absent.")]
LabelColumnField = Annotated[str | None, Form(
    max_length=10_000, description="The true labels, to score against; inferred by name if absent.")]
FormatField = Annotated[str | None, Form(max_length=16, description="Response: csv (default) or jsonl.")]
SummaryQuery = Annotated[bool, Query(description="Answer the figures on the file's labels (JSON) instead of "
                                                 "the rows: accuracy, F1, per class, the confusion matrix.")]


def _read_limits(settings: Settings) -> ReadLimits:
    return ReadLimits(max_columns=settings.max_dataset_columns, max_line_bytes=settings.max_line_kb * 1024,
                      max_cell_chars=settings.max_cell_chars)


async def _read(file: UploadFile, spec: ModelSpec, settings: Settings, text_column: str | None,
                label_column: str | None) -> ScoringFile:
    """The upload saved, read and dropped: nothing of it stays on disk after this."""
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=settings.uploads_dir) as tmp:
            saved = await save_upload(file, filename=file.filename, dest=Path(tmp) / "file",
                                      limit_bytes=settings.max_upload_bytes)
            return await run_in_threadpool(
                read_scoring_file, saved.path, saved.filename, task=spec.task, labels=list(spec.labels),
                text_column=text_column, label_column=label_column, limits=_read_limits(settings))
    except UploadTooLarge as e:
        raise HTTPException(413, upload_too_large(settings)) from e
    except IngestError as e:
        raise HTTPException(422, str(e)) from e


def _blank_to_none(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


@router.post("/file", response_model=None, responses={
    200: {"description": "The rows with the predictions (text/csv or application/x-ndjson); with "
                         "summary=true, JSON with the figures on the file's labels.",
          "content": {"text/csv": {}, "application/x-ndjson": {}, "application/json": {}}}})
async def create_file_prediction(
    predictor: PredictorDep,
    principal: PrincipalDep,
    file: FileField = None,
    model_id: ModelIdField = None,
    text_column: TextColumnField = None,
    label_column: LabelColumnField = None,
    format: FormatField = None,  # noqa: A002 - the form field's documented name
    summary: SummaryQuery = False,
) -> Any:
    """Classify every row of a file; every input column comes back with `label` and `score`."""
    model_id, fmt = _blank_to_none(model_id), (_blank_to_none(format) or "csv").lower()
    if file is None:
        raise HTTPException(422, "no file: send the rows to classify as the multipart form field 'file'")
    if model_id is None:
        raise HTTPException(422, "no model_id: send the tuned model's id as the form field 'model_id' "
                                 "(GET /models lists them)")
    if fmt not in FORMATS:
        raise HTTPException(422, f"format {format!r} is not one of {', '.join(FORMATS)}; leave it out for "
                                 "csv")
    spec = await run_in_threadpool(_spec_or_404, model_id, principal)
    scoring = await _read(file, spec, predictor.settings, _blank_to_none(text_column),
                          _blank_to_none(label_column))
    if summary and not scoring.label_columns:
        raise HTTPException(
            422, f"summary=true scores the predictions against the file's labels, but '{file.filename}' has "
                 f"no label column (none is named like a label); name it with label_column=..., or leave "
                 f"summary out to get the predicted rows")
    scorer = FileScorer(predictor, spec, scoring.texts, str(file.filename))
    first = await _first_chunk(scorer)
    if isinstance(first, JSONResponse):
        return first
    headers = {"X-Tuneserve-Rows": str(len(scoring.texts)),
               "X-Tuneserve-Text-Column": _ascii(scoring.text_column)}
    if summary:
        return JSONResponse(await _summary(scorer, first, scoring, spec), headers=headers)
    label_name, score_name = output_columns(scoring.table.frame, spec)
    headers |= {"X-Tuneserve-Label-Column": label_name, "X-Tuneserve-Score-Column": score_name}
    if len(scoring.label_columns) == 1:
        # The file's own labels: a client can score the rows it receives against them (the CLI
        # prints accuracy, F1 and the confusion matrix from the file it wrote).
        headers["X-Tuneserve-True-Label-Column"] = _ascii(scoring.label_columns[0])
    return StreamingResponse(_stream(scorer, first, scoring, spec, fmt), media_type=FORMATS[fmt],
                             headers=headers)


def _ascii(name: str) -> str:
    """A header value must be latin-1: a Korean column name is sent percent-encoded."""
    from urllib.parse import quote

    return name if name.isascii() else quote(name)


async def _first_chunk(scorer: FileScorer) -> Chunk | JSONResponse:
    """The first chunk, before the response starts, so its failures still get a status code."""
    try:
        return await scorer.chunk(0, wait_when_full=False)
    except QueueFull as exc:
        return JSONResponse(status_code=429, content={"detail": str(exc)},
                            headers={"Retry-After": str(exc.retry_after_s)})
    except ModelLoadError as exc:
        raise HTTPException(409, str(exc)) from exc
    except BatcherClosed as exc:
        raise HTTPException(503, "the server is shutting down; retry on another replica") from exc


async def _stream(scorer: FileScorer, first: Chunk, scoring: ScoringFile, spec: ModelSpec,
                  fmt: str) -> AsyncIterator[str]:
    frame = scoring.table.frame
    try:
        async for chunk in scorer.chunks(first):
            yield render(frame, chunk, spec, fmt)
    except (QueueFull, ModelLoadError, BatcherClosed) as exc:
        # The status line is sent: ending the body early is the only way left to say it failed
        # (a client sees fewer rows than X-Tuneserve-Rows and an unfinished transfer).
        log.warning("predict/file %s stopped after %d/%d rows: %s", spec.model_id, scorer.done_rows,
                    len(scoring.texts), exc)
        raise


async def _summary(scorer: FileScorer, first: Chunk, scoring: ScoringFile, spec: ModelSpec) -> dict[str, Any]:
    predicted: list[list[str] | None] = []
    try:
        async for chunk in scorer.chunks(first):
            predicted.extend(None if p is None else p["labels"] for p in chunk.predictions)  # type: ignore[misc]
    except QueueFull as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from exc
    except ModelLoadError as exc:
        raise HTTPException(409, str(exc)) from exc
    except BatcherClosed as exc:
        raise HTTPException(503, "the server is shutting down; retry on another replica") from exc
    figures = await run_in_threadpool(evaluate, spec.task, spec.labels, scoring.truth, predicted)
    return {
        "model_id": spec.model_id, "task": spec.task, "rows": len(scoring.texts),
        "rows_without_text": sum(t is None for t in scoring.texts), "truncated_rows": scorer.truncated_rows,
        "text_column": scoring.text_column, "label_columns": scoring.label_columns,
        "inference": scoring.reasons, "warnings": scoring.warnings, **figures,
    }
