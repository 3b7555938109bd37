"""The text-classification TrainingTask (single-label and multi-label) for worker/training/loop.py.

Reads a stored dataset (core/dataset.py: the train and validation splits' `row`, `text`, `label`
— an index into the label list, or a list of positive indices for multi-label), tokenizes without
padding, and supplies the loop with the model, collation, the loss as (sum over samples, samples)
and scikit-learn metrics. Any AutoModelForSequenceClassification architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from core.catalogue import MULTI_LABEL_METRICS, SINGLE_LABEL_METRICS, greater_is_better
from core.dataset import LABEL, ROW, TEXT, TRAIN, VALIDATION, split_path
from core.serving.decode import DEFAULT_THRESHOLD
from core.settings import get_settings
from core.store import load_options, resolve_base_model, tokenizer_options
from worker.families.classification.metrics import multi_label_metrics, single_label_metrics
from worker.families.loading import load_weights_into, save_servable, set_pad_token
from worker.training.config import TrainConfig
from worker.training.protocols import Example, TrainingError

log = logging.getLogger("tuneserve.worker.families.classification.task")

# auto pos_weight for a rare label is capped: 1 positive in 10,000 rows must not weigh 10,000x.
MAX_POS_WEIGHT = 100.0


@dataclass
class ClassificationTask:
    model: torch.nn.Module
    tokenizer: Any
    model_name: str
    labels: list[str]
    multi_label: bool
    max_seq_length: int
    train_examples: list[Example]
    eval_examples: list[Example]
    # CrossEntropy class weights (single-label) or BCE pos_weight (multi-label); None: unweighted.
    loss_weight: torch.Tensor | None = None
    baseline_loss: float | None = None
    # Multi-label decision thresholds, tuned on validation at every evaluation (label order).
    thresholds: list[float] | None = None
    metric_names: frozenset[str] = field(default=SINGLE_LABEL_METRICS)
    # transformers' loading report in one line: the new head's weights (see new_weights_message).
    new_weights: str = ""

    @property
    def task_name(self) -> str:
        return "multi_label" if self.multi_label else "single_label"

    # ---- the loop's protocol --------------------------------------------------------------
    def loss_units(self, examples: Sequence[Example]) -> int:
        return len(examples)  # the loss is a mean over samples

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        inputs = [{k: ex[k] for k in self.tokenizer.model_input_names if k in ex} for ex in examples]
        padded = self.tokenizer.pad(inputs, padding="longest", return_tensors="pt")
        batch: dict[str, torch.Tensor] = dict(padded)
        if self.multi_label:
            targets = torch.zeros(len(examples), len(self.labels))
            for i, ex in enumerate(examples):
                targets[i, ex["label"]] = 1.0
            batch["labels"] = targets
        else:
            batch["labels"] = torch.tensor([ex["label"] for ex in examples], dtype=torch.long)
        return batch

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits.float()  # the loss in fp32 even under autocast
        weight = self.loss_weight.to(logits.device) if self.loss_weight is not None else None
        if self.multi_label:
            per_label = F.binary_cross_entropy_with_logits(logits, batch["labels"], pos_weight=weight,
                                                           reduction="none")
            loss = per_label.mean(dim=1).sum()
        else:
            loss = F.cross_entropy(logits, batch["labels"], weight=weight, reduction="sum")
        return loss, logits

    def eval_payload(self, output: Any, batch: dict[str, torch.Tensor]) -> Any:
        return output.detach().float().cpu().numpy(), batch["labels"].cpu().numpy()

    def train_counts(self, output: Any) -> dict[str, torch.Tensor]:
        return {}  # a train point shows the loss; accuracy and F1 come from the evaluation

    def train_metrics(self, counts: dict[str, float]) -> dict[str, float]:
        return {}

    def compute_metrics(self, payloads: list[Any]) -> dict[str, Any]:
        logits = np.concatenate([p[0] for p in payloads])
        targets = np.concatenate([p[1] for p in payloads])
        if not self.multi_label:
            return single_label_metrics(logits, targets, self.labels)
        probabilities = 1.0 / (1.0 + np.exp(-logits))
        metrics = multi_label_metrics(probabilities, targets, self.labels)
        self.thresholds = [metrics["thresholds"][name] for name in self.labels]
        return metrics

    def greater_is_better(self, metric: str) -> bool:
        return greater_is_better(self.task_name, metric)

    def meta(self) -> dict[str, Any]:
        thresholds = None
        if self.multi_label:
            values = self.thresholds or [DEFAULT_THRESHOLD] * len(self.labels)
            thresholds = dict(zip(self.labels, values, strict=True))
        return {"task": self.task_name, "labels": self.labels, "thresholds": thresholds,
                "max_seq_length": self.max_seq_length, "base_model": self.model_name}

    def save_checkpoint(self, directory: Path) -> None:
        save_servable(self.model, self.tokenizer, directory, self.meta())

    def load_checkpoint(self, directory: Path) -> None:
        load_weights_into(self.model, directory)


# --------------------------------------------------------------------------------------------
# Building the task
# --------------------------------------------------------------------------------------------

def _load_split(path: Path, num_labels: int, multi_label: bool) -> tuple[list[str], list[Any], list[int]]:
    table = pq.read_table(path, columns=[ROW, TEXT, LABEL]).to_pydict()
    texts = ["" if t is None else str(t) for t in table[TEXT]]
    labels: list[Any] = []
    for row, label in zip(table[ROW], table[LABEL], strict=True):
        indices = list(label or []) if multi_label else [label]
        if any(i is None or not 0 <= int(i) < num_labels for i in indices):
            raise TrainingError(f"{path.name}: row {row} has label {label!r}, outside the "
                                f"{num_labels} labels of the dataset")
        labels.append([int(i) for i in indices] if multi_label else int(label))
    return texts, labels, [int(r) for r in table[ROW]]


def _tokenize(tokenizer: Any, texts: list[str], labels: list[Any], rows: list[int],
              max_seq_length: int) -> list[Example]:
    # No padding here: each micro-batch is padded to its own longest example by collate.
    encoded = tokenizer(texts, truncation=True, max_length=max_seq_length) if texts else {"input_ids": []}
    keys = [k for k in tokenizer.model_input_names if k in encoded]
    return [
        {**{k: encoded[k][i] for k in keys}, "label": labels[i], "row": rows[i],
         "length": len(encoded["input_ids"][i])}
        for i in range(len(texts))
    ]


def _loss_weight(labels: list[Any], num_labels: int, multi_label: bool) -> torch.Tensor:
    """Inverse frequency: scikit-learn's balanced n / (k * count) per class (k: the classes in
    train; an absent class gets 1, it never occurs anyway); for multi-label, pos_weight =
    negatives / positives per label (capped)."""
    n = len(labels)
    if multi_label:
        positives = np.zeros(num_labels)
        for row_labels in labels:
            positives[row_labels] += 1
        weight = np.where(positives > 0, (n - positives) / np.maximum(positives, 1), 1.0)
        return torch.tensor(np.clip(weight, 0.0, MAX_POS_WEIGHT), dtype=torch.float32)
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(labels, dtype=np.int64)
    present = np.unique(y)
    weight = np.ones(num_labels)
    # scikit-learn's "balanced" weights are n / (classes present * count), as in its estimators.
    weight[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.tensor(weight, dtype=torch.float32)


def _baseline_loss(labels: list[Any], num_labels: int, multi_label: bool) -> float | None:
    """The loss of a model that only knows the label prior (its entropy), in nats."""
    if not labels:
        return None
    if multi_label:
        rates = np.zeros(num_labels)
        for row_labels in labels:
            rates[row_labels] += 1
        p = np.clip(rates / len(labels), 1e-12, 1 - 1e-12)
        return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))
    p = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_labels) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _unloadable(base_model: str, source: str, error: Exception) -> TrainingError:
    from huggingface_hub import is_offline_mode

    if not Path(source).is_dir():
        # A hub name the worker could not fetch: the machine's network or cache, not the data.
        reason = ("it is not a local directory and the hub is offline (HF_HUB_OFFLINE is set) with no "
                  "cached copy" if is_offline_mode() else
                  f"it could not be fetched from the Hugging Face hub ({type(error).__name__}: "
                  f"{_first_line(error)})")
        return TrainingError(f"Cannot load the base model {base_model!r}: {reason}. Check the worker's "
                             "network and HF_TOKEN, or pass a local model directory.", kind="environment")
    return TrainingError(f"Cannot load the base model {base_model!r} as a text classifier: "
                         f"{type(error).__name__}: {_first_line(error)}.")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def load_classifier(base_model: str, labels: list[str], multi_label: bool,
                    seed: int) -> tuple[Any, Any, str]:
    """(model, tokenizer, the new weights in words); the new head's initialisation follows the seed."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from worker.families.loading import check_tokenizer_packages

    source = resolve_base_model(base_model)
    check_tokenizer_packages(source, base_model)
    torch.manual_seed(seed)
    try:
        trust = get_settings().trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(source, **tokenizer_options(trust))
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=len(labels), **load_options(trust),
            id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
            problem_type="multi_label_classification" if multi_label else "single_label_classification",
            # A tuned model with another label set can be a base: its head is replaced.
            ignore_mismatched_sizes=True, output_loading_info=True,
        )
    except Exception as error:  # noqa: BLE001 - every reason becomes a message the user can act on
        raise _unloadable(base_model, source, error) from error
    message = new_weights_message(loading, order=list(model.state_dict()))
    log.info("%s", message)
    set_pad_token(model, tokenizer, base_model)
    return model, tokenizer, message


