"""Builders for the worker tests: parquet datasets per the dataset contract, tiny models, configs."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tests.conftest import make_tiny_classifier
from worker.families.classification.task import ClassificationTask, build_classification_task
from worker.training.config import TrainConfig
from worker.training.protocols import Example

LABELS = ["sports", "politics", "tech"]
KEYWORDS = {
    "sports": ["goal", "match", "team", "coach", "league"],
    "politics": ["vote", "senate", "law", "election", "minister"],
    "tech": ["software", "chip", "cloud", "robot", "code"],
}
FILLER = "the a of to and in on with for it was very quite today people said new old good".split()
EVAL_ROW_OFFSET = 10_000  # eval rows are numbered apart, so a test can tell them from train rows


def _text(rng: random.Random, label_names: Sequence[str]) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 30))]
    for name in label_names:
        words.insert(rng.randrange(len(words) + 1), rng.choice(KEYWORDS[name]))
    return " ".join(words)


def write_dataset(directory: Path, n_train: int, n_eval: int, *, multi_label: bool = False,
                  seed: int = 0) -> Path:
    """train.parquet and validation.parquet with columns row, text, label (the contract)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, offset in (("train", n_train, 0), ("validation", n_eval, EVAL_ROW_OFFSET)):
        rows: list[int] = []
        texts: list[str] = []
        labels: list[Any] = []
        for i in range(n):
            if multi_label:
                chosen = sorted(rng.sample(range(len(LABELS)), rng.randint(0, 2)))
                labels.append(chosen)
            else:
                chosen = [i % len(LABELS)]
                labels.append(chosen[0])
            rows.append(offset + i)
            texts.append(_text(rng, [LABELS[j] for j in chosen]))
        label_type = pa.list_(pa.int64()) if multi_label else pa.int64()
        table = pa.table({"row": pa.array(rows, pa.int64()), "text": pa.array(texts, pa.string()),
                          "label": pa.array(labels, label_type)})
        pq.write_table(table, directory / f"{split}.parquet")
    return directory


def tiny_model(directory: Path, *, multi_label: bool = False, dropout: float = 0.0) -> Path:
    """make_tiny_classifier, with dropout set (0: runs with different splits are comparable)."""
    make_tiny_classifier(directory, LABELS, multi_label=multi_label)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                  classifier_dropout=dropout)
    config_path.write_text(json.dumps(config))
    return directory


def make_config(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "max_seq_length": 48, "warmup_ratio": 0.0,
        "logging_steps": 1, "device": "cpu", "metric_for_best_model": "f1_macro",
    }
    return TrainConfig(**(values | overrides))


def build_task(dataset_dir: Path, model_dir: Path, config: TrainConfig, *,
               multi_label: bool = False) -> ClassificationTask:
    return build_classification_task(dataset_dir, LABELS, multi_label, str(model_dir), config)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def record_windows(task: ClassificationTask) -> list[list[int]]:
    """Wrap task.loss_units, which the loop calls exactly once per optimizer-step window (however
    many times an OOM makes it redo the window), to record which train rows each step used.
    The probe calls it too: force the micro-batch to keep the probe out of the record."""
    windows: list[list[int]] = []
    original: Callable[[Sequence[Example]], int] = task.loss_units

    def loss_units(examples: Sequence[Example]) -> int:
        rows = [int(e["row"]) for e in examples]
        if rows and rows[0] < EVAL_ROW_OFFSET:
            windows.append(rows)
        return original(examples)

    task.loss_units = loss_units  # type: ignore[method-assign]
    return windows


def make_trainer(task: ClassificationTask, config: TrainConfig, state: Any = None) -> Any:
    """The loop's step machinery over `task` on the CPU, as run_training sets it up."""
    from worker.training.config import LoopState
    from worker.training.micro_batch import Trainer
    from worker.training.optim import build_optimizer, build_scheduler
    from worker.training.recording import RecordingSink

    optimizer = build_optimizer(task.model, config, torch.device("cpu"))
    return Trainer(task=task, config=config, sink=RecordingSink(), model=task.model,
                   device=torch.device("cpu"), autocast_dtype=None,
                   scaler=torch.amp.GradScaler("cpu", enabled=False), state=state or LoopState(),
                   optimizer=optimizer, scheduler=build_scheduler(optimizer, config, 10))
