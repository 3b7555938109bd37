"""What the service's logs hold after a seed user's job: the worker's log is its events and a few
lines (no progress bars, no load-report tables, no FutureWarning), and the API's access log has
the requests that changed something, not the CLI's polling."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.live_service import LiveService

pytestmark = pytest.mark.slow


def test_a_jobs_worker_log_is_its_events_and_the_access_log_leaves_polling_out(
    live: LiveService, finished: dict[str, Any]
) -> None:
    assert finished["job"]["state"] == "succeeded"
    worker = live.worker.log_text()
    assert "a new classification head: classifier.weight, classifier.bias" in worker
    for noise in ("Loading weights", "Writing model shards", "LOAD REPORT", "| MISSING", "FutureWarning"):
        assert noise not in worker, noise
    assert f"job {finished['job']['id']}: model_ready" in worker

    access = live.log_path.read_text(errors="replace")
    assert '"POST /jobs HTTP/1.1" 201' in access
    # `jobs create --watch` read the job and its events over and over: none of it at INFO.
    assert '"GET /jobs/' not in access and '"GET /healthz' not in access
