"""schemathesis against the service's own OpenAPI document: every operation, a bounded number of
generated requests each, on PostgreSQL (where out-of-range integers and NUL bytes used to reach
the database as 500s). No 5xx, no response that breaks the schema the document declares, and
requests held to the document both ways: data that fits it is not refused as invalid (the
document states every constraint the server enforces) and data that breaks it is refused.

Each operation gets data that fits the document (positive), data that does not (negative), and,
where it has path ids, the ids of a real dataset, job and model, so the handlers past the 404 run.
"""

from __future__ import annotations

import json
import re
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
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import create_engine, text

from tests.conftest import PG_URL, configure, make_tiny_classifier

pytestmark = pytest.mark.slow

# Per operation and kind of data: ~25 operations x 3 kinds x 30 examples (about 1,900 cases).
MAX_EXAMPLES = 30

# Refusals of schema-valid requests that JSON Schema cannot state, so the document says them in
# words (the descriptions) and the check lets them pass, each known by the words of its 422:
# what an uploaded file holds (its format, columns, labels; the form fields are patterns), one
# field having to divide another, and the order of chat turns. Any other refusal of data that
# fits the document fails.
_FORM_FIELD_DETAILS = ("no training data", "task ", "validation_split ", "seed ", "form field ")
_UNSTATABLE: dict[str, tuple[str, ...]] = {
    "POST /jobs": ("must divide batch_size",),
    # A search space: one end below the other, a log range above 0, a grid of lists only, and
    # each end a valid job setting (search.space.<name>: ...), in words in its description.
    "POST /experiments": ("must divide batch_size", "must be below high", "a log range",
                          "cannot be searched", "the grid sampler", "search.space."),
    "POST /generate": ("the last message must be the user's", "a system message may only come first"),
    # With no TUNESERVE_DEVICE_MEMORY_GIB on the server, gpu_memory_gib is needed: a setting's doing.
    "POST /plan": ("Say how much GPU memory to plan for", "is not in the local Hugging Face cache",
                   "is neither a local directory nor a Hugging Face hub name", "must divide batch_size"),
}
# /v1 answers OpenAI's error object (400); the same kinds of refusal, in its words.
_UNSTATABLE_V1: dict[str, tuple[str, ...]] = {
    "POST /v1/chat/completions": ("A message has no text", "The last message must be the user's",
                                  "may only come first", "stream_options is only allowed with stream=true",
                                  # fields OpenAI has and tuneserve refuses in words, never ignores
                                  "is not supported by tuneserve",
                                  # TUNESERVE_GENERATE_MAX_NEW_TOKENS, a setting of the server
                                  "is above the limit of"),
    # What the uploaded file holds (its format, lines, rows), as on POST /datasets.
    "POST /v1/files": ("Invalid file", "line ", "row "),
    "POST /v1/fine_tuning/jobs": ("are not supported by tuneserve",),
}


def _unstatable(case: Any, response: Any) -> bool:
    label = f"{case.method.upper()} {case.path}"
    if response.status_code == 400 and label in _UNSTATABLE_V1:
        message = str((response.json().get("error") or {}).get("message", ""))
        return any(words in message for words in _UNSTATABLE_V1[label])
    if response.status_code != 422:
        return False
    detail = json.dumps(response.json().get("detail"))
    if label == "POST /datasets":  # a str detail about the file's content, not a form field
        return isinstance(response.json().get("detail"), str) and not detail.strip('"').startswith(
            _FORM_FIELD_DETAILS)
    return any(words in detail for words in _UNSTATABLE.get(label, ()))


def stated_data_acceptance(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, less the refusals listed in _UNSTATABLE."""
    if _unstatable(case, response):
        return None
    return positive_data_acceptance(ctx, response, case)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, stated_data_acceptance, negative_data_rejection]


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
        # Resume and cancel get a job of their own: a resumed job stays queued (no worker runs
        # here), and the event stream of the shared one must end.
        moved = client.post("/jobs", json={"dataset_id": ds.json()["id"]})
        assert moved.status_code == 201, moved.text
        assert client.post(f"/jobs/{moved.json()['id']}/cancel").status_code == 200
        ids = {"dataset_id": ds.json()["id"], "job_id": job.json()["id"], "model_id": "mdl_fuzz",
               "moved_job_id": moved.json()["id"],
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
        moves = operation.path.endswith(("/resume", "/cancel")) and operation.path.startswith("/jobs")
        real = {n: ids["moved_job_id" if moves and n == "job_id" else n] for n in names if n in ids}
        yield "real ids", operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real)


def _fuzz(strategy: Any, label: str, statuses: Counter[str]) -> None:
    # No shrinking: a failure is reported as found, which bounds the time.
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case: Any) -> None:
        response = case.call_and_validate(checks=CHECKS)
        statuses[f"{label} {response.status_code}"] += 1

    check()


def _describe(error: BaseException) -> str:
    """The error with the failures it groups (hypothesis' FlakyFailure says little itself)."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, BaseExceptionGroup):
        text += "".join(f"\n  {_describe(inner)}" for inner in error.exceptions)
    return text


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
                failures[label] = _describe(e)[:3000]
    operations = {key.split(" (")[0] for key in statuses}
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert len(operations) >= 18, sorted(operations)
    # The real ids reached the handlers: these answered 200 at least once.
    for reached in ("GET /jobs/{job_id} (real ids) 200", "GET /datasets/{dataset_id} (real ids) 200",
                    "GET /models/{model_id} (real ids) 200"):
        assert statuses[reached], sorted(statuses)


def test_options_and_405_list_exactly_the_documented_methods(api: tuple[Any, dict[str, str]]) -> None:
    """RFC 9110 on every documented path: OPTIONS is a 204 whose Allow lists the path's methods
    (the document's, plus OPTIONS), and a method the path lacks is a 405 with that same Allow."""
    from fastapi.testclient import TestClient

    app, ids = api
    document = app.openapi()
    with TestClient(app) as client:
        for template, methods in document["paths"].items():
            names = re.findall(r"{(\w+)}", template)
            path = template.format(**{name: ids.get(name, "x_1") for name in names})
            declared = {m.upper() for m in methods} | {"OPTIONS"}
            options = client.options(path)
            assert options.status_code == 204, (template, options.status_code)
            assert set(options.headers["allow"].split(", ")) == declared, (template, options.headers["allow"])
            missing = next(m for m in ("PUT", "PATCH", "DELETE", "POST") if m not in declared)
            refused = client.request(missing, path)
            assert refused.status_code == 405, (template, missing, refused.status_code)
            assert refused.headers["allow"] == options.headers["allow"], template
