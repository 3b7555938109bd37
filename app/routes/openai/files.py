"""/v1/files: a fine-tune file is read and validated as POST /datasets reads it, and becomes a chat
dataset (the same row: /datasets shows it). OpenAI rejects a file with any bad line, so does
this route, naming the line; the stored dataset is removed again, nothing stays behind.

The uploaded bytes are kept beside the dataset's splits (`<dataset dir>/source`), so
GET /v1/files/{id}/content returns them as sent.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from app.auth import Principal
from app.crud import datasets as crud
from app.crud import jobs as job_crud
from app.crud import openai as v1_crud
from app.deps import Authenticated, PrincipalDep, SessionDep, SettingsDep
from app.ingest import IngestError, IngestOptions, IngestResult, SourceFile, UploadTooLarge, ingest
from app.ingest.guards import ReadLimits
from app.ingest.storage import remove_dataset
from app.ingest.upload import SavedUpload, save_upload
from app.routes.datasets import UploadLimitRoute
from app.routes.openai.errors import OpenAIError
from app.routes.openai.view import file_object
from app.schemas.common import MAX_ID_CHARS, id_path
from app.schemas.openai import FileDeleted, FileList, FileObject, OpenAIErrorOut
from core.settings import Settings
from core.tables import Dataset, new_id

PURPOSE = "fine-tune"
SOURCE_NAME = "source"  # the upload as sent, inside the dataset's directory
FileIdPath = Annotated[str, id_path("file")]

router = APIRouter(prefix="/v1/files", tags=["openai"], route_class=UploadLimitRoute,
                   dependencies=[Authenticated],
                   responses={code: {"model": OpenAIErrorOut} for code in (400, 401, 404, 409, 413)})


def _line_numbers(path: Path, fmt: str) -> dict[int, int] | None:
    """Data row -> line of the file, for JSONL (blank lines are skipped when it is read)."""
    if fmt != "jsonl":
        return None
    lines: dict[int, int] = {}
    with path.open("rb") as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                lines[len(lines) + 1] = line_number
    return lines


def _first_bad_line(result: IngestResult, lines: dict[int, int] | None, filename: str) -> str | None:
    if not result.rejected_rows:
        return None
    first = result.rejected_rows[0]
    row = int(first["row"])
    where = f"line {lines.get(row, row)}" if lines is not None else f"row {row}"
    total = len(result.rejected_rows)
    more = f" ({total} lines in all are invalid; the first is named)" if total > 1 else ""
    return (f"Invalid file '{filename}': {where}: {first['reason']}{more}. Fix or remove that line and "
            "upload the file again.")


def _ingest_file(saved: SavedUpload, directory: Path, settings: Settings) -> tuple[IngestResult, str | None]:
    result = ingest(train=SourceFile(saved.path, saved.filename), validation=None, test=None,
                    options=IngestOptions(task="chat"), directory=directory,
                    max_rows=settings.max_dataset_rows,
                    limits=ReadLimits(max_columns=settings.max_dataset_columns,
                                      max_line_bytes=settings.max_line_kb * 1024,
                                      max_cell_chars=settings.max_cell_chars))
    problem = _first_bad_line(result, _line_numbers(saved.path, result.format), saved.filename)
    if problem is None:
        shutil.copyfile(saved.path, directory / SOURCE_NAME)
    return result, problem


@router.post("", response_model=FileObject)
async def create_file(
    session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
    file: Annotated[UploadFile | None,
                    File(description="JSONL of conversations (or CSV, JSON, Parquet).")] = None,
    purpose: Annotated[str | None, Form(max_length=64, description="Only fine-tune.")] = None,
) -> FileObject:
    """Upload a fine-tune file: validated line by line and stored as a chat dataset."""
    if purpose != PURPOSE:
        raise OpenAIError(400, f"purpose {purpose!r} is not supported: tuneserve takes purpose=fine-tune "
                               "files only", param="purpose", code="invalid_value")
    if file is None:
        raise OpenAIError(400, "No file: send it as the multipart form field 'file'.", param="file")
    file_id = new_id("file")
    directory = settings.datasets_dir / file_id
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=settings.uploads_dir) as tmp:
            saved = await save_upload(file, filename=file.filename, dest=Path(tmp) / "file",
                                      limit_bytes=settings.max_upload_bytes)
            result, problem = await run_in_threadpool(_ingest_file, saved, directory, settings)
    except UploadTooLarge as e:
        raise OpenAIError(413, f"The file is larger than the limit of {settings.max_upload_mb} MB "
                               "(TUNESERVE_MAX_UPLOAD_MB).", param="file") from e
    except IngestError as e:
        raise OpenAIError(400, f"Invalid file: {e}", param="file", code="invalid_file") from e
    if problem is not None:
        remove_dataset(directory)
        raise OpenAIError(400, problem, param="file", code="invalid_file")
    try:
        values = _row_values(file_id, directory, result, saved, principal)
        dataset = crud.create_dataset(session, values=values)
        session.commit()
    except BaseException:
        session.rollback()
        remove_dataset(directory)
        raise
    return file_object(dataset)


def _row_values(file_id: str, directory: Path, result: IngestResult, upload: SavedUpload,
                principal: Principal) -> dict[str, object]:
    return {
        "id": file_id, "tenant_id": principal.tenant_id, "name": upload.filename[:255], "task": result.task,
        "format": result.format, "encoding": result.encoding, "text_column": result.text_column,
        "label_columns": result.label_columns, "labels": result.labels, "num_rows": result.num_rows,
        "label_distribution": result.label_distribution, "rejected_rows": result.rejected_rows,
        "warnings": result.warnings, "report": result.report, "sha256": upload.sha256,
        "size_bytes": upload.size_bytes, "storage_path": str(directory.resolve()), "purpose": PURPOSE,
    }


def get_file_or_404(session: SessionDep, principal: Principal, file_id: str,
                    param: str = "file_id") -> Dataset:
    """A file, or any of the caller's datasets (a native upload can train through /v1 too)."""
    dataset = principal.visible(crud.get_dataset(session, dataset_id=file_id))
    if dataset is None:
        raise OpenAIError(404, f"No such File object: {file_id}", param=param, code="file_not_found")
    return dataset


