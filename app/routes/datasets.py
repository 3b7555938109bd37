"""The /datasets resource: upload labelled data and learn what the service understood."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.auth import Principal
from app.crud import datasets as crud
from app.crud import jobs as job_crud
from app.deps import Authenticated, PrincipalDep, SessionDep, SettingsDep
from app.ingest import IngestError, IngestOptions, IngestResult, SourceFile, UploadTooLarge, ingest
from app.ingest.guards import ReadLimits
from app.ingest.infer import TASKS
from app.ingest.storage import preview, remove_dataset
from app.ingest.upload import SavedUpload, save_upload
from app.limits import UploadLimitRoute, upload_too_large
from app.schemas.common import NO_NUL_PATTERN, DatasetIdPath, Limit, Offset, errors, reject_unstorable
from app.schemas.datasets import DatasetDetail, DatasetPublic, DatasetsPublic
from core.settings import Settings
from core.tables import Dataset, new_id

router = APIRouter(prefix="/datasets", tags=["datasets"], route_class=UploadLimitRoute,
                   dependencies=[Authenticated], responses=errors(400, 401, 404, 409, 413, 422))

FileField = Annotated[UploadFile | None, File()]
# What _options accepts, as patterns the OpenAPI document states and the route checks first, so
# the two cannot disagree: blank (the default), else a task name, a fraction strictly between 0
# and 1 (at most 15 decimals: more can round to 1.0), a seed from 0 to 2**32 - 1.
_BLANK = "[ \\t]*"
TASK_PATTERN = f"^{_BLANK}(?:{'|'.join(TASKS)})?{_BLANK}$"
SPLIT_PATTERN = (f"^{_BLANK}(?:0?\\.(?=[0-9]*[1-9])[0-9]{{1,15}}"  # 0.2, .05
                 # 1e-05, as Python writes a float below 1e-4 (the CLI sends str(float))
                 "|[1-9](?:\\.[0-9]{1,14})?[eE]-0?(?:[1-9]|[1-9][0-9]|[12][0-9]{2}|300)"
                 f")?{_BLANK}$")
SEED_PATTERN = (f"^{_BLANK}(?:0*(?:[0-9]{{1,9}}|[1-3][0-9]{{9}}|4[01][0-9]{{8}}|42[0-8][0-9]{{7}}"
                "|429[0-3][0-9]{6}|4294[0-8][0-9]{5}|42949[0-5][0-9]{4}|429496[0-6][0-9]{3}|4294967[01][0-9]{2}"
                f"|42949672[0-8][0-9]|429496729[0-5]))?{_BLANK}$")
_TEXT = {"pattern": NO_NUL_PATTERN}
# Form fields are bounded like JSON fields: column names and labels end up in SQL rows.
NameField = Annotated[str | None, Form(max_length=255, description="Defaults to the file name.",
                                       json_schema_extra=_TEXT)]
TaskField = Annotated[str | None, Form(max_length=32, json_schema_extra={"pattern": TASK_PATTERN},
                                       description="single_label, multi_label or chat; inferred if absent.")]
TextColumnField = Annotated[str | None, Form(max_length=1000, description="Inferred if absent.",
                                             json_schema_extra=_TEXT)]
LabelColumnField = Annotated[str | None, Form(
    max_length=10_000, description="One column, or several comma-separated 0/1 columns (one per label).",
    json_schema_extra=_TEXT)]
SplitField = Annotated[str | None, Form(max_length=32, json_schema_extra={"pattern": SPLIT_PATTERN},
                                        description="Fraction held out when no validation_file; 0.2.")]
SeedField = Annotated[str | None, Form(max_length=32, json_schema_extra={"pattern": SEED_PATTERN},
                                       description="Seed of the validation split; 42.")]
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are 32-bit


def _blank_to_none(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


def _check_text_fields(**fields: str | None) -> None:
    for field_name, value in fields.items():
        if value is None:
            continue
        try:
            reject_unstorable(value)
        except ValueError as e:
            raise HTTPException(422, f"form field {field_name} {e}") from e


def _options(task: str | None, text_column: str | None, label_column: str | None,
             validation_split: str | None, seed: str | None) -> IngestOptions:
    """The form fields checked, each failure a 422 that says what to send instead."""
    if task is not None and not re.fullmatch(TASK_PATTERN, task):
        raise HTTPException(422, f"task {task!r} is not one of {', '.join(TASKS)}; leave it out to infer it")
    task = _blank_to_none(task)
    split_text, seed_text = _blank_to_none(validation_split), _blank_to_none(seed)
    if validation_split is not None and not re.fullmatch(SPLIT_PATTERN, validation_split):
        split_text = "?"
    if seed is not None and not re.fullmatch(SEED_PATTERN, seed):
        seed_text = "?"
    try:
        fraction = float(split_text) if split_text else 0.2
    except ValueError:
        fraction = -1.0
    if not 0.0 < fraction < 1.0:
        raise HTTPException(
            422, "validation_split must be a number between 0 and 1 (exclusive), e.g. 0.2; "
            f"got {validation_split!r}",
        )
    try:
        seed_value = int(seed_text) if seed_text else 42
    except ValueError:
        seed_value = -1
    if not 0 <= seed_value <= MAX_SEED:
        raise HTTPException(422, f"seed must be an integer from 0 to {MAX_SEED}, e.g. 42; got {seed!r}")
    labels = [c.strip() for c in (label_column or "").split(",") if c.strip()]
    return IngestOptions(task=task, text_column=_blank_to_none(text_column), label_columns=labels,
                         validation_split=fraction, seed=seed_value)


async def _save_all(uploads: dict[str, UploadFile | None], directory: Path,
                    settings: Settings) -> dict[str, SavedUpload]:
    saved: dict[str, SavedUpload] = {}
    budget = settings.max_upload_bytes
    for field_name, upload in uploads.items():
        if upload is None:
            continue
        try:
            saved[field_name] = await save_upload(
                upload, filename=upload.filename, dest=directory / field_name, limit_bytes=budget,
            )
        except UploadTooLarge as e:
            raise UploadTooLarge(upload_too_large(settings)) from e
        budget -= saved[field_name].size_bytes
    return saved


def _source(saved: dict[str, SavedUpload], field_name: str) -> SourceFile | None:
    upload = saved.get(field_name)
    return SourceFile(upload.path, upload.filename) if upload else None


@router.post("", response_model=DatasetPublic, status_code=201)
async def create_dataset(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    file: FileField = None,
    validation_file: FileField = None,
    test_file: FileField = None,
    name: NameField = None,
    task: TaskField = None,
    text_column: TextColumnField = None,
    label_column: LabelColumnField = None,
    validation_split: SplitField = None,
    seed: SeedField = None,
) -> Dataset:
    """Upload labelled data; the response says what was understood and what is wrong with it."""
    if file is None:
        raise HTTPException(422, "no training data: send the file as the multipart form field 'file'")
    _check_text_fields(name=name, task=task, text_column=text_column, label_column=label_column,
                       validation_split=validation_split, seed=seed)
    options = _options(task, text_column, label_column, validation_split, seed)
    notes = []
    if validation_file is not None and _blank_to_none(validation_split) is not None:
        notes.append("validation_split was ignored: the validation_file gives the validation rows")
    dataset_id = new_id("ds")
    directory = settings.datasets_dir / dataset_id
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    uploads = {"file": file, "validation_file": validation_file, "test_file": test_file}
    try:
        # The uploads live only as long as this request: the directory goes when the block ends.
        with tempfile.TemporaryDirectory(dir=settings.uploads_dir) as tmp:
            saved = await _save_all(uploads, Path(tmp), settings)
            result = await run_in_threadpool(
                ingest, train=SourceFile(saved["file"].path, saved["file"].filename),
                validation=_source(saved, "validation_file"), test=_source(saved, "test_file"),
                options=options, directory=directory, max_rows=settings.max_dataset_rows,
                limits=ReadLimits(max_columns=settings.max_dataset_columns,
                                  max_line_bytes=settings.max_line_kb * 1024,
                                  max_cell_chars=settings.max_cell_chars),
            )
    except UploadTooLarge as e:
        raise HTTPException(413, str(e)) from e
    except IngestError as e:
        raise HTTPException(422, str(e)) from e
    try:
        dataset = crud.create_dataset(session, values=_row_values(
            session, dataset_id=dataset_id, directory=directory, result=result, upload=saved["file"],
            raw_filename=file.filename, name=_blank_to_none(name), notes=notes, principal=principal,
        ))
        session.commit()
    except BaseException:
        session.rollback()
        remove_dataset(directory)
        raise
    return dataset


def _row_values(session: SessionDep, *, dataset_id: str, directory: Path, result: IngestResult,
                upload: SavedUpload, raw_filename: str | None, name: str | None,
                notes: list[str], principal: Principal) -> dict[str, Any]:
    warnings = list(result.warnings) + notes
    if raw_filename and upload.filename != raw_filename.strip():
        warnings.append(f"file name {raw_filename!r} was reduced to {upload.filename!r}")
    earlier = crud.find_by_sha256(session, sha256=upload.sha256, principal=principal)
    if earlier is not None:
        warnings.append(
            f"identical content was uploaded before as dataset {earlier.id} ({earlier.name!r}); stored again "
            f"as a new dataset: use {earlier.id} instead if you meant the same data"
        )
    return {
        "id": dataset_id, "tenant_id": principal.tenant_id, "name": (name or upload.filename)[:255],
        "task": result.task,
        "format": result.format, "encoding": result.encoding, "text_column": result.text_column,
        "label_columns": result.label_columns, "labels": result.labels, "num_rows": result.num_rows,
        "label_distribution": result.label_distribution, "rejected_rows": result.rejected_rows,
        "warnings": warnings, "report": result.report, "sha256": upload.sha256,
        "size_bytes": upload.size_bytes, "storage_path": str(directory.resolve()),
    }


@router.get("", response_model=DatasetsPublic)
def list_datasets(
    session: SessionDep,
    principal: PrincipalDep,
    skip: Offset = 0,
    limit: Limit = 100,
) -> DatasetsPublic:
    """List datasets, newest first."""
    rows, count = crud.list_datasets(session, principal=principal, limit=limit, offset=skip)
    return DatasetsPublic(data=[DatasetPublic.model_validate(r) for r in rows], count=count)


def _get_or_404(session: SessionDep, principal: Principal, dataset_id: str) -> Dataset:
    dataset = principal.visible(crud.get_dataset(session, dataset_id=dataset_id))
    if dataset is None:
        raise HTTPException(404, f"dataset {dataset_id!r} not found; GET /datasets lists the existing ones")
    return dataset


@router.get("/{dataset_id}", response_model=DatasetDetail)
def read_dataset(dataset_id: DatasetIdPath, session: SessionDep, settings: SettingsDep,
                 principal: PrincipalDep) -> DatasetDetail:
    """One dataset with its report and a preview of its first training rows."""
    dataset = _get_or_404(session, principal, dataset_id)
    rows = preview(Path(dataset.storage_path), rows=settings.preview_rows, task=dataset.task,
                   labels=dataset.labels)
    return DatasetDetail(**DatasetPublic.model_validate(dataset).model_dump(), preview=rows)


@router.delete("/{dataset_id}", status_code=204, response_model=None)
def delete_dataset(dataset_id: DatasetIdPath, session: SessionDep, settings: SettingsDep,
                   principal: PrincipalDep) -> Response:
    """Delete a dataset and its files, unless a queued or running job uses it. Finished jobs
    keep their history and models (their `dataset_id` becomes null)."""
    dataset = _get_or_404(session, principal, dataset_id)
    jobs = job_crud.active_job_ids_using(session, dataset_id=dataset_id)
    if jobs:
        raise HTTPException(409, _in_use(dataset_id, jobs))
    directory = Path(dataset.storage_path)
    crud.delete_dataset(session, dataset=dataset)
    session.commit()
    # Only ever remove a directory inside the datasets dir, whatever the row says.
    if directory.resolve().parent == settings.datasets_dir.resolve():
        remove_dataset(directory)
    return Response(status_code=204)


def _in_use(dataset_id: str, jobs: list[str]) -> str:
    return (f"dataset {dataset_id} is used by queued or running job(s) {', '.join(jobs)}; cancel them "
            "(POST /jobs/{id}/cancel) or wait for them to finish, then delete it")