def new_weights_message(loading: dict[str, Any], order: Sequence[str] = ()) -> str:
    """One line for transformers' loading report: the weights the base model did not have (the
    classification head, initialised from the job's seed) and the ones it had but left out.
    Named in the model's own order (`order`: its state-dict keys): weight before bias."""
    replaced = {key for key, *_shapes in loading.get("mismatched_keys") or ()}
    rank = {key: i for i, key in enumerate(order)}
    new = sorted(set(loading.get("missing_keys") or ()) | replaced, key=lambda k: (rank.get(k, len(rank)), k))
    unused = sorted(loading.get("unexpected_keys") or ())
    message = (f"a new classification head: {', '.join(new)}" if new
               else "no new weights: the base model already has this classification head")
    if unused:
        shown = ", ".join(unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
        message += f"; unused weights of the base model: {shown}"
    return message


def build_classification_task(dataset_dir: Path, labels: list[str], multi_label: bool, base_model: str,
                              config: TrainConfig) -> ClassificationTask:
    dataset_dir = Path(dataset_dir)
    if not labels:
        raise TrainingError("The dataset has no labels to train on.")
    model, tokenizer, new_weights = load_classifier(base_model, labels, multi_label, config.seed)
    # Never past the model's position embeddings (index errors), whatever the job asks for.
    max_positions = getattr(model.config, "max_position_embeddings", None)
    max_seq_length = min(config.max_seq_length, max_positions) if max_positions else config.max_seq_length

    train_path = split_path(dataset_dir, TRAIN)
    train_texts, train_labels, train_rows = _load_split(train_path, len(labels), multi_label)
    eval_path = split_path(dataset_dir, VALIDATION)
    eval_texts, eval_labels, eval_rows = (
        _load_split(eval_path, len(labels), multi_label) if eval_path.is_file() else ([], [], []))
    task = ClassificationTask(
        model=model, tokenizer=tokenizer, model_name=base_model, labels=list(labels),
        multi_label=multi_label, max_seq_length=max_seq_length,
        train_examples=_tokenize(tokenizer, train_texts, train_labels, train_rows, max_seq_length),
        eval_examples=_tokenize(tokenizer, eval_texts, eval_labels, eval_rows, max_seq_length),
        loss_weight=_loss_weight(train_labels, len(labels), multi_label)
        if config.class_weights == "auto" and train_labels else None,
        baseline_loss=_baseline_loss(train_labels, len(labels), multi_label),
        metric_names=MULTI_LABEL_METRICS if multi_label else SINGLE_LABEL_METRICS,
        new_weights=new_weights,
    )
    log.info("task %s: %d train / %d validation examples, %d labels, max %d tokens (longest %d)",
             task.task_name, len(task.train_examples), len(task.eval_examples), len(labels), max_seq_length,
             max((e["length"] for e in task.train_examples), default=0))
    return task
