"""The classification task: multi-label with tuned thresholds, class weights, base-model errors,
and the export a pipeline can serve."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.worker.helpers import LABELS, build_task, make_config
from worker.families.classification.task import _loss_weight, build_classification_task, load_classifier
from worker.job.export import export_tuned_model
from worker.training.loop import run_training
from worker.training.protocols import TrainingError
from worker.training.recording import RecordingSink


def test_multi_label_run_tunes_and_saves_thresholds(multi_dataset_dir: Path, multi_model_dir: Path,
                                                    tmp_path: Path) -> None:
    config = make_config(epochs=2, batch_size=16, learning_rate=5e-3, class_weights="auto")
    task = build_task(multi_dataset_dir, multi_model_dir, config, multi_label=True)
    assert task.loss_weight is not None and task.loss_weight.shape == (3,)
    sink = RecordingSink()
    result = run_training(task, config, tmp_path / "run", sink)

    checkpoint = result.last_checkpoint
    assert checkpoint is not None
    evaluation = sink.eval_points[-1][2]
    for key in ("loss", "f1_micro", "f1_macro", "subset_accuracy", "hamming_loss"):
        assert isinstance(evaluation[key], float)
    assert set(evaluation["per_label"]) == set(LABELS)
    meta = json.loads((checkpoint / "tuneserve.json").read_text())
    assert meta["task"] == "multi_label" and set(meta["thresholds"]) == set(LABELS)
    assert meta["thresholds"] == evaluation["thresholds"]
    hf_config = json.loads((checkpoint / "config.json").read_text())
    assert hf_config["problem_type"] == "multi_label_classification"

    # The export: no training state, the meta merged, and a pipeline serves the real label names.
    dest = tmp_path / "models" / "mdl_1"
    export_tuned_model(checkpoint, dest, {"base_model": "tiny", "max_seq_length": 48})
    assert not (dest / "training_state.pt").exists()
    exported = json.loads((dest / "tuneserve.json").read_text())
    assert exported["thresholds"] == meta["thresholds"] and exported["base_model"] == "tiny"
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(dest), top_k=None, device="cpu")
    scores: Any = classify("the team scored a late goal")[0]
    assert {s["label"] for s in scores} == set(LABELS)


def test_auto_class_weights_are_inverse_frequencies() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    single = _loss_weight([0, 0, 0, 1], num_labels=3, multi_label=False)
    # scikit-learn's balanced weights n / (classes present * count); a class absent from train: 1
    assert single.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 1.0])
    every = _loss_weight([0, 0, 1, 2, 2, 2], num_labels=3, multi_label=False)
    assert every.tolist() == pytest.approx(compute_class_weight("balanced", classes=np.arange(3),
                                                                y=np.array([0, 0, 1, 2, 2, 2])).tolist())
    multi = _loss_weight([[0], [0, 1], [], [0]], num_labels=3, multi_label=True)
    assert multi.tolist() == pytest.approx([1 / 3, 3.0, 1.0])  # negatives / positives


def test_class_weights_change_the_single_label_loss(small_dataset_dir: Path, model_dir: Path) -> None:
    plain = build_task(small_dataset_dir, model_dir, make_config())
    weighted = build_task(small_dataset_dir, model_dir, make_config(class_weights="auto"))
    assert plain.loss_weight is None and weighted.loss_weight is not None
    batch = plain.collate(plain.train_examples[:6])
    with torch.no_grad():
        (a, _), (b, _) = plain.forward(plain.model, batch), weighted.forward(weighted.model, batch)
    assert float(a) != pytest.approx(float(b))


def test_a_base_model_that_cannot_be_loaded_names_the_model_and_the_reason(
    small_dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TrainingError) as caught:
        build_classification_task(small_dataset_dir, LABELS, False, "no-such-org/no-such-model",
                                  make_config())
    assert "'no-such-org/no-such-model'" in str(caught.value)
    assert "not a local directory and the hub is offline" in str(caught.value)


def test_a_label_outside_the_label_list_is_refused(tmp_path: Path, model_dir: Path) -> None:
    from tests.worker.helpers import write_dataset

    dataset = write_dataset(tmp_path, 6, 3)
    with pytest.raises(TrainingError, match="outside the 2 labels"):
        build_classification_task(dataset, LABELS[:2], False, str(model_dir), make_config())


def test_a_tuned_model_with_another_label_set_can_be_a_base(multi_model_dir: Path) -> None:
    """A 3-label multi-label model as the base of a 5-label single-label task: the head is replaced."""
    names = ["v", "w", "x", "y", "z"]
    model, _, new_weights = load_classifier(str(multi_model_dir), names, multi_label=False, seed=0)
    assert new_weights == "a new classification head: classifier.weight, classifier.bias"
    assert model.config.id2label == dict(enumerate(names))
    assert model.config.problem_type == "single_label_classification"
    assert model.classifier.out_features == 5


def test_loading_logs_one_line_naming_the_new_head_and_no_report_table(
    tiny_encoder_dir: Path, multi_model_dir: Path, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from core.logging import quiet_libraries

    quiet_libraries()  # as the worker's entry point does
    caplog.set_level(logging.INFO)
    load_classifier(str(tiny_encoder_dir), ["neg", "pos"], multi_label=False, seed=0)
    # A tuned model with another label set as the base: its head is replaced, and said so.
    load_classifier(str(multi_model_dir), ["v", "w", "x", "y", "z"], multi_label=False, seed=0)
    messages = [r.getMessage() for r in caplog.records]
    heads = [m for m in messages if m.startswith("a new classification head")]
    assert heads == ["a new classification head: classifier.weight, classifier.bias"] * 2, messages
    assert not [m for m in messages if "LOAD REPORT" in m or "MISSING" in m]
    # No progress bar reaches stderr (tqdm writes there), nor a FutureWarning.
    _, err = capfd.readouterr()
    assert "Loading weights" not in err and "FutureWarning" not in err, err[-2000:]


def test_a_hub_name_in_the_local_cache_loads_offline(model_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """What POST /jobs accepts offline (a cached hub name), the worker loads from the cache."""
    import shutil

    from huggingface_hub import constants

    commit = "1" * 40
    repo = tmp_path / "hub" / "models--someorg--tiny-classifier"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert constants.HF_HUB_OFFLINE  # the tests never reach the network
    model, tokenizer, _ = load_classifier("someorg/tiny-classifier", LABELS, False, seed=0)
    assert model.config.id2label == dict(enumerate(LABELS))
    assert tokenizer("a goal")["input_ids"]

    with pytest.raises(TrainingError) as caught:
        load_classifier("someorg/not-cached", LABELS, False, seed=0)
    assert caught.value.kind == "environment" and "hub is offline" in str(caught.value)
