"""What the service's logs hold, set once by each entry point (the API app and the Celery
worker call `quiet_libraries`; the API also `demote_polling`): a job's log is its events and a
few lines, not library noise.

- Progress bars off: transformers' "Loading weights" and "Writing model shards", the hub's
  downloads and datasets' maps are tqdm bars a log file shows as hundreds of lines at WARNING.
- transformers' LOAD REPORT table ("classifier.weight | MISSING", one table per load) is
  dropped: the classification task logs one line naming the newly initialised weights instead.
- Warnings nobody running the service can act on (a library's FutureWarning about its own
  internals) are filtered by message; every other warning still shows.
- Polling (GETs of jobs, experiments, metrics, events, health), which a dashboard or `jobs
  watch` sends every second, goes to DEBUG in uvicorn's access log; requests that change
  something, and any poll answered with an error, stay at INFO.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

# Set before the libraries are imported (they read them at import), and applied again below
# for a library that is already imported.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
# FutureWarnings raised inside libraries about their own internals: nothing in tuneserve's
# configuration changes them, so they only teach users to ignore warnings.
UNACTIONABLE_WARNINGS = (
    # peft asks every model for this attribute; transformers 5 deprecates its name.
    r"`is_gradient_checkpointing` is deprecated",
)
# GETs that a client repeats to follow a job: logged at DEBUG when they succeed.
POLLING_PATH = re.compile(r"^/(healthz|readyz|metrics|jobs|experiments|models)(/[^?]*)?(\?.*)?$")


def quiet_libraries() -> None:
    """Progress bars off and the load-report tables dropped, in this process."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for pattern in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=FutureWarning)
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
    report_logger = logging.getLogger("transformers.modeling_utils")
    if not any(isinstance(f, _DropLoadReport) for f in report_logger.filters):
        report_logger.addFilter(_DropLoadReport())


class _DropLoadReport(logging.Filter):
    """transformers logs a table per model load; the loading code names the new weights itself.
    A report of conversion errors stays: the error raised after it points at it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return "LOAD REPORT" not in message or "CONVERSION" in message


def demote_polling(logger_name: str = "uvicorn.access") -> None:
    """Successful polling requests at DEBUG in the access log (see the module docstring)."""
    access = logging.getLogger(logger_name)
    if not any(isinstance(f, _PollingAtDebug) for f in access.filters):
        access.addFilter(_PollingAtDebug(access))


class _PollingAtDebug(logging.Filter):
    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        if not is_polling(record.args):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.logger.isEnabledFor(logging.DEBUG)


def is_polling(args: object) -> bool:
    """uvicorn's access record args: (client, method, path with query, HTTP version, status)."""
    if not isinstance(args, tuple) or len(args) != 5:
        return False
    _, method, path, _, status = args
    return method in ("GET", "HEAD") and isinstance(status, int) and status < 400 \
        and bool(POLLING_PATH.match(str(path)))
