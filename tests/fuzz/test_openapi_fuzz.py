"""schemathesis against the service's own OpenAPI document: every operation, a bounded number of
generated requests each, on PostgreSQL (where out-of-range integers and NUL bytes used to reach
the database as 500s). No 5xx, and no response that breaks the schema the document declares.

Each operation gets data that fits the document (positive), data that does not (negative), and,
where it has path ids, the ids of a real dataset, job and model, so the handlers past the 404 run.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import create_engine, text

from tests.conftest import PG_URL, configure, make_tiny_classifier

pytestmark = pytest.mark.slow

# Per operation and kind of data: ~25 operations x 3 kinds x 30 examples, ~15 s on 2 cores.
MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    """The app on a private PostgreSQL schema, with one real dataset, job and model in it."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.migrate import upgrade_head
    from core.db import get_engine, session_scope
    from core.settings import get_settings
    from core.tables import TunedModel

    schema_name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema_name}"'))
    configure(monkeypatch, tmp_path, f"{PG_URL}?options=-csearch_path%3D{schema_name}",
              broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    settings = get_settings()
    upgrade_head(settings.database_url)
    app = create_app()
    with TestClient(app) as client:
        rows = "text,label\n" + "".join(f"good film {i},pos\nbad film {i},neg\n" for i in range(10))
        ds = client.post("/datasets", files={"file": ("a.csv", rows.encode())})
        assert ds.status_code == 201, ds.text
        job = client.post("/jobs", json={"dataset_id": ds.json()["id"]})
        assert job.status_code == 201, job.text
        # Ended, so that its event stream ends too (no worker runs here).
        assert client.post(f"/jobs/{job.json()['id']}/cancel").status_code == 200
        model_dir = make_tiny_classifier(settings.models_dir / "models" / "mdl_fuzz", ["neg", "pos"])
        with session_scope() as session:
            session.add(TunedModel(id="mdl_fuzz", job_id=job.json()["id"], base_model="tiny",
                                   task="single_label", labels=["neg", "pos"], metrics={},
                                   max_seq_length=32, path=str(model_dir)))
        ids = {"dataset_id": ds.json()["id"], "job_id": job.json()["id"], "model_id": "mdl_fuzz",
               # The /v1 names of the same objects (a dataset is a file there).
               "file_id": ds.json()["id"], "fine_tuning_job_id": job.json()["id"], "model": "mdl_fuzz"}
        yield app, ids
    get_engine.cache_clear()
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema_name}" CASCADE'))
    admin.dispose()


def _strategies(operation: Any, ids: dict[str, str]) -> Iterator[tuple[str, Any]]:
    yield "positive", operation.as_strategy(GenerationMode.POSITIVE)
    yield "negative", operation.as_strategy(GenerationMode.NEGATIVE)
    names = {p.name for p in operation.path_parameters}
    # Deleting the real objects would leave the other operations only 404s to explore.
    if names and operation.method.upper() != "DELETE":
        yield "real ids", operation.as_strategy(
            GenerationMode.POSITIVE, path_parameters={n: ids[n] for n in names if n in ids})


def _fuzz(strategy: Any, label: str, statuses: Counter[str]) -> None:
    # No shrinking: a failure is reported as found, which bounds the time.
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case: Any) -> None:
        response = case.call_and_validate(checks=CHECKS)
        statuses[f"{label} {response.status_code}"] += 1

    check()


@pytest.mark.timeout(300)
def test_no_5xx_and_every_response_matches_the_document(api: tuple[Any, dict[str, str]]) -> None:
    app, ids = api
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: dict[str, str] = {}
    statuses: Counter[str] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        for kind, strategy in _strategies(operation, ids):
            label = f"{operation.label} ({kind})"
            try:
                _fuzz(strategy, label, statuses)
            except Unsatisfiable:  # no parameters at all: there is no invalid request to make
                assert kind == "negative" and not operation.path_parameters, label
            except BaseException as e:  # every operation runs; all failures are reported together
                failures[label] = f"{type(e).__name__}: {e}"[:3000]
    operations = {key.split(" (")[0] for key in statuses}
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert len(operations) >= 18, sorted(operations)
    # The real ids reached the handlers: these answered 200 at least once.
    for reached in ("GET /jobs/{job_id} (real ids) 200", "GET /datasets/{dataset_id} (real ids) 200",
                    "GET /models/{model_id} (real ids) 200"):
        assert statuses[reached], sorted(statuses)
