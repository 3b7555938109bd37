"""Text classification, single-label and multi-label: worker/classification.py is its
TrainingTask, worker/compare.py its comparison (with worker/baselines.py: majority and TF-IDF
baselines on the same rows), core/serving/runtime.py its serving runtime."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import store

if TYPE_CHECKING:
    from core.jobspec import Hyperparameters
    from worker.config import TrainConfig
    from worker.protocols import TrainingTask

SINGLE_LABEL_METRICS = frozenset({"loss", "accuracy", "precision_macro", "recall_macro", "f1_macro",
                                  "f1_weighted"})
MULTI_LABEL_METRICS = frozenset({"loss", "f1_micro", "f1_macro", "subset_accuracy", "hamming_loss",
                                 "f1_macro_at_0_5"})
LOWER_IS_BETTER = frozenset({"loss", "hamming_loss"})


class ClassificationFamily:
    name = "classification"
    tasks = frozenset({"single_label", "multi_label"})

    def metric_names(self, task: str) -> frozenset[str]:
        return MULTI_LABEL_METRICS if task == "multi_label" else SINGLE_LABEL_METRICS

    def greater_is_better(self, metric: str) -> bool:
        return metric not in LOWER_IS_BETTER

    def default_metric(self, task: str) -> str:
        return "f1_macro"

    def job_defaults(self, task: str) -> dict[str, Any]:
        return {}

    def setup_events(self, training_task: Any, config: TrainConfig) -> list[tuple[str, str, dict[str, Any]]]:
        return []

    def build_training_task(self, dataset_dir: Path, labels: list[str], task: str, base_model: str,
                            config: TrainConfig) -> TrainingTask:
        from worker.classification import build_classification_task

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
        from worker.compare import compare_job

        return compare_job(job_id, model_id)


CLASSIFICATION = ClassificationFamily()
