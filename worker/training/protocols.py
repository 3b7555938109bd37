"""What the training loop talks to, and what it gives back.

A TrainingTask is one task (single_label, multi_label, chat: the dataset's `task`) made trainable:
the model, tokenized examples, collation, the loss as (sum, units) and its metrics. The sink is
where the loop reports (SQL in the worker, memory in tests). Nothing here imports a task.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

# Re-exported: the loop's modules and the tasks raise it from here; worker/training/errors.py classifies it.
from worker.training.errors import TrainingError as TrainingError

# One tokenized example as the task made it; the loop reads only its "length" (in tokens).
Example = Mapping[str, Any]


class TrainingTask(Protocol):
    # Read-only properties, so a dataclass with narrower field types (list, frozenset) conforms.
    @property
    def model(self) -> torch.nn.Module: ...
    @property
    def model_name(self) -> str: ...                     # for messages ("X does not fit")
    @property
    def train_examples(self) -> Sequence[Example]: ...
    @property
    def eval_examples(self) -> Sequence[Example]: ...
    @property
    def metric_names(self) -> Collection[str]: ...       # compute_metrics' keys, "loss" included
    @property
    def baseline_loss(self) -> float | None: ...         # an uninformed model's loss (fit diagnosis)

    def loss_units(self, examples: Sequence[Example]) -> int:
        """What the loss is averaged over in these examples: samples, or target tokens."""
        ...

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """A CPU batch padded to its own longest example."""
        ...

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """(loss summed over the batch's units, raw output for eval_payload)."""
        ...

    def eval_payload(self, output: Any, batch: dict[str, torch.Tensor]) -> Any:
        """What compute_metrics needs from one evaluation batch, moved off the device."""
        ...

    def train_counts(self, output: Any) -> dict[str, torch.Tensor]:
        """Counts from one training micro-batch's output that add up over steps (a chat job's
        correct and scored answer tokens), detached and on the device; {} when the task has none."""
        ...

    def train_metrics(self, counts: dict[str, float]) -> dict[str, float]:
        """The figures a train point shows beside its loss, from the counts summed since the
        last point (a chat job's token_accuracy); {} when the task has none."""
        ...

    def compute_metrics(self, payloads: list[Any]) -> dict[str, Any]:
        ...

    def greater_is_better(self, metric: str) -> bool:
        ...

    def save_checkpoint(self, directory: Path) -> None:
        """The servable files of the model as it is now (HF directory, tokenizer, meta)."""
        ...

    def load_checkpoint(self, directory: Path) -> None:
        """Load the weights saved by save_checkpoint into self.model, in place."""
        ...


class TrainingSink(Protocol):
    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None: ...
    def train_point(self, step: int, epoch: float, values: dict[str, Any]) -> None: ...
    def eval_point(self, step: int, epoch: float, values: dict[str, Any]) -> None: ...
    def checkpoint_saved(self, step: int, epoch: float, metrics: dict[str, Any], path: Path,
                         is_best: bool) -> None: ...
    def checkpoint_removed(self, path: Path) -> None: ...
    def progress(self, **fields: Any) -> None: ...
    def should_stop(self) -> bool: ...

    def lost_ownership(self) -> bool:
        """True when should_stop() is because another worker took the job over: the loop then
        writes nothing more (a cancel, by contrast, ends with a checkpoint where it stopped)."""
        ...


@dataclass
class TrainResult:
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    final_metrics: dict[str, Any]
    best_metrics: dict[str, Any]
    global_step: int
    cancelled: bool
    early_stopped: bool
    resumed_from_step: int | None
    micro_batch_size: int = 0
    grad_accum_steps: int = 0
    eval_batch_size: int = 0