@router.get("", response_model=FileList)
def list_files(
    session: SessionDep, principal: PrincipalDep,
    purpose: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    """The files uploaded through /v1/files, newest first (order=asc: oldest first)."""
    if purpose not in (None, PURPOSE):
        return FileList(data=[], has_more=False)
    rows, has_more = v1_crud.list_files(session, principal=principal, after=after, limit=limit,
                                        newest_first=order == "desc")
    data = [file_object(r) for r in rows]
    return FileList(data=data, has_more=has_more, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: FileIdPath, session: SessionDep, principal: PrincipalDep) -> FileObject:
    """One file."""
    return file_object(get_file_or_404(session, principal, file_id))


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: FileIdPath, session: SessionDep, settings: SettingsDep,
                principal: PrincipalDep) -> FileDeleted:
    """Delete a file (its dataset), unless a queued or running job trains on it."""
    dataset = get_file_or_404(session, principal, file_id)
    jobs = job_crud.active_job_ids_using(session, dataset_id=file_id)
    if jobs:
        raise OpenAIError(409, f"File {file_id} is used by queued or running fine-tuning job(s) "
                               f"{', '.join(jobs)}; cancel them first.", param="file_id")
    directory = Path(dataset.storage_path)
    crud.delete_dataset(session, dataset=dataset)
    session.commit()
    if directory.resolve().parent == settings.datasets_dir.resolve():
        remove_dataset(directory)
    return FileDeleted(id=file_id, deleted=True)


@router.get("/{file_id}/content", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "The file as sent."}})
def retrieve_file_content(file_id: FileIdPath, session: SessionDep, principal: PrincipalDep) -> Response:
    """The file's bytes as they were uploaded."""
    dataset = get_file_or_404(session, principal, file_id)
    source = Path(dataset.storage_path) / SOURCE_NAME
    if not source.is_file():
        raise OpenAIError(404, f"{file_id} was uploaded through POST /datasets, which keeps the validated "
                               "rows but not the file as sent; GET /datasets/{id} previews them.",
                          param="file_id")
    return FileResponse(source, media_type="application/octet-stream", filename=dataset.name)
