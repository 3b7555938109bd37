"""A failed job's error says whose fault it was: real errors, as the libraries raise them."""

from __future__ import annotations

import pytest
import torch

from worker.job.errors import classify
from worker.training.errors import TrainingError


def _raised(action) -> BaseException:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception) as caught:
        action()
    return caught.value


def test_a_full_disk_is_the_environment_and_says_to_free_space_and_resume() -> None:
    def write_checkpoint() -> None:
        # /dev/full answers every write with ENOSPC, as a full volume does.
        torch.save({"optimizer": torch.zeros(100_000)}, "/dev/full")

    def write_file() -> None:
        with open("/dev/full", "wb") as fh:
            fh.write(b"x" * 100_000)

    for action in (write_checkpoint, write_file):
        kind, message = classify(_raised(action), "job_1")
        assert kind == "environment", message
        assert "disk ran out of space" in message and "POST /jobs/job_1/resume" in message
        assert "bug" not in message


def test_missing_package_and_memory_are_the_environment() -> None:
    kind, message = classify(_raised(lambda: __import__("tuneserve_no_such_package")), "job_1")
    assert kind == "environment" and "tuneserve_no_such_package" in message and "pip install" in message
    kind, message = classify(MemoryError(), "job_1")
    assert kind == "environment" and "ran out of memory" in message


def test_user_errors_and_bugs() -> None:
    kind, message = classify(TrainingError("train.parquet: row 3 has label 7, outside the 2 labels"), "job_1")
    assert (kind, message) == ("data", "train.parquet: row 3 has label 7, outside the 2 labels")
    kind, message = classify(TrainingError("Cannot fetch the model.", kind="environment"), "job_1")
    assert kind == "environment" and message.startswith("Cannot fetch the model.")
    assert "POST /jobs/job_1/resume" in message
    kind, message = classify(_raised(lambda: {}["missing"]), "job_1")
    assert kind == "bug" and "KeyError" in message and "bug in tuneserve" in message
    assert "POST /jobs/job_1/resume" in message
