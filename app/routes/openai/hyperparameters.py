"""What `"auto"` becomes for a /v1 fine-tuning job, and why (recorded on the job, shown in the
README). Pure functions of the request and the training set's size: no HTTP, no database.

- n_epochs: OpenAI's published rule: 3 epochs, raised so that small sets are read at least
  100 times in all (at most 25 epochs), lowered so that large sets are read at most 25,000 times
  (at least 1 epoch).
- batch_size: tuneserve's default effective batch (32), or the number of training examples when
  there are fewer.
- learning_rate_multiplier: 1, i.e. the task family's default learning rate (chat: 2e-4, the LoRA
  rate). A number multiplies that default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.schemas.openai import SupervisedHyperparameters
from core.jobspec import Hyperparameters

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
DEFAULT_BATCH_SIZE = Hyperparameters.model_fields["batch_size"].default
AUTO_MULTIPLIER = 1.0  # a range test will choose this later; until then the family default stands
# OpenAI reports a metrics event per step: every optimizer step records a train point.
LOGGING_STEPS = 1


def default_learning_rate() -> float:
    """The chat family's default learning rate: what a chat job that sets none trains with."""
    from core.catalogue import with_job_defaults

    rate = with_job_defaults(Hyperparameters(), "chat").learning_rate
    assert isinstance(rate, float)  # the catalogue's chat default is a number, never "auto"
    return rate


def auto_epochs(n_train: int) -> int:
    """OpenAI's rule for n_epochs "auto" from the number of training examples."""
    n_train = max(1, n_train)
    if n_train * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_train)
    if n_train * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_train)
    return TARGET_EPOCHS


@dataclass(frozen=True)
class Resolved:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    reasons: dict[str, str]

    def record(self, requested: SupervisedHyperparameters) -> dict[str, Any]:
        """What goes into the job's `fine_tuning` column."""
        return {"requested": requested.model_dump(mode="json"),
                "resolved": {"n_epochs": self.n_epochs, "batch_size": self.batch_size,
                             "learning_rate_multiplier": self.learning_rate_multiplier},
                "learning_rate": self.learning_rate, "reasons": self.reasons}


def resolve(requested: SupervisedHyperparameters, *, n_train: int, default_learning_rate: float) -> Resolved:
    reasons: dict[str, str] = {}
    if requested.n_epochs == "auto":
        n_epochs = auto_epochs(n_train)
        reasons["n_epochs"] = (f"auto: {n_epochs} for {n_train} training examples (OpenAI's rule: 3, so "
                               f"that {MIN_TARGET_EXAMPLES}..{MAX_TARGET_EXAMPLES} examples are read in all)")
    else:
        n_epochs = requested.n_epochs
    if requested.batch_size == "auto":
        batch_size = max(1, min(DEFAULT_BATCH_SIZE, n_train))
        reasons["batch_size"] = (f"auto: {batch_size} (the default effective batch {DEFAULT_BATCH_SIZE}, "
                                 f"at most the {n_train} training examples)")
    else:
        batch_size = requested.batch_size
    if requested.learning_rate_multiplier == "auto":
        multiplier = AUTO_MULTIPLIER
        reasons["learning_rate_multiplier"] = f"auto: {multiplier} x the default {default_learning_rate:g}"
    else:
        multiplier = float(requested.learning_rate_multiplier)
    return Resolved(n_epochs=n_epochs, batch_size=batch_size, learning_rate_multiplier=multiplier,
                    learning_rate=default_learning_rate * multiplier, reasons=reasons)


def native_hyperparameters(resolved: Resolved, seed: int | None) -> dict[str, Any]:
    """The POST /jobs hyperparameters of the job (everything else keeps its documented default)."""
    values: dict[str, Any] = {"epochs": resolved.n_epochs, "batch_size": resolved.batch_size,
                              "learning_rate": resolved.learning_rate, "logging_steps": LOGGING_STEPS}
    if seed is not None:
        values["seed"] = seed
    return values
