"""What goes wrong with an upload. Each message says what is wrong and how to fix it."""

from __future__ import annotations


class IngestError(ValueError):
    """The upload cannot become a dataset; `str(error)` is the message for the user."""


class UploadTooLarge(IngestError):
    """The upload is past the size limit."""
