"""`learning_rate: "auto"`: a learning-rate range test before training (Smith 2015, fastai's
`lr_find`), and the rule that picks the job's rate from its curve.

The test trains for a few dozen micro-batches of the training split while the learning rate rises
exponentially from LR_START to LR_END, recording the loss of each; it stops early once the loss
blows up. Afterwards the trainable weights, the buffers and every RNG stream are put back, and the
optimizer it used is thrown away: the real run starts from exactly where it would have without it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from core.catalogue import LORA_LEARNING_RATE
from core.jobspec import Hyperparameters
from worker.training.devices import to_device
from worker.training.optim import build_optimizer
from worker.training.rng import capture_rng, restore_rng

if TYPE_CHECKING:
    from worker.training.micro_batch import Trainer

LR_START = 1e-7
LR_END = 1.0
MAX_STEPS = 100
# Fewer steps than this say little about a curve; a split this small is still tested this often
# (the split is cycled through again once it is used up).
MIN_STEPS = 16
# The test's budget: this fraction of the samples the job trains on (epochs x train rows), in
# micro-batches of at most RANGE_BATCH, between MIN_STEPS and MAX_STEPS. A 2,000-row, 3-epoch
# job: 6,000 samples, so 18 micro-batches of 16 = 288 (4.8%); a long job gets the full 100.
BUDGET_FRACTION = 0.05
RANGE_BATCH = 16
# fastai's smoothing of the recorded loss (an exponential moving average, bias-corrected): 0.98
# over its 100 points; a shorter curve is smoothed less, or its minimum would lag far behind.
SMOOTHING = 0.98
# The loss "blows up" once the smoothed loss exceeds this multiple of the best so far: the test
# stops there, and no rate at or past that point can be chosen.
DIVERGENCE_FACTOR = 4.0
RULE = "minimum/10"
# A job that trains every weight (a full fine-tune: a pretrained encoder under a new head) is never
# given more than this. The new head's loss falls fastest at rates that can wreck the pretrained
# weights beneath it: on 1,000 Korean rows the rule chose 1.4e-3 for MiniLM, and BERT-base fails
# to converge at 4e-4 (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification"). Below
# the ceiling the curve decides: on SST-2 it chose 1.6e-4 and beat the default 2e-5 by 25 points,
# where a ceiling of 3e-5 lost 6 of them (BENCHMARKS.md, "Choosing the learning rate"). LoRA and
# other partial runs train new weights, whose own curve is the signal: no ceiling.
FULL_FINETUNE_MAX_LR = 2e-4


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]          # smoothed
    raw_losses: list[float]
    chosen: float
    rule: str
    diverged_at: float | None    # the first rate whose smoothed loss blew up; None if none did
    seconds: float
    ceiling: float | None = None  # the most the rule could choose (a full fine-tune); None: no ceiling
    samples: int = 0             # what the test trained on
    job_samples: int = 0         # what the job trains on (the test's budget is a share of it)

    def as_event_data(self) -> dict[str, Any]:
        return {"lrs": self.lrs, "losses": self.losses, "raw_losses": self.raw_losses,
                "chosen": self.chosen, "rule": self.rule, "diverged_at": self.diverged_at,
                "steps": len(self.lrs), "samples": self.samples, "job_samples": self.job_samples,
                "seconds": self.seconds, "ceiling": self.ceiling}


def smooth(losses: Sequence[float], beta: float = SMOOTHING) -> list[float]:
    out: list[float] = []
    avg = 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** i))
    return out


def default_rate(full_finetune: bool) -> float:
    """The rate a job gets when it does not choose: a full fine-tune's default, or LoRA's."""
    default = Hyperparameters.model_fields["learning_rate"].default
    return float(default) if full_finetune else LORA_LEARNING_RATE


def choose_learning_rate(lrs: Sequence[float], smoothed: Sequence[float],
                         ceiling: float | None = None, fallback: float | None = None) -> tuple[float, str]:
    """The rate at the smoothed loss's minimum, divided by 10, and never above `ceiling`.

    Why this rule and not the steepest descent: at the minimum the rate is already as large as
    the model tolerates for a few steps (a whole run there overshoots), and one order of magnitude
    below it is where the loss was still falling fast; the steepest point of a 20-100 step curve
    is a derivative of a noisy series and jumps between runs, the minimum much less. The chosen
    rate is always below the minimum, so below where the loss blows up. The curve must hold only
    points before the blow-up (run() stops there). A curve that never falls (minimum at its first
    point) says nothing of the rate: it gives `fallback` (the job's default rate, when under the
    curve's first blow-up), else the smallest rate tested, never a guess past the data."""
    if not lrs:
        raise ValueError("an empty range-test curve")
    finite = [(loss, i) for i, loss in enumerate(smoothed) if math.isfinite(loss)]
    if not finite:
        return lrs[0], RULE + " (no finite loss: the smallest tested rate)"
    _, at = min(finite)
    if at == 0 and fallback is not None and len(lrs) > 1 and fallback <= lrs[-1]:
        return fallback, f"{RULE} (the loss never fell: the default {fallback:.0e})"
    chosen = max(lrs[at] / 10.0, lrs[0])
    if ceiling is not None and chosen > ceiling:
        return ceiling, f"{RULE}, capped at {ceiling:.0e} for a full fine-tune"
    return chosen, RULE


def smoothing_for(steps: int) -> float:
    return min(SMOOTHING, 1 - 4 / max(steps, 8))


def budget_steps(job_samples: int, micro: int, max_steps: int = MAX_STEPS) -> int:
    return max(MIN_STEPS, min(max_steps, math.floor(BUDGET_FRACTION * job_samples / micro)))


def run(trainer: Trainer, job_samples: int, max_steps: int = MAX_STEPS, lr_start: float = LR_START,
        lr_end: float = LR_END) -> RangeTest:
    """The range test on the trainer's model, in micro-batches no larger than the chosen one;
    leaves no trace on the model, its gradients or the RNG streams. `job_samples`: the samples the
    job will train on, which bounds the test's cost."""
    task, model, config = trainer.task, trainer.model, trainer.config
    examples = task.train_examples
    micro = min(trainer.state.micro_batch_size, RANGE_BATCH)
    steps = budget_steps(job_samples, micro, max_steps)
    beta = smoothing_for(steps)
    started = time.perf_counter()
    rng = capture_rng()
    # Only what training changes is saved: the trainable weights (a LoRA run: only the adapters)
    # and the buffers, on the device, so saving and restoring cost one copy each.
    saved = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    optimizer = build_optimizer(model, config, trainer.device, lr=lr_start)
    scaler = torch.amp.GradScaler(trainer.device.type, enabled=trainer.scaler.is_enabled())
    order = list(range(len(examples)))
    random.Random(config.seed).shuffle(order)
    lrs: list[float] = []
    raw: list[float] = []
    smoothed: list[float] = []
    diverged_at: float | None = None
    try:
        model.train()
        for i in range(steps):
            lr = lr_start * (lr_end / lr_start) ** (i / max(1, steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            start = (i * micro) % len(order)
            indices = (order + order)[start:start + micro]
            batch_examples = [examples[j] for j in indices]
            batch = to_device(task.collate(batch_examples), trainer.device)
            with trainer.autocast():
                loss_sum, _ = task.forward(model, batch)
            loss = loss_sum / max(1, task.loss_units(batch_examples))
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                               config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            curve = smooth([*raw, value], beta)[-1] if math.isfinite(value) else math.inf
            best = min(smoothed, default=math.inf)
            if not math.isfinite(curve) or (smoothed and curve > DIVERGENCE_FACTOR * best):
                diverged_at = lr
                break
            lrs.append(lr)
            raw.append(value)
            smoothed.append(curve)
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in saved:
                    p.copy_(saved[name])
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        model.zero_grad(set_to_none=True)
        del optimizer, saved, buffers
        restore_rng(rng)
    if not lrs:
        # The very first micro-batch at LR_START already gave no finite loss: not a rate problem.
        lrs, raw, smoothed = [lr_start], [math.inf], [math.inf]
    full_finetune = all(p.requires_grad for p in model.parameters())
    ceiling = FULL_FINETUNE_MAX_LR if full_finetune else None
    chosen, rule = choose_learning_rate(lrs, smoothed, ceiling, fallback=default_rate(full_finetune))
    return RangeTest(lrs=lrs, losses=smoothed, raw_losses=raw, chosen=chosen, rule=rule,
                     diverged_at=diverged_at, seconds=time.perf_counter() - started,
                     samples=len(raw) * micro, job_samples=job_samples, ceiling=ceiling)
