"""An in-memory sink: tests, benchmarks, and running the loop without a database."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("tuneserve.worker.training.recording")


@dataclass
class RecordingSink:
    """Records everything; `stop_when(step)` makes should_stop() answer True (a cancel)."""

    stop_when: Callable[[int], bool] | None = None
    events: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    train_points: list[tuple[int, float, dict[str, Any]]] = field(default_factory=list)
    eval_points: list[tuple[int, float, dict[str, Any]]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    last_progress: dict[str, Any] = field(default_factory=dict)

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        log.info("event %s: %s", kind, message)
        self.events.append((kind, message, data))

    def train_point(self, step: int, epoch: float, values: dict[str, Any]) -> None:
        self.train_points.append((step, epoch, values))

    def eval_point(self, step: int, epoch: float, values: dict[str, Any]) -> None:
        self.eval_points.append((step, epoch, values))

    def checkpoint_saved(self, step: int, epoch: float, metrics: dict[str, Any], path: Path,
                         is_best: bool) -> None:
        self.checkpoints.append({"step": step, "epoch": epoch, "metrics": metrics, "path": path,
                                 "is_best": is_best})

    def checkpoint_removed(self, path: Path) -> None:
        self.removed.append(path)

    def progress(self, **fields: Any) -> None:
        self.last_progress = fields

    def should_stop(self) -> bool:
        return self.stop_when is not None and self.stop_when(self.last_progress.get("step", 0))

    def lost_ownership(self) -> bool:
        return False

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [data or {} for k, _, data in self.events if k == kind]
