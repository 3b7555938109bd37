"""Tiny tuned models for serving tests: built once per test process, copied per test, and
registered as `models` rows the way the worker leaves them."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from tests.conftest import make_tiny_classifier

KOREAN_LABELS = ["정상", "욕설", "성희롱"]
MULTI_LABELS = ["toxic", "insult", "threat"]


@lru_cache
def _template(task: str, seed: int) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"tiny-{task}-"))
    atexit.register(shutil.rmtree, root, True)
    labels = MULTI_LABELS if task == "multi_label" else KOREAN_LABELS
    return make_tiny_classifier(root / "model", labels, multi_label=task == "multi_label", seed=seed)


def tiny_model_dir(
    directory: Path,
    *,
    task: str = "single_label",
    seed: int = 0,
    thresholds: dict[str, float] | None = None,
    max_seq_length: int | None = 128,
) -> Path:
    """A copy of a tiny classifier with its tuneserve.json, as a finished job writes it."""
    from core.store import write_model_meta

    shutil.copytree(_template(task, seed), directory)
    labels = MULTI_LABELS if task == "multi_label" else KOREAN_LABELS
    write_model_meta(
        directory,
        {
            "task": task,
            "labels": labels,
            "thresholds": thresholds,
            "max_seq_length": max_seq_length,
            "base_model": "tiny-bert",
        },
    )
    return directory


def register_model(
    settings: Any,
    *,
    task: str = "single_label",
    seed: int = 0,
    thresholds: dict[str, float] | None = None,
    max_seq_length: int | None = 128,
    **row: Any,
) -> str:
    """Build a tiny model in the store and insert its `models` row; returns the model id."""
    from core.db import session_scope
    from core.store import dir_size_bytes, model_dir
    from core.tables import TunedModel, new_id

    model_id = new_id("mdl")
    directory = tiny_model_dir(
        model_dir(settings.models_dir, model_id),
        task=task, seed=seed, thresholds=thresholds, max_seq_length=max_seq_length,
    )
    labels = MULTI_LABELS if task == "multi_label" else KOREAN_LABELS
    with session_scope() as session:
        session.add(
            TunedModel(
                id=model_id,
                job_id=row.pop("job_id", None),
                base_model="tiny-bert",
                task=task,
                labels=labels,
                thresholds=thresholds,
                metrics=row.pop("metrics", {"f1_macro": 0.5}),
                max_seq_length=max_seq_length,
                path=str(directory),
                size_bytes=dir_size_bytes(directory),
                **row,
            )
        )
    return model_id


# Words that decide each class of the trained tiny models: a few dozen steps learn them.
TRAINED_LABELS = ["neg", "pos"]
TRAINED_WORDS = {"neg": ["awful", "boring", "terrible", "worst"],
                 "pos": ["great", "lovely", "superb", "best"]}
TRAINED_MULTI_LABELS = ["toxic", "insult", "threat"]
TRAINED_MULTI_WORDS = {"toxic": "poison", "insult": "idiot", "threat": "kill"}


def trained_texts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label) pairs: a class word in a short sentence, alternating classes."""
    import random

    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        label = TRAINED_LABELS[i % 2]
        pairs.append((f"the film was {rng.choice(TRAINED_WORDS[label])} today {i % 7}", label))
    return pairs


def trained_multi_texts(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """(text, labels) pairs for the multi-label model: each label's word present or not."""
    import random

    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        chosen = [name for j, name in enumerate(TRAINED_MULTI_LABELS) if (i >> j) & 1 or rng.random() < 0.1]
        words = " ".join(TRAINED_MULTI_WORDS[name] for name in chosen)
        pairs.append((f"you said {words} there {i % 5}".replace("  ", " "), chosen))
    return pairs


@lru_cache
def _trained_template(task: str) -> Path:
    """A tiny classifier really trained (plain AdamW over its own tokenizer's batches) until it
    tells the classes apart, so file predictions can be checked against known labels."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    multi = task == "multi_label"
    labels = TRAINED_MULTI_LABELS if multi else TRAINED_LABELS
    root = Path(tempfile.mkdtemp(prefix=f"trained-{task}-"))
    atexit.register(shutil.rmtree, root, True)
    directory = make_tiny_classifier(root / "model", labels, multi_label=multi, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModelForSequenceClassification.from_pretrained(str(directory))
    if multi:
        pairs = trained_multi_texts(48, seed=1)
        targets = torch.tensor([[float(name in chosen) for name in labels] for _, chosen in pairs])
    else:
        single = trained_texts(48, seed=1)
        pairs = [(text, [label]) for text, label in single]
        targets = torch.tensor([labels.index(label) for _, label in single])
    batch = tokenizer([text for text, _ in pairs], padding=True, return_tensors="pt")
    # The 30k-row word embedding stays as it is (random vectors tell the words apart already):
    # updating it is most of a step's cost. One thread: many threads only fight on a busy host.
    model.get_input_embeddings().weight.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model.eval()  # no dropout: a model this small learns the words far faster without it
    try:
        for _ in range(100):
            model(**batch, labels=targets).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(directory)
    return directory


def register_trained_model(settings: Any, *, task: str = "single_label") -> str:
    """The trained tiny model in the store with its `models` row, as a finished job leaves it."""
    from core.db import session_scope
    from core.store import dir_size_bytes, model_dir, write_model_meta
    from core.tables import TunedModel, new_id

    labels = TRAINED_MULTI_LABELS if task == "multi_label" else TRAINED_LABELS
    thresholds = dict.fromkeys(labels, 0.5) if task == "multi_label" else None
    model_id = new_id("mdl")
    directory = model_dir(settings.models_dir, model_id)
    shutil.copytree(_trained_template(task), directory)
    write_model_meta(directory, {"task": task, "labels": labels, "thresholds": thresholds,
                                 "max_seq_length": 64, "base_model": "tiny-bert"})
    with session_scope() as session:
        session.add(TunedModel(id=model_id, base_model="tiny-bert", task=task, labels=labels,
                               thresholds=thresholds, metrics={}, max_seq_length=64, path=str(directory),
                               size_bytes=dir_size_bytes(directory)))
    return model_id
