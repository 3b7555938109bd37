"""What a task family plugs into the worker: the TrainingTask the one loop trains, the metadata a
tuned model records, and the comparison stored on the job. Its metrics and job defaults are in
the catalogue (core/catalogue.py), which the API reads too."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from core.jobspec import Hyperparameters
    from worker.training.config import TrainConfig
    from worker.training.protocols import TrainingTask


class TaskFamily(Protocol):
    name: str
    tasks: frozenset[str]

    def setup_events(self, training_task: Any, config: TrainConfig) -> list[tuple[str, str, dict[str, Any]]]:
        """(kind, message, data) events to record before the loop starts (what the build decided)."""
        ...

    def build_training_task(self, dataset_dir: Path, labels: list[str], task: str, base_model: str,
                            config: TrainConfig) -> TrainingTask: ...

    def model_meta(self, checkpoint: Path, task: str, labels: list[str], hp: Hyperparameters,
                   base_model: str, job_id: str) -> dict[str, Any]:
        """tuneserve.json of the exported model (merged over the checkpoint's own)."""
        ...

    def compare(self, job_id: str, model_id: str | None = None) -> dict[str, Any]: ...
