"""The one exception the loop and the task families raise for a failure the user can act on.
How any failure is classified for the job (data, environment, bug) is worker/job/errors.py."""

from __future__ import annotations

from typing import Literal

ErrorKind = Literal["data", "environment", "bug"]


class TrainingError(Exception):
    """A failure the user can act on; its message is shown as the job's `error`."""

    def __init__(self, message: str, kind: ErrorKind = "data") -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
