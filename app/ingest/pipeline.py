"""From uploaded files to a stored dataset and its report: read -> infer -> extract -> label
-> split -> report -> write. Synchronous and CPU-bound: the route runs it in a thread."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from app.ingest import report
from app.ingest.errors import IngestError
from app.ingest.extract import Examples, extract
from app.ingest.guards import ReadLimits
from app.ingest.infer import Plan, plan_columns
from app.ingest.labels import encode, label_order, merge_numeric_spellings
from app.ingest.reader import Table, read_table
from app.ingest.split import split_indices, stratify_keys
from app.ingest.storage import split_table, write_dataset

# Form field that carried each file, by the split it feeds.
SOURCE_FIELDS = {"train": "file", "validation": "validation_file", "test": "test_file"}


@dataclass(frozen=True)
class IngestOptions:
    task: str | None = None
    text_column: str | None = None
    label_columns: list[str] = field(default_factory=list)
    validation_split: float = 0.2
    seed: int = 42


@dataclass(frozen=True)
class SourceFile:
    path: Path
    filename: str  # as the user named it (sanitised), for messages


@dataclass
class IngestResult:
    task: str
    format: str
    encoding: str
    text_column: str | None
    label_columns: list[str]
    labels: list[str]
    num_rows: dict[str, int]
    label_distribution: dict[str, dict[str, int]]
    rejected_rows: list[dict[str, Any]]
    warnings: list[str]
    report: dict[str, Any]


@dataclass
class _Split:
    examples: Examples
    labels: list[list[int]]


def ingest(
    *, train: SourceFile, validation: SourceFile | None, test: SourceFile | None,
    options: IngestOptions, directory: Path, max_rows: int, limits: ReadLimits | None = None,
) -> IngestResult:
    """Validate the files, write the splits into `directory`, and say what was found."""
    warnings: list[str] = []
    files: dict[str, dict[str, Any]] = {}
    rejected: list[tuple[str, int, str]] = []
    given = {"train": train, "validation": validation, "test": test}
    sources = {split: source for split, source in given.items() if source is not None}
    tables: dict[str, Table] = {}
    total_rows = 0
    for split, source in sources.items():
        tables[split] = table = read_table(source.path, source.filename, limits)
        total_rows += len(table.frame)
        if total_rows > max_rows:
            raise IngestError(
                f"the upload has more than {max_rows} rows (TUNESERVE_MAX_DATASET_ROWS): upload a sample, "
                "or raise the limit on the server"
            )
        warnings.extend(table.warnings)
        files[split] = {"field": SOURCE_FIELDS[split], "name": source.filename, "format": table.format,
                        "encoding": table.encoding, "rows_read": len(table.frame)}

    plan = plan_columns(tables["train"].frame, task=options.task, text_column=options.text_column,
                        label_columns=options.label_columns)
    warnings.extend(plan.warnings)
    extracted = {split: extract(t.frame, plan, sources[split].filename)
                 for split, t in tables.items()}
    _require_rows(extracted["train"], train.filename)
    merge_numeric_spellings(list(extracted.values()), plan, warnings)
    labels = label_order(extracted["train"], plan)

    splits: dict[str, _Split] = {}
    for split, examples in extracted.items():
        if plan.task == "chat":
            splits[split] = _Split(examples, [])
        else:
            kept, encoded = encode(examples, labels, sources[split].filename)
            splits[split] = _Split(kept, encoded)
        field_name = SOURCE_FIELDS[split]
        rejected.extend((field_name, row, reason) for row, reason in splits[split].examples.rejected)
        if split != "train":
            _require_rows(splits[split].examples, sources[split].filename)

    split_note = _make_validation(splits, plan, labels, options, warnings)
    order: list[str] = [s for s in ("train", "validation", "test") if s in splits]
    listed, kinds = report.rejections(rejected, warnings)
    result_report = _report(splits, order, plan, warnings, files, split_note)
    result_report |= {"rejected_total": len(rejected), "rejected_by_reason": kinds}
    distribution = {s: report.distribution(splits[s].labels, labels) for s in order}
    if plan.task != "chat":
        result_report["imbalance_ratio"] = report.imbalance(distribution["train"], warnings)

    write_dataset(directory, {s: _table(splits[s], plan) for s in order})
    return IngestResult(
        task=plan.task, format=files["train"]["format"], encoding=files["train"]["encoding"],
        text_column=plan.text_column, label_columns=plan.label_columns, labels=labels,
        num_rows={s: len(splits[s].examples) for s in order}, label_distribution=distribution,
        rejected_rows=listed, warnings=warnings, report=result_report,
    )


def _require_rows(examples: Examples, shown_name: str) -> None:
    if len(examples) == 0 and examples.rejected:
        row, reason = examples.rejected[0]
        raise IngestError(
            f"no usable rows in '{shown_name}': all {len(examples.rejected)} rows were rejected "
            f"(row {row}: {reason}). Fix those rows, or name the right columns with text_column/label_column"
        )


def _make_validation(splits: dict[str, _Split], plan: Plan, labels: list[str], options: IngestOptions,
                     warnings: list[str]) -> dict[str, Any]:
    """Carve validation out of train unless a validation file was given; stored once."""
    if "validation" in splits:
        return {"method": "validation_file"}
    train = splits["train"]
    keys = stratify_keys(train.labels, plan.task == "multi_label")
    train_at, validation_at, warning = split_indices(
        len(train.examples), validation_fraction=options.validation_split, seed=options.seed,
        keys=keys, names=labels,
    )
    if warning:
        warnings.append(warning)
    splits["validation"] = _Split(train.examples.keep(validation_at), [train.labels[i] for i in validation_at]
                                  if train.labels else [])
    splits["train"] = _Split(train.examples.keep(train_at), [train.labels[i] for i in train_at]
                             if train.labels else [])
    return {"method": "stratified" if keys is not None and warning is None else "random",
            "validation_split": options.validation_split, "seed": options.seed}


def _report(splits: dict[str, _Split], order: list[str], plan: Plan, warnings: list[str],
            files: dict[str, Any], split_note: dict[str, Any]) -> dict[str, Any]:
    train = splits["train"]
    # Duplicates are counted over the whole training file, before or after the split.
    from_file = [train] + ([splits["validation"]] if split_note["method"] != "validation_file" else [])
    rows = [r for s in from_file for r in s.examples.rows]
    texts = [t for s in from_file for t in s.examples.texts]
    labels = [lab for s in from_file for lab in s.labels]
    dup = report.duplicates(rows, texts, labels, warnings, "the training file")
    # Overlap of a split carved from the file is those duplicates again: warn only for files.
    overlaps = {s: report.overlap(train.examples.texts, splits[s].examples.texts, s,
                                  warnings if s == "test" or split_note["method"] == "validation_file"
                                  else [])
                for s in order if s != "train"}
    return {
        "accepted_rows": sum(len(splits[s].examples) for s in order),
        "duplicates": dup,
        "overlap_with_train": overlaps,
        "text_length_chars": report.text_lengths(train.examples.texts),
        "inference": plan.reasons,
        "label_shape": plan.label_shape,
        "answer_column": plan.answer_column,
        "chat_format": plan.chat_format,
        "split": split_note,
        "files": files,
    }


def _table(split: _Split, plan: Plan) -> pa.Table:
    return split_table(split.examples, split.labels, plan.task)
