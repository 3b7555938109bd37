"""The adaptive batch: the probe, OOM recovery that redoes the same step, loss normalization."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.worker.helpers import (
    build_task,
    make_config,
    make_trainer,
    max_weight_diff,
    record_windows,
    weights,
)
from worker.training.config import LoopState
from worker.training.devices import is_oom
from worker.training.loop import run_training
from worker.training.micro_batch import next_micro_batch
from worker.training.protocols import TrainingError
from worker.training.recording import RecordingSink

ATOL = 1e-5


def _train(dataset_dir: Path, model_dir: Path, run_dir: Path, **overrides: object):  # type: ignore[no-untyped-def]
    config = make_config(**overrides)
    task = build_task(dataset_dir, model_dir, config)
    windows = record_windows(task)
    sink = RecordingSink()
    result = run_training(task, config, run_dir, sink)
    return task, sink, result, windows


def test_micro_split_does_not_change_the_update(dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    """32x1 and 8x4 give the same weights after a full epoch, the short last window (8 rows) included."""
    whole, _, r1, w1 = _train(dataset_dir, model_dir, tmp_path / "a", batch_size=32, micro_batch_size=32)
    split, _, r2, w2 = _train(dataset_dir, model_dir, tmp_path / "b", batch_size=32, micro_batch_size=8)
    assert (r1.micro_batch_size, r1.grad_accum_steps) == (32, 1)
    assert (r2.micro_batch_size, r2.grad_accum_steps) == (8, 4)
    assert [len(w) for w in w1] == [32, 32, 8] and w1 == w2
    assert max_weight_diff(weights(whole.model), weights(split.model)) < ATOL
    untrained = build_task(dataset_dir, model_dir, make_config()).model
    assert max_weight_diff(weights(untrained), weights(whole.model)) > 100 * ATOL  # it did train


def test_injected_oom_mid_run_splits_the_micro_batch_and_redoes_the_step(
    dataset_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    reference, _, _, ref_windows = _train(dataset_dir, model_dir, tmp_path / "ref", epochs=2,
                                          batch_size=32, micro_batch_size=32)
    task, sink, result, windows = _train(
        dataset_dir, model_dir, tmp_path / "oom", epochs=2, batch_size=32, micro_batch_size=32,
        fault_oom_above_micro_batch=8, fault_oom_from_step=2,
    )
    recoveries = sink.events_of("oom_recovered")
    assert [(e["step"], e["old_micro_batch_size"], e["new_micro_batch_size"]) for e in recoveries] == [
        (2, 32, 16), (2, 16, 8)]
    assert (recoveries[-1]["old_grad_accum_steps"], recoveries[-1]["new_grad_accum_steps"]) == (2, 4)
    assert (result.micro_batch_size, result.grad_accum_steps, result.global_step) == (8, 4, 6)
    assert [p[2]["micro_batch_size"] for p in sink.train_points] == [32, 8, 8, 8, 8, 8]
    # Nothing skipped or repeated: every epoch's windows cover every train row exactly once.
    assert windows == ref_windows
    for epoch in (windows[:3], windows[3:]):
        assert Counter(r for w in epoch for r in w) == Counter(range(72))
    assert max_weight_diff(weights(reference.model), weights(task.model)) < ATOL


def test_probe_picks_the_largest_divisor_that_fits(small_dataset_dir: Path, model_dir: Path,
                                                   tmp_path: Path) -> None:
    _, sink, result, _ = _train(small_dataset_dir, model_dir, tmp_path, batch_size=24, max_steps=1,
                                max_micro_batch_size=16, fault_oom_above_micro_batch=5, fault_oom_from_step=0)
    probe = sink.events_of("batch_probe")[0]
    assert (probe["micro_batch_size"], probe["grad_accum_steps"]) == (4, 6)
    assert probe["sequence_length"] == max(e["length"] for e in build_task(
        small_dataset_dir, model_dir, make_config()).train_examples)
    assert "oom_recovered" not in sink.kinds()
    assert (result.micro_batch_size, result.grad_accum_steps) == (4, 6)


def test_probe_leaves_weights_gradients_and_rng_untouched(small_dataset_dir: Path, model_dir: Path) -> None:
    config = make_config(batch_size=8)
    task = build_task(small_dataset_dir, model_dir, config)
    before, rng_before = weights(task.model), torch.get_rng_state()
    trainer = make_trainer(task, config)
    probe = trainer.probe(task.train_examples)
    assert probe["micro_batch_size"] == 8
    assert max_weight_diff(before, weights(task.model)) == 0.0
    assert torch.equal(rng_before, torch.get_rng_state())
    assert all(p.grad is None for p in task.model.parameters())


def test_odd_micro_batch_falls_to_the_largest_divisor_below(small_dataset_dir: Path, model_dir: Path,
                                                            tmp_path: Path) -> None:
    assert [next_micro_batch(24, m) for m in (24, 12, 6, 3, 1)] == [12, 6, 3, 2, None]
    assert next_micro_batch(30, 5) == 3 and next_micro_batch(7, 7) == 1
    _, sink, result, _ = _train(small_dataset_dir, model_dir, tmp_path, batch_size=12, micro_batch_size=3,
                                max_steps=2, fault_oom_above_micro_batch=2, fault_oom_from_step=2)
    (event,) = sink.events_of("oom_recovered")
    assert (event["old_micro_batch_size"], event["new_micro_batch_size"], event["new_grad_accum_steps"]) == (
        3, 2, 6)
    assert (result.micro_batch_size, result.grad_accum_steps) == (2, 6)


def test_eval_oom_shrinks_only_the_eval_batch(small_dataset_dir: Path, model_dir: Path,
                                              tmp_path: Path) -> None:
    _, sink, result, _ = _train(small_dataset_dir, model_dir, tmp_path, batch_size=8, micro_batch_size=8,
                                max_steps=2, eval_strategy="steps", eval_steps=1, eval_batch_size=16,
                                fault_oom_above_eval_batch=4)
    shrinks = [(e["old_eval_batch_size"], e["new_eval_batch_size"]) for e in sink.events_of("eval_oom")]
    assert shrinks == [(16, 8), (8, 4)]  # once: the second evaluation starts at 4
    assert (result.micro_batch_size, result.grad_accum_steps, result.eval_batch_size) == (8, 1, 4)
    assert "oom_recovered" not in sink.kinds()
    assert len(sink.eval_points) == 2 and all("f1_macro" in p[2] for p in sink.eval_points)


def test_micro_batch_one_still_failing_turns_on_checkpointing_then_says_what_helps(
    small_dataset_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    config = make_config(batch_size=4, micro_batch_size=4, max_steps=3, fault_oom_above_micro_batch=0,
                         fault_oom_from_step=2)
    task = build_task(small_dataset_dir, model_dir, config)
    sink = RecordingSink()
    with pytest.raises(TrainingError) as caught:
        run_training(task, config, tmp_path, sink)
    assert [e["new_micro_batch_size"] for e in sink.events_of("oom_recovered")] == [2, 1]
    assert sink.kinds()[-1] == "gradient_checkpointing"
    assert task.model.is_activation_checkpointing  # type: ignore[attr-defined]
    message = str(caught.value)
    assert "max_seq_length" in message and "smaller base model" in message
    assert str(model_dir) in message and "sequence length" in message and "at step 2" in message


def test_the_last_rung_quotes_the_memory_plan(small_dataset_dir: Path, model_dir: Path,
                                              tmp_path: Path) -> None:
    plan = "tiny fits: fp32, AdamW, gradient checkpointing off; it needs 0.0 GiB at fp32, micro-batch 1."
    config = make_config(batch_size=2, micro_batch_size=2, max_steps=2, fault_oom_above_micro_batch=0,
                         fault_oom_from_step=1, memory_plan_message=plan)
    with pytest.raises(TrainingError) as caught:
        run_training(build_task(small_dataset_dir, model_dir, config), config, tmp_path, RecordingSink())
    assert caught.value.kind == "environment"
    assert str(caught.value).endswith(f"The memory plan made before loading: {plan}")


def test_short_window_is_normalized_by_its_own_sample_count(small_dataset_dir: Path, model_dir: Path) -> None:
    """A window of 5 split 2+2+1 gives the gradient of the mean loss over those 5 samples."""
    config = make_config(batch_size=8)
    task = build_task(small_dataset_dir, model_dir, config)
    examples, window = task.train_examples, [0, 3, 5, 6, 9]
    batch = task.collate([examples[i] for i in window])
    logits = task.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    F.cross_entropy(logits, batch["labels"]).backward()
    expected = {n: p.grad.clone() for n, p in task.model.named_parameters() if p.grad is not None}
    task.model.zero_grad(set_to_none=True)

    trainer = make_trainer(task, config, LoopState(micro_batch_size=2))
    trainer.train_window(examples, window, step=1)
    got = {n: p.grad for n, p in task.model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    assert max(float((got[n] - expected[n]).abs().max()) for n in got) < 1e-6


def test_what_counts_as_out_of_memory() -> None:
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 123 bytes"))
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom(ValueError("out of memory"))
