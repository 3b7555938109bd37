"""Text classification, single-label and multi-label: task.py is its TrainingTask, compare.py its
comparison (with baselines.py: majority and TF-IDF baselines on the same rows, metrics.py the
scikit-learn metrics), core/serving/runtime.py its serving runtime. Its metrics and their
direction are in core/catalogue.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import store

if TYPE_CHECKING:
    from core.jobspec import Hyperparameters
    from worker.training.config import TrainConfig
    from worker.training.protocols import TrainingTask

class ClassificationFamily:
    name = "classification"
    tasks = frozenset({"single_label", "multi_label"})

    def setup_events(self, training_task: Any, config: TrainConfig) -> list[tuple[str, str, dict[str, Any]]]:
        """The weights the base did not have, as the job's first word on its model: a user who
        picked a checkpoint with its own head sees "no new weights" here instead of a fresh head."""
        message = getattr(training_task, "new_weights", "")
        if not message:
            return []
        return [("new_weights", message[0].upper() + message[1:] + ".", {})]

    def build_training_task(self, dataset_dir: Path, labels: list[str], task: str, base_model: str,
                            config: TrainConfig) -> TrainingTask:
        from worker.families.classification.task import build_classification_task

        return build_classification_task(dataset_dir, labels, multi_label=task == "multi_label",
                                         base_model=base_model, config=config)

    def model_meta(self, checkpoint: Path, task: str, labels: list[str], hp: Hyperparameters,
                   base_model: str, job_id: str) -> dict[str, Any]:
        saved = store.read_model_meta(checkpoint)
        # The length the model was trained at (the task caps the job's max_seq_length at the
        # model's position limit): /predict truncates to it, never past what the model embeds.
        return {
            "task": task, "labels": labels, "thresholds": saved.get("thresholds"),
            "max_seq_length": int(saved.get("max_seq_length") or hp.max_seq_length),
            "base_model": base_model, "job_id": job_id,
        }

    def compare(self, job_id: str, model_id: str | None = None) -> dict[str, Any]:
        from worker.families.classification.compare import compare_job

        return compare_job(job_id, model_id)


CLASSIFICATION = ClassificationFamily()
