"""`tuneserve datasets`: upload, list, show and delete datasets."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group

from app.client import output as out
from app.client.api import Api
from app.client.commands.common import JsonOpt, add_list_command, api_of, calls, console, err, print_or_json

datasets_app = typer.Typer(help="Upload, list, show and delete datasets.", no_args_is_help=True)

InputFile = Annotated[Path | None, typer.Option(exists=True, dir_okay=False)]


def upload(api: Api, train: Path, validation: Path | None = None, test: Path | None = None,
           form: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST /datasets with the training file and, when given, the validation and test files."""
    with ExitStack() as stack:
        files = {"file": (train.name, stack.enter_context(train.open("rb")))}
        for field, path in (("validation_file", validation), ("test_file", test)):
            if path is not None:
                files[field] = (path.name, stack.enter_context(path.open("rb")))
        data = {k: str(v) for k, v in (form or {}).items() if v is not None}
        return dict(api.post("/datasets", files=files, data=data))


def upload_for_training(api: Api, train: Path, validation: Path | None) -> str:
    """`--train FILE` of `jobs create` and `experiments create`: upload it, say what it became
    (on stderr: stdout carries the job's id or JSON), return the dataset's id."""
    ds = upload(api, train, validation)
    err.print(f"uploaded {train.name} as dataset {ds['id']}: {ds['task']}, labels {ds['labels']}")
    return str(ds["id"])


def _summary(ds: dict[str, Any]) -> Group:
    return Group(out.fields(f"dataset {ds['id']}", [
        ("name", ds["name"]), ("task", ds["task"]), ("format", f"{ds['format']} ({ds['encoding']})"),
        ("text column", ds.get("text_column")), ("label columns", ds.get("label_columns")),
        ("labels", ds.get("labels")), ("rows", ds.get("num_rows")),
        ("rejected rows", len(ds.get("rejected_rows") or [])),
    ]), *(f"[yellow]warning:[/] {warning}" for warning in ds.get("warnings") or []))


def _details(ds: dict[str, Any]) -> Group:
    """The summary, the label distribution, rejected rows, the validation report, a preview."""
    parts: list[Any] = [_summary(ds)]
    distribution = ds.get("label_distribution") or {}
    if distribution:
        labels = sorted({label for split in distribution.values() for label in split})
        parts.append(out.table("label distribution", ["split", *labels], (
            [split, *(counts.get(label, 0) for label in labels)] for split, counts in distribution.items())))
    rejected = ds.get("rejected_rows") or []
    if rejected:
        parts.append(out.table(f"rejected rows ({len(rejected)}; first 10)", ["row", "reason"],
                               ([r["row"], r["reason"]] for r in rejected[:10])))
    report = ds.get("report") or {}
    if report:
        parts.append(out.fields("validation report", report.items()))
    preview = ds.get("preview") or []
    if preview:
        columns = list(preview[0])
        parts.append(out.table("preview", columns, ([row.get(c) for c in columns] for row in preview)))
    return Group(*parts)


@datasets_app.command("upload")
@calls
def upload_dataset(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="csv, tsv, json, jsonl, parquet")],
    validation: InputFile = None,
    test: InputFile = None,
    name: str | None = None,
    task: Annotated[str | None, typer.Option(help="single_label, multi_label or chat")] = None,
    text_column: str | None = None,
    label_column: Annotated[str | None, typer.Option(help="one column, or several comma-separated")] = None,
    validation_split: float | None = None,
    seed: int | None = None,
    json_: JsonOpt = False,
) -> None:
    """Upload a file; says which columns, task and labels were understood and what is wrong."""
    ds = upload(api_of(ctx), file, validation, test, {
        "name": name, "task": task, "text_column": text_column, "label_column": label_column,
        "validation_split": validation_split, "seed": seed})
    print_or_json(ds, json_, _summary)


add_list_command(datasets_app, "/datasets", "datasets", ["id", "name", "task", "rows", "labels", "created"],
                 lambda d: [d["id"], d["name"], d["task"], d["num_rows"], d["labels"],
                            out.when(d["created_at"])])


@datasets_app.command("show")
@calls
def show_dataset(ctx: typer.Context, dataset_id: str, json_: JsonOpt = False) -> None:
    """One dataset: what was understood, the validation report and a preview."""
    print_or_json(api_of(ctx).get(f"/datasets/{dataset_id}"), json_, _details)


@datasets_app.command("delete")
@calls
def delete_dataset(ctx: typer.Context, dataset_id: str) -> None:
    """Delete a dataset and its files (refused while a job uses it)."""
    api_of(ctx).delete(f"/datasets/{dataset_id}")
    console.print(f"deleted {dataset_id}")
