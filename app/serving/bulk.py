"""Scoring every row of a file through the Predictor (the same admission and batcher as
/predict), chunk by chunk, and writing each chunk as CSV or JSONL. No HTTP here: the route
streams what `chunks` yields and maps the first chunk's errors to status codes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pandas as pd

from app.serving.predictor import ModelSpec, Predictor, QueueFull, TextScores
from core.serving.decode import decode_multi_label, decode_single_label

log = logging.getLogger("tuneserve.predict")

FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
# A progress line at most this often while a file is scored (and one at the end).
PROGRESS_EVERY_S = 5.0
# Retries of a chunk that met a full queue, after the first chunk went through (by then the
# response has begun, so a 429 can no longer be sent: the file waits its turn instead).
MAX_QUEUE_RETRIES = 60


@dataclass
class Chunk:
    start: int  # first row of the chunk, 0-based
    predictions: list[dict[str, object] | None]  # per row; None: the row had no text


class FileScorer:
    """The rows of one file, scored in chunks of at most predict_max_texts (and the queue size)."""

    def __init__(self, predictor: Predictor, spec: ModelSpec, texts: list[str | None],
                 shown_name: str) -> None:
        self.predictor, self.spec, self.texts, self.shown_name = predictor, spec, texts, shown_name
        settings = predictor.settings
        self.chunk_rows = max(1, min(settings.predict_max_texts, settings.predict_max_queue))
        self.done_rows = 0
        self.truncated_rows = 0
        self._started = time.perf_counter()
        self._logged = self._started

    async def chunk(self, start: int, *, wait_when_full: bool) -> Chunk:
        """Predictions for the rows from `start`: QueueFull at once, or after waiting its turn."""
        rows = self.texts[start:start + self.chunk_rows]
        texts = [t for t in rows if t is not None]
        for attempt in range(MAX_QUEUE_RETRIES + 1):
            try:
                scores = await self.predictor.predict(self.spec, texts) if texts else []
                break
            except QueueFull as exc:
                if not wait_when_full or attempt == MAX_QUEUE_RETRIES:
                    raise
                await asyncio.sleep(exc.retry_after_s)
        decoded = iter([self._decode(s) for s in scores])
        self.truncated_rows += sum(s.truncated for s in scores)
        self.done_rows += len(rows)
        self._progress()
        return Chunk(start, [next(decoded) if t is not None else None for t in rows])

    async def chunks(self, first: Chunk) -> AsyncIterator[Chunk]:
        """`first` (already scored by the caller, to answer its errors with a status), then the rest."""
        yield first
        for start in range(first.start + self.chunk_rows, len(self.texts), self.chunk_rows):
            yield await self.chunk(start, wait_when_full=True)

    def _decode(self, scores: TextScores) -> dict[str, object]:
        if self.spec.task == "multi_label":
            decoded = decode_multi_label(self.spec.labels, scores.probs, thresholds=self.spec.thresholds)
            return {"labels": decoded["labels"], "score": max(scores.probs), "scores": decoded["scores"]}
        decoded = decode_single_label(self.spec.labels, scores.probs)
        return {"labels": [decoded["label"]], "score": decoded["scores"][decoded["label"]]}

    def _progress(self) -> None:
        now = time.perf_counter()
        total = len(self.texts)
        if self.done_rows < total and now - self._logged < PROGRESS_EVERY_S:
            return
        self._logged = now
        elapsed = max(now - self._started, 1e-6)
        log.info("predict/file %s on '%s': %d/%d rows (%.0f%%), %.0f rows/s", self.spec.model_id,
                 self.shown_name, self.done_rows, total, 100 * self.done_rows / max(total, 1),
                 self.done_rows / elapsed)


def output_columns(frame: pd.DataFrame, spec: ModelSpec) -> tuple[str, str]:
    """The names of the predicted label and score columns: `label` and `score`, or, when the
    file has columns of those names already (a true label, say), `predicted_label` and
    `predicted_score`, so every input column comes back unchanged."""
    taken = set(map(str, frame.columns))
    if "label" in taken or "score" in taken:
        return "predicted_label", "predicted_score"
    return "label", "score"


def render(frame: pd.DataFrame, chunk: Chunk, spec: ModelSpec, fmt: str) -> str:
    """One chunk of the response: the input rows with the predictions added."""
    rows = frame.iloc[chunk.start:chunk.start + len(chunk.predictions)].copy()
    label_column, score_column = output_columns(frame, spec)
    multi = spec.task == "multi_label"
    labels = [None if p is None else p["labels"] for p in chunk.predictions]
    if fmt == "csv" or not multi:
        # CSV cells are flat: several labels are comma-joined, as uploads accept them.
        rows[label_column] = [None if ls is None else ",".join(ls) for ls in labels]  # type: ignore[arg-type]
    else:
        rows[label_column] = labels
    rows[score_column] = [None if p is None else p["score"] for p in chunk.predictions]
    if multi:
        if fmt == "csv":
            for name in spec.labels:
                rows[f"score_{name}"] = [None if p is None else p["scores"][name]  # type: ignore[index]
                                         for p in chunk.predictions]
        else:
            rows["scores"] = [None if p is None else p["scores"] for p in chunk.predictions]
    if fmt == "csv":
        return rows.to_csv(index=False, header=chunk.start == 0, lineterminator="\n")
    text = rows.to_json(orient="records", lines=True, force_ascii=False)
    return text if text.endswith("\n") else text + "\n"
