"""Worker-test fixtures: one tiny model and small datasets per session (tests copy nothing from
them; every run writes to its own tmp_path), torch on one thread (the CI box has two shared cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.helpers import tiny_model, write_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random BERT classifier, dropout off: runs with different splits are comparable."""
    return tiny_model(tmp_path_factory.mktemp("tiny-classifier"))


@pytest.fixture(scope="session")
def dropout_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny-classifier-dropout"), dropout=0.1)


@pytest.fixture(scope="session")
def multi_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny-multi"), multi_label=True)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """72 train rows (two full windows of 32 and a short one of 8), 24 validation rows."""
    return write_dataset(tmp_path_factory.mktemp("dataset"), 72, 24)


@pytest.fixture(scope="session")
def small_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 train rows, 12 validation rows: for tests about control flow, not numbers."""
    return write_dataset(tmp_path_factory.mktemp("small-dataset"), 20, 12, seed=1)


@pytest.fixture(scope="session")
def multi_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("multi-dataset"), 48, 24, multi_label=True, seed=2)
