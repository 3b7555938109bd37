"""learning_rate "auto": the range test's curve and choice on a tiny model, a rate past the
blow-up never chosen, no trace left on the run, and a resume that keeps the chosen rate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.worker.helpers import build_task, make_config, max_weight_diff, weights
from worker.training import lr_range
from worker.training.checkpoints import TRAINING_STATE_FILE
from worker.training.loop import run_training, setup
from worker.training.recording import RecordingSink
from worker.training.rng import capture_rng

RUN = {"epochs": 2, "batch_size": 8, "micro_batch_size": 4, "eval_strategy": "steps", "eval_steps": 3,
       "warmup_ratio": 0.2}


def test_the_rule_is_the_minimum_over_ten_and_stays_below_the_blow_up() -> None:
    lrs = [1e-7 * 10 ** (i / 10) for i in range(60)]               # 1e-7 .. ~8e-2
    losses = [2.0 - (1.5 if lrs[i] > 1e-4 else 0.0) * min(1.0, (i - 30) / 15) if i > 30 else 2.0
              for i in range(60)]                                    # falls from 1e-4, lowest at the end
    smoothed = lr_range.smooth(losses)
    assert lr_range.budget_steps(6000, 16) == 18  # the 2,000 rows x 3 epochs: 4.8%
    assert lr_range.budget_steps(10**6, 16) == lr_range.MAX_STEPS
    chosen, rule = lr_range.choose_learning_rate(lrs, smoothed)
    at = min(range(60), key=lambda i: smoothed[i])
    assert rule == "minimum/10" and chosen == pytest.approx(lrs[at] / 10)
    assert chosen < lrs[-1]
    # A curve that never falls says nothing of the rate: the job's default, when the curve reached
    # it without blowing up; else the smallest rate tested, not a guess beyond the data.
    flat = [3.0] + [3.0 + i / 100 for i in range(1, 60)]
    assert lr_range.choose_learning_rate(lrs, flat, fallback=2e-5) == (
        2e-5, "minimum/10 (the loss never fell: the default 2e-05)")
    assert lr_range.choose_learning_rate(lrs[:5], [3.0, 3.1, 3.2, 3.3, 3.4])[0] == lrs[0]
    assert lr_range.choose_learning_rate(lrs[:5], [3.0, 3.1, 3.2, 3.3, 3.4], fallback=2e-5)[0] == lrs[0]
    assert lr_range.default_rate(full_finetune=True) == 2e-5
    assert lr_range.default_rate(full_finetune=False) == 2e-4
    # No finite loss at all: the smallest tested rate too.
    assert lr_range.choose_learning_rate([1e-7], [math.inf])[0] == 1e-7
    # A full fine-tune is never given more than the ceiling, and the rule says so.
    ceiling = lr_range.FULL_FINETUNE_MAX_LR
    capped, capped_rule = lr_range.choose_learning_rate(lrs, smoothed, ceiling=ceiling)
    assert chosen > ceiling and capped == ceiling
    assert capped_rule == "minimum/10, capped at 2e-04 for a full fine-tune"
    assert lr_range.choose_learning_rate(lrs[:5], [3.0, 3.1, 3.2, 3.3, 3.4], ceiling=ceiling)[0] == lrs[0]


def test_a_too_high_rate_is_never_chosen_and_the_model_is_left_as_it_was(
    dataset_dir: Path, dropout_model_dir: Path, tmp_path: Path
) -> None:
    # The range runs to 1e3, far past what any model survives: the loss must blow up on the way.
    config = make_config(**RUN, learning_rate=1e-3)
    task = build_task(dataset_dir, dropout_model_dir, config)
    trainer, _ = setup(task, config, tmp_path / "checkpoints", RecordingSink())
    before, rng_before = weights(trainer.model), capture_rng()
    test = lr_range.run(trainer, job_samples=100_000, max_steps=60, lr_end=1e3)
    assert test.diverged_at is not None, "the loss never blew up on the way to 1e3"
    assert len(test.lrs) == len(test.losses) == len(test.raw_losses) >= 5
    assert test.lrs == sorted(test.lrs) and test.lrs[-1] < test.diverged_at
    assert test.chosen < test.diverged_at / 10  # an order of magnitude below the blow-up, at least
    at = min(range(len(test.losses)), key=lambda i: test.losses[i])
    # Every weight of this model trains: a full fine-tune, so the ceiling applies.
    assert test.ceiling == lr_range.FULL_FINETUNE_MAX_LR
    if at == 0:  # this tiny random model's loss never falls: the curve says nothing, the default holds
        assert (test.chosen, test.rule) == (2e-5, "minimum/10 (the loss never fell: the default 2e-05)")
    else:
        assert test.chosen == pytest.approx(min(max(test.lrs[at] / 10, test.lrs[0]), test.ceiling))
    assert all(math.isfinite(x) for x in test.losses)
    # Nothing of the test stays: weights, gradients, RNG streams.
    assert max_weight_diff(before, weights(trainer.model)) == 0.0
    assert all(p.grad is None for p in trainer.model.parameters())
    after = capture_rng()
    assert torch.equal(after["torch"], rng_before["torch"]) and after["python"] == rng_before["python"]


def test_auto_trains_at_the_chosen_rate_exactly_as_a_run_given_that_rate(
    dataset_dir: Path, dropout_model_dir: Path, tmp_path: Path
) -> None:
    """With dropout on: the same weights as a run told the chosen number prove the test put back
    weights and RNG, and that the run trains at that rate."""
    config = make_config(**RUN, learning_rate="auto")
    task = build_task(dataset_dir, dropout_model_dir, config)
    sink = RecordingSink()
    result = run_training(task, config, tmp_path / "auto", sink)
    (test,) = sink.events_of("lr_range_test")
    assert sink.kinds()[:3] == ["batch_probe", "lr_range_test", "started"]
    # 72 rows x 2 epochs: 5% of it is 2 micro-batches of 4, so the minimum applies.
    assert test["steps"] == len(test["lrs"]) == len(test["losses"]) == lr_range.MIN_STEPS
    assert (test["samples"], test["job_samples"]) == (lr_range.MIN_STEPS * 4, 144)
    assert test["rule"].startswith("minimum/10") and test["lrs"][0] == lr_range.LR_START
    chosen = test["chosen"]
    assert lr_range.LR_START <= chosen < 1.0
    # The schedule peaks at the chosen rate (warmup 20%: the peak is reached within the run).
    assert max(p[2]["learning_rate"] for p in sink.train_points) == pytest.approx(chosen)
    state = torch.load(result.last_checkpoint / TRAINING_STATE_FILE, weights_only=True)  # type: ignore[operator]
    assert state["config"]["learning_rate"] == chosen  # what a resume trains at

    given = make_config(**RUN, learning_rate=chosen)
    plain = build_task(dataset_dir, dropout_model_dir, given)
    run_training(plain, given, tmp_path / "given", RecordingSink())
    assert max_weight_diff(weights(task.model), weights(plain.model)) < 1e-6


class CrashingSink(RecordingSink):
    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.crash_at = crash_at

    def train_point(self, step: int, epoch: float, values: dict[str, object]) -> None:
        super().train_point(step, epoch, values)  # type: ignore[arg-type]
        if step == self.crash_at:
            raise KeyboardInterrupt("worker killed")


def test_a_resumed_auto_run_keeps_the_chosen_rate_and_runs_no_second_test(
    dataset_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    config = make_config(**RUN, learning_rate="auto")
    first = CrashingSink(crash_at=4)
    with pytest.raises(KeyboardInterrupt):
        run_training(build_task(dataset_dir, model_dir, config), config, tmp_path / "run", first)
    (test,) = first.events_of("lr_range_test")
    sink = RecordingSink()
    run_training(build_task(dataset_dir, model_dir, config), config, tmp_path / "run", sink)
    assert "lr_range_test" not in sink.kinds() and sink.events_of("resumed")[0]["step"] == 3
    assert max(p[2]["learning_rate"] for p in first.train_points + sink.train_points) == pytest.approx(
        test["chosen"])
    meta = json.dumps(sink.events_of("started"))
    assert "auto" not in meta
