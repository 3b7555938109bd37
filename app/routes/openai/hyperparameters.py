"""What `"auto"` becomes for a /v1 fine-tuning job, and why (recorded on the job, shown in the
README). Pure functions of the request and the training set's size: no HTTP, no database.

- n_epochs: OpenAI's published rule: 3 epochs, raised so that small sets are read at least
  100 times in all (at most 25 epochs), lowered so that large sets are read at most 25,000 times
  (at least 1 epoch).
- batch_size: tuneserve's default effective batch (32), or the number of training examples when
  there are fewer.
- learning_rate_multiplier: tuneserve's learning-rate range test (the job's learning_rate "auto"):
  before its first step the worker sweeps the rate over a few micro-batches and picks one from the
  loss curve (the lr_range_test event; jobs.chosen_learning_rate). The job object reports the
  multiplier as OpenAI reports a resolved hyperparameter: "auto" until the rate is chosen, then the
  chosen rate over the family's default (chat: 2e-4, the LoRA rate). A number multiplies that
  default and no range test runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from app.schemas.openai import SupervisedHyperparameters
from core.jobspec import Hyperparameters

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
DEFAULT_BATCH_SIZE = Hyperparameters.model_fields["batch_size"].default
AUTO: Literal["auto"] = "auto"  # the multiplier until the range test has chosen the rate
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
    learning_rate_multiplier: float | Literal["auto"]
    learning_rate: float | Literal["auto"]  # "auto": the range test chooses it on the worker
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
    multiplier: float | Literal["auto"]
    learning_rate: float | Literal["auto"]
    if requested.learning_rate_multiplier == "auto":
        multiplier, learning_rate = AUTO, AUTO
        reasons["learning_rate_multiplier"] = (
            "auto: a learning-rate range test chooses the rate before the first step; the multiplier is "
            f"then that rate over the default {default_learning_rate:g}")
    else:
        multiplier = float(requested.learning_rate_multiplier)
        learning_rate = default_learning_rate * multiplier
    return Resolved(n_epochs=n_epochs, batch_size=batch_size, learning_rate_multiplier=multiplier,
                    learning_rate=learning_rate, reasons=reasons)


def reported_multiplier(recorded: float | str, chosen_learning_rate: float | None,
                        default_learning_rate: float) -> float | Literal["auto"]:
    """The multiplier a job object shows: a number as resolved, or for "auto" the chosen rate over
    the default once the range test has run ("auto" until then)."""
    if recorded != AUTO:
        return float(recorded)
    if chosen_learning_rate is None:
        return AUTO
    return chosen_learning_rate / default_learning_rate


def native_hyperparameters(resolved: Resolved, seed: int | None) -> dict[str, Any]:
    """The POST /jobs hyperparameters of the job (everything else keeps its documented default)."""
    values: dict[str, Any] = {"epochs": resolved.n_epochs, "batch_size": resolved.batch_size,
                              "learning_rate": resolved.learning_rate, "logging_steps": LOGGING_STEPS}
    if seed is not None:
        values["seed"] = seed
    return values
