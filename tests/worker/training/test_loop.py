"""The loop end to end on a tiny model: data order, logging, evaluation, checkpoints, cancel."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from core.jobspec import DATA_ORDERS, DEFAULT_DATA_ORDER
from tests.worker.helpers import LABELS, build_task, make_config, record_windows
from worker.training.checkpoints import TRAINING_STATE_FILE
from worker.training.config import TrainConfig
from worker.training.data_order import POOL_WINDOWS, epoch_windows
from worker.training.fit import diagnose_fit
from worker.training.loop import run_training
from worker.training.protocols import TrainingError
from worker.training.recording import RecordingSink


@pytest.mark.parametrize("order", DATA_ORDERS)
def test_every_data_order_is_a_seeded_permutation_in_full_windows(order: str) -> None:
    lengths = [(i * 37) % 101 + 1 for i in range(250)]
    windows = epoch_windows(lengths, 16, seed=7, epoch=3, data_order=order)
    assert windows == epoch_windows(lengths, 16, seed=7, epoch=3, data_order=order)  # resume relies on it
    assert windows != epoch_windows(lengths, 16, seed=7, epoch=4, data_order=order)
    assert windows != epoch_windows(lengths, 16, seed=8, epoch=3, data_order=order)
    assert Counter(i for w in windows for i in w) == Counter(range(250))
    assert [len(w) for w in windows] == [16] * 15 + [10]  # the one short window is last
    # Inside a window, longest first: its micro-batches pad little (the step's sum is the same).
    assert all([lengths[i] for i in w] == sorted((lengths[i] for i in w), reverse=True) for w in windows)


def test_grouped_windows_are_length_sorted_across_the_pool_and_random_ones_are_not() -> None:
    # 800 rows, batch 16: 50 windows, one grouped pool; lengths 1..101 in no order.
    lengths = [(i * 37) % 101 + 1 for i in range(800)]

    def spans(order: str) -> list[tuple[int, int]]:
        windows = epoch_windows(lengths, 16, seed=7, epoch=0, data_order=order)
        return sorted((min(lengths[i] for i in w), max(lengths[i] for i in w)) for w in windows)

    def mean_spread(order: str) -> float:
        return sum(high - low for low, high in spans(order)) / 50

    grouped = spans("grouped")
    # One pool cut in length order: no two windows' lengths overlap (touching at a tie at most).
    assert all(high <= next_low for (_, high), (next_low, _) in zip(grouped, grouped[1:], strict=False))
    # Random windows are samples: each spans most of 1..101, and they overlap one another.
    random_spans = spans("random")
    assert mean_spread("random") > 70
    assert any(high > next_low for (_, high), (next_low, _) in zip(random_spans, random_spans[1:],
                                                                   strict=False))
    # Windowed sorts pools of 4: between the two.
    assert mean_spread("grouped") < mean_spread("windowed") < mean_spread("random")


def test_every_job_data_order_has_a_pool_and_no_other_is_taken() -> None:
    assert set(POOL_WINDOWS) == set(DATA_ORDERS)
    assert DEFAULT_DATA_ORDER in DATA_ORDERS and TrainConfig().data_order == DEFAULT_DATA_ORDER
    with pytest.raises(ValueError, match="choose one of random, windowed, grouped"):
        epoch_windows([1, 2, 3], 2, seed=0, epoch=0, data_order="sorted")


@pytest.mark.parametrize("order", DATA_ORDERS)
def test_the_job_data_order_is_the_order_the_loop_trains_in(
    dataset_dir: Path, model_dir: Path, tmp_path: Path, order: str
) -> None:
    # 72 rows, batch 8: 9 windows, one pool for grouped. A forced micro-batch keeps the probe
    # out of the record.
    config = make_config(epochs=2, batch_size=8, micro_batch_size=4, data_order=order, seed=3)
    task = build_task(dataset_dir, model_dir, config)
    used = record_windows(task)
    result = run_training(task, config, tmp_path, RecordingSink())
    assert result.global_step == 18
    lengths = [int(e["length"]) for e in task.train_examples]
    expected = [w for epoch in (0, 1) for w in epoch_windows(lengths, 8, 3, epoch, order)]
    assert used == expected
    others = [o for o in DATA_ORDERS if o != order]
    assert all(used != [w for e in (0, 1) for w in epoch_windows(lengths, 8, 3, e, o)] for o in others)


def test_config_from_hyperparameters_takes_job_and_settings_fields() -> None:
    from core.jobspec import Hyperparameters
    from core.settings import Settings

    hp = Hyperparameters(batch_size=16, learning_rate=5e-5, eval_strategy="steps", eval_steps=7,
                         data_order="random")
    settings = Settings(max_micro_batch_size=8, keep_last_checkpoints=3, torch_threads=2,
                        fault_oom_above_micro_batch=4, fault_oom_from_step=5, fault_step_delay_s=0.5)
    config = TrainConfig.from_hyperparameters(hp, settings)
    assert (config.batch_size, config.learning_rate, config.eval_steps, config.seed) == (16, 5e-5, 7, 42)
    assert config.data_order == "random"
    assert (config.max_micro_batch_size, config.keep_last_checkpoints, config.torch_threads) == (8, 3, 2)
    assert (config.fault_oom_above_micro_batch, config.fault_oom_from_step, config.fault_step_delay_s) == (
        4, 5, 0.5)
    # A resumed run takes the job's fields from the checkpoint and keeps today's settings.
    resumed = config.with_job_fields_of({"batch_size": 32, "fault_oom_from_step": 99,
                                         "data_order": "windowed"})
    assert (resumed.batch_size, resumed.fault_oom_from_step, resumed.data_order) == (32, 5, "windowed")


def test_a_run_logs_evaluates_and_keeps_the_best_and_last_checkpoints(
    small_dataset_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    # 20 rows, batch 8: 3 steps per epoch (8, 8, 4); evaluate every step; keep the last 1 + best.
    config = make_config(epochs=2, batch_size=8, eval_strategy="steps", eval_steps=1, logging_steps=2,
                         keep_last_checkpoints=1, metric_for_best_model="loss")
    task = build_task(small_dataset_dir, model_dir, config)
    sink = RecordingSink()
    result = run_training(task, config, tmp_path, sink)

    assert sink.kinds()[:2] == ["batch_probe", "started"] and sink.kinds()[-1] == "finished"
    assert result.global_step == 6 and not result.cancelled and not result.early_stopped
    assert [p[0] for p in sink.train_points] == [2, 4, 6]
    train = sink.train_points[0][2]
    assert set(train) == {"loss", "learning_rate", "grad_norm", "samples_per_second", "micro_batch_size",
                          "grad_accum_steps"}
    assert sink.train_points[-1][1] == pytest.approx(2.0)  # epoch of the last step
    assert [p[0] for p in sink.eval_points] == [1, 2, 3, 4, 5, 6]
    evaluation = sink.eval_points[-1][2]
    for key in ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted"):
        assert isinstance(evaluation[key], float)
    # The diagnosis is made from the figures recorded beside it: this eval's loss, the mean train
    # loss since the previous evaluation, and the earlier evaluations' losses.
    earlier = [p[2]["loss"] for p in sink.eval_points[:-1]]
    assert evaluation["fit"] == diagnose_fit(evaluation["train_loss"], evaluation["loss"], earlier,
                                             task.baseline_loss)
    assert [p[2]["fit"] for p in sink.eval_points] == [
        diagnose_fit(p[2]["train_loss"], p[2]["loss"], [q[2]["loss"] for q in sink.eval_points[:i]],
                     task.baseline_loss) for i, p in enumerate(sink.eval_points)]
    assert evaluation["confusion_matrix"]["labels"] == LABELS
    assert sum(map(sum, evaluation["confusion_matrix"]["matrix"])) == 12
    assert set(evaluation["per_class"]) == set(LABELS)

    # Checkpoints: one per evaluation; on disk only the best and the last remain.
    assert [c["step"] for c in sink.checkpoints] == [1, 2, 3, 4, 5, 6]
    best_step = min(sink.eval_points, key=lambda p: p[2]["loss"])[0]
    assert result.best_checkpoint == tmp_path / "checkpoints" / f"step-{best_step}"
    assert result.last_checkpoint == tmp_path / "checkpoints" / "step-6"
    on_disk = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert on_disk == {f"step-{best_step}", "step-6"}
    assert {p.name for p in sink.removed} == {f"step-{s}" for s in range(1, 6)} - {f"step-{best_step}"}
    assert result.best_metrics["loss"] == min(p[2]["loss"] for p in sink.eval_points)

    last = result.last_checkpoint
    assert {"config.json", "model.safetensors", "tokenizer.json", TRAINING_STATE_FILE, "tuneserve.json"} <= {
        p.name for p in last.iterdir()}
    hf_config = json.loads((last / "config.json").read_text())
    assert hf_config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    meta = json.loads((last / "tuneserve.json").read_text())
    assert meta["task"] == "single_label" and meta["labels"] == LABELS and meta["max_seq_length"] == 48
    assert sink.last_progress["step"] == 6 and sink.last_progress["total_steps"] == 6
    assert sink.last_progress["best_metric_name"] == "loss"


def test_cancel_stops_within_one_optimizer_step(small_dataset_dir: Path, model_dir: Path,
                                                tmp_path: Path) -> None:
    config = make_config(epochs=3, batch_size=4, micro_batch_size=4)
    task = build_task(small_dataset_dir, model_dir, config)
    sink = RecordingSink(stop_when=lambda step: step >= 2)
    result = run_training(task, config, tmp_path, sink)
    assert result.cancelled and result.global_step == 2
    assert sink.kinds()[-1] == "cancelled" and "finished" not in sink.kinds()
    # No evaluation, but a checkpoint where it stopped: a resume continues from step 2.
    assert sink.eval_points == [] and result.last_checkpoint == tmp_path / "checkpoints" / "step-2"
    assert [(c["step"], c["metrics"], c["is_best"]) for c in sink.checkpoints] == [(2, {}, False)]
    assert sink.events_of("cancelled") == [{"step": 2}]


def test_a_checkpoint_every_interval_and_at_each_epoch_end(small_dataset_dir: Path, model_dir: Path,
                                                           tmp_path: Path) -> None:
    # 20 rows, batch 4: 5 steps an epoch, 2 epochs; evaluations only every 4 steps.
    config = make_config(epochs=2, batch_size=4, micro_batch_size=4, eval_strategy="steps", eval_steps=4,
                         keep_last_checkpoints=100)
    sink = RecordingSink()
    run_training(build_task(small_dataset_dir, model_dir, config), config, tmp_path / "epochs", sink)
    # Evaluations at 4 and 8 and the last step; epoch ends at 5 and 10 (checkpoint, no evaluation).
    assert [(c["step"], bool(c["metrics"])) for c in sink.checkpoints] == [
        (4, True), (5, False), (8, True), (10, True)]

    # An interval of 0 s: a checkpoint after every optimizer step.
    timed = make_config(epochs=1, batch_size=4, micro_batch_size=4, eval_strategy="epoch",
                        checkpoint_interval_s=0.0, keep_last_checkpoints=100)
    sink = RecordingSink()
    run_training(build_task(small_dataset_dir, model_dir, timed), timed, tmp_path / "timed", sink)
    assert [c["step"] for c in sink.checkpoints] == [1, 2, 3, 4, 5]
    assert [bool(c["metrics"]) for c in sink.checkpoints] == [False] * 4 + [True]


def test_early_stopping_after_patience_evaluations(small_dataset_dir: Path, model_dir: Path,
                                                   tmp_path: Path) -> None:
    # A learning rate of 0 never improves on the first evaluation.
    config = make_config(epochs=5, batch_size=4, micro_batch_size=4, learning_rate=0.0,
                         eval_strategy="steps", eval_steps=1, early_stopping_patience=2)
    task = build_task(small_dataset_dir, model_dir, config)
    sink = RecordingSink()
    result = run_training(task, config, tmp_path, sink)
    assert result.early_stopped and result.global_step == 3
    assert sink.events_of("early_stopped") == [{"step": 3, "best_step": 1}]
    assert result.best_checkpoint == tmp_path / "checkpoints" / "step-1"


def test_an_unknown_best_metric_is_refused_before_training(small_dataset_dir: Path, model_dir: Path,
                                                           tmp_path: Path) -> None:
    config = make_config(metric_for_best_model="hamming_loss")  # a multi-label metric
    task = build_task(small_dataset_dir, model_dir, config)
    with pytest.raises(TrainingError, match="hamming_loss.*accuracy"):
        run_training(task, config, tmp_path, RecordingSink())


def test_fault_step_delay_sleeps_after_every_step(small_dataset_dir: Path, model_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.training import faults

    slept: list[float] = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)  # record the delays instead of waiting
    config = make_config(max_steps=2, batch_size=4, micro_batch_size=4, fault_step_delay_s=0.3)
    task = build_task(small_dataset_dir, model_dir, config)
    run_training(task, config, tmp_path, RecordingSink(stop_when=lambda step: step >= 2))
    assert slept == [0.3, 0.3]
