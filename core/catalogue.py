"""What each dataset task can be trained for: its metrics, which direction is better, the metric
that picks the best checkpoint, and the job defaults that differ for it.

"Task" here is the dataset's task (single_label, multi_label, chat). The API validates a job
against this catalogue and the worker's task families (worker/families/) read it too: it is the
one place these facts live. Nothing heavy is imported: the API loads this at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.jobspec import Hyperparameters

SINGLE_LABEL_METRICS = frozenset({"loss", "accuracy", "precision_macro", "recall_macro", "f1_macro",
                                  "f1_weighted"})
MULTI_LABEL_METRICS = frozenset({"loss", "f1_micro", "f1_macro", "subset_accuracy", "hamming_loss",
                                 "f1_macro_at_0_5"})
# Chat: `loss` is the mean cross-entropy over the assistant's tokens, `token_accuracy` the share of
# them predicted exactly (teacher-forced), `perplexity` exp(loss).
CHAT_METRICS = frozenset({"loss", "token_accuracy", "perplexity"})
LOWER_IS_BETTER = frozenset({"loss", "hamming_loss", "perplexity"})

# Hyperparameters that only a chat (LoRA) job reads: on a classification job they are an error,
# not a silent no-op (classifiers are fully fine-tuned).
CHAT_ONLY_FIELDS = ("system_prompt", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


@dataclass(frozen=True)
class TaskEntry:
    task: str                       # the dataset's task
    family: str                     # the worker's task family that trains it (worker/families/<name>/)
    metrics: frozenset[str]         # eval metrics a job may pick its best checkpoint by ("loss" included)
    default_metric: str             # metric_for_best_model when the job sets none
    # Hyperparameters whose default differs for this task, applied where the job sets none.
    job_defaults: dict[str, Any] = field(default_factory=dict)

    def greater_is_better(self, metric: str) -> bool:
        return metric not in LOWER_IS_BETTER


# LoRA's default peak rate, as peft's and TRL's examples use (a full fine-tune's is
# Hyperparameters' own default, in core/jobspec.py).
LORA_LEARNING_RATE = 2e-4

CATALOGUE: dict[str, TaskEntry] = {
    "single_label": TaskEntry("single_label", "classification", SINGLE_LABEL_METRICS, "f1_macro"),
    "multi_label": TaskEntry("multi_label", "classification", MULTI_LABEL_METRICS, "f1_macro"),
    # LoRA trains a few new weights from zero: it wants ~10x the learning rate of a full fine-tune
    # (LORA_LEARNING_RATE); conversations are longer than texts.
    "chat": TaskEntry("chat", "chat", CHAT_METRICS, "loss",
                      job_defaults={"learning_rate": LORA_LEARNING_RATE, "max_seq_length": 512}),
}
TRAINABLE_TASKS = frozenset(CATALOGUE)


class UnsupportedTask(LookupError):
    pass


def entry_for(task: str) -> TaskEntry:
    try:
        return CATALOGUE[task]
    except KeyError:
        raise UnsupportedTask(f"no task family trains {task!r} datasets; trainable: "
                              f"{', '.join(sorted(TRAINABLE_TASKS))}") from None


def greater_is_better(task: str | None, metric: str) -> bool:
    """The direction of `metric` for `task` (an unknown task: everything but a loss rises)."""
    entry = CATALOGUE.get(task or "")
    return entry.greater_is_better(metric) if entry is not None else metric not in LOWER_IS_BETTER


def with_job_defaults(hp: Hyperparameters, task: str) -> Hyperparameters:
    """The task's defaults for the fields the request did not set (chat: LoRA's learning rate,
    longer sequences, best checkpoint by loss); what the request set is kept as sent."""
    entry = entry_for(task)
    defaults = {"metric_for_best_model": entry.default_metric, **entry.job_defaults}
    unset = {k: v for k, v in defaults.items() if k not in hp.model_fields_set}
    return hp.model_copy(update=unset) if unset else hp

