"""Task families: everything that differs between what a model learns to do.

"Task" in tuneserve means one thing: what a dataset teaches (its `task` column: single_label,
multi_label, chat). A family serves one or more tasks and owns, for them:

    metrics             the evaluation metrics (the catalogue POST /jobs validates against)
    build_training_task the TrainingTask the one loop (worker/loop.py) trains
    model_meta          what a tuned model records beside its files (export and registration)
    compare             the report stored under `comparison` on the job (classification: the
                        tuned model beside the majority and TF-IDF baselines on the same rows;
                        chat: base vs tuned replies to held-out prompts)

Modules here import nothing heavy at import time: the API imports this package for the
catalogue, and torch/transformers load only when a worker or the serving runtime needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from worker.families.chat import CHAT
from worker.families.classification import CLASSIFICATION

if TYPE_CHECKING:
    from core.jobspec import Hyperparameters
    from worker.config import TrainConfig
    from worker.protocols import TrainingTask


class TaskFamily(Protocol):
    name: str
    tasks: frozenset[str]

    def metric_names(self, task: str) -> frozenset[str]:
        """Eval metrics a job of this task may pick its best checkpoint by ("loss" included)."""
        ...

    def greater_is_better(self, metric: str) -> bool: ...

    def default_metric(self, task: str) -> str:
        """metric_for_best_model when the job does not choose one."""
        ...

    def job_defaults(self, task: str) -> dict[str, Any]:
        """Hyperparameters whose default differs for this task, applied where the job sets none."""
        ...

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


FAMILIES: dict[str, TaskFamily] = {task: family for family in (CLASSIFICATION, CHAT) for task in family.tasks}
TRAINABLE_TASKS = frozenset(FAMILIES)


class UnsupportedTask(LookupError):
    pass


def family_for(task: str) -> TaskFamily:
    try:
        return FAMILIES[task]
    except KeyError:
        raise UnsupportedTask(f"no task family trains {task!r} datasets; trainable: "
                              f"{', '.join(sorted(TRAINABLE_TASKS))}") from None


def with_job_defaults(hp: Hyperparameters, task: str) -> Hyperparameters:
    """The task family's defaults for the fields the request did not set (chat: LoRA's learning
    rate, longer sequences, best checkpoint by loss); what the request set is kept as sent."""
    family = family_for(task)
    defaults = {"metric_for_best_model": family.default_metric(task), **family.job_defaults(task)}
    unset = {k: v for k, v in defaults.items() if k not in hp.model_fields_set}
    return hp.model_copy(update=unset) if unset else hp
