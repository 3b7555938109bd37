"""Reading uploaded datasets: sniff, decode, infer columns and task, validate, split, store.

No torch or transformers here: the API process imports this package and must start fast.
"""

from app.ingest.errors import IngestError, UploadTooLarge
from app.ingest.pipeline import IngestOptions, IngestResult, SourceFile, ingest

__all__ = ["IngestError", "IngestOptions", "IngestResult", "SourceFile", "UploadTooLarge", "ingest"]
