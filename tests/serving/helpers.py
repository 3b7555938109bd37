"""Tiny tuned models for serving tests: built once per test process, copied per test, and
registered as `models` rows the way the worker leaves them."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from tests.conftest import make_tiny_classifier

KOREAN_LABELS = ["정상", "욕설", "성희롱"]
MULTI_LABELS = ["toxic", "insult", "threat"]


@lru_cache
def _template(task: str, seed: int) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"tiny-{task}-"))
    atexit.register(shutil.rmtree, root, True)
    labels = MULTI_LABELS if task == "multi_label" else KOREAN_LABELS
    return make_tiny_classifier(root / "model", labels, multi_label=task == "multi_label", seed=seed)


def tiny_model_dir(
    directory: Path,
    *,
    task: str = "single_label",
    seed: int = 0,
    thresholds: dict[str, float] | None = None,
    max_seq_length: int | None = 128,
) -> Path:
    """A copy of a tiny classifier with its tuneserve.json, as a finished job writes it."""
    from core.store import write_model_meta

    shutil.copytree(_template(task, seed), directory)
    labels = MULTI_LABELS if task == "multi_label" else KOREAN_LABELS
    write_model_meta(
        directory,
        {
            "task": task,
            "labels": labels,
            "thresholds": thresholds,
            "max_seq_length": max_seq_length,
            "base_model": "tiny-bert",
        },
    )
    return directory


def register_model(
    settings: Any,
    *,
    task: str = "single_label",
    seed: int = 0,
    thresholds: dict[str, float] | None = None,
    max_seq_length: int | None = 128,
    **row: Any,
) -> str:
    """Build a tiny model in the store and insert its `models` row; returns the model id."""
    from core.db import session_scope
    from core.store import dir_size_bytes, model_dir
    from core.tables import TunedModel, new_id

    model_id = new_id("mdl")
    directory = tiny_model_dir(
        model_dir(settings.models_dir, model_id),
        task=task, seed=seed, thresholds=thresholds, max_seq_length=max_seq_length,
    )
    labels = MULTI_LABELS if task == "multi_label" else KOREAN_LABELS
    with session_scope() as session:
        session.add(
            TunedModel(
                id=model_id,
                job_id=row.pop("job_id", None),
                base_model="tiny-bert",
                task=task,
                labels=labels,
                thresholds=thresholds,
                metrics=row.pop("metrics", {"f1_macro": 0.5}),
                max_seq_length=max_seq_length,
                path=str(directory),
                size_bytes=dir_size_bytes(directory),
                **row,
            )
        )
    return model_id
