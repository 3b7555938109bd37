"""The service's log setup: polling requests at DEBUG in the access log, everything else as it was."""

from __future__ import annotations

import logging

import pytest

from core.logging import demote_polling, is_polling


def _access(name: str, level: int) -> tuple[logging.Logger, list[logging.LogRecord]]:
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger.handlers = [handler]
    demote_polling(name)
    demote_polling(name)  # twice: still one filter
    return logger, seen


def _request(logger: logging.Logger, method: str, path: str, status: int) -> None:
    # uvicorn's access line: '%s - "%s %s HTTP/%s" %d'
    logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", method, path, "1.1", status)


@pytest.mark.parametrize(("method", "path", "status", "polling"), [
    ("GET", "/jobs/job_1", 200, True),
    ("GET", "/jobs/job_1/metrics", 200, True),
    ("GET", "/jobs/job_1/events?after=3", 200, True),
    ("GET", "/jobs?limit=5", 200, True),
    ("GET", "/experiments/exp_1", 200, True),
    ("GET", "/healthz", 200, True),
    ("GET", "/readyz", 200, True),
    ("GET", "/jobs/job_1", 404, False),  # an error is worth reading
    ("POST", "/jobs", 201, False),
    ("POST", "/predict", 200, False),
    ("GET", "/datasets/ds_1", 200, False),
    ("GET", "/jobsx", 200, False),
])
def test_which_requests_are_polling(method: str, path: str, status: int, polling: bool) -> None:
    assert is_polling(("127.0.0.1:5000", method, path, "1.1", status)) is polling


def test_polling_is_logged_at_debug_and_the_rest_at_info() -> None:
    logger, seen = _access("tests.access.info", logging.INFO)
    _request(logger, "GET", "/jobs/job_1/events", 200)
    _request(logger, "POST", "/jobs", 201)
    _request(logger, "GET", "/jobs/job_1", 404)
    assert [(r.levelname, r.args[2]) for r in seen] == [("INFO", "/jobs"), ("INFO", "/jobs/job_1")]  # type: ignore[index]

    logger, seen = _access("tests.access.debug", logging.DEBUG)
    _request(logger, "GET", "/jobs/job_1/events", 200)
    _request(logger, "POST", "/jobs", 201)
    assert [(r.levelname, r.args[2]) for r in seen] == [("DEBUG", "/jobs/job_1/events"), ("INFO", "/jobs")]  # type: ignore[index]
