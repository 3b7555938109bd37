"""What a killed process left behind is removed at the API's start, once it is old enough."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from core.db import session_scope
from core.tables import Dataset, TunedModel


def _aged(path: Path, age_s: float) -> Path:
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_orphans_older_than_an_hour_go_and_everything_else_stays(settings: Any) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    datasets, models = settings.datasets_dir, settings.models_dir / "models"
    with session_scope() as session:
        session.add(Dataset(id="ds_kept", name="d", task="single_label", format="csv", encoding="utf-8",
                            sha256="0" * 64, storage_path=str(datasets / "ds_kept")))
        session.add(TunedModel(id="mdl_kept", base_model="b", task="single_label",
                               path=str(models / "mdl_kept")))
    kept = [datasets / "ds_kept", models / "mdl_kept"]      # old, but their rows exist
    gone = [
        settings.uploads_dir / "tmpabc",                     # a request killed mid-upload
        datasets / ".ds_dead.partial",                       # a split being written
        datasets / "ds_norow",                               # renamed into place, row never committed
        models / "mdl_norow",                                # exported, row never committed
    ]
    young = datasets / "ds_in_flight"                        # another replica may be writing it now
    for path in (*kept, *gone, young):
        path.mkdir(parents=True, exist_ok=True)
    for path in (*kept, *gone):
        _aged(path, 7200)

    with TestClient(create_app()) as client:
        assert client.get("/healthz").status_code == 200

    assert [p for p in gone if p.exists()] == []
    assert all(p.is_dir() for p in kept) and young.is_dir()
