"""The optimizer and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from worker.training.config import TrainConfig


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device,
                    lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW at the job's rate, or at `lr` (the range test sets its own rate at every step)."""
    if lr is None:
        if not isinstance(config.learning_rate, float | int):
            raise ValueError(f"learning_rate {config.learning_rate!r} must be resolved to a number first")
        lr = float(config.learning_rate)
    params = [p for p in model.parameters() if p.requires_grad]
    # Biases and norm weights (1-d) are not decayed, as in BERT's recipe and the HF Trainer.
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw_8bit":
        # The memory plan's choice when AdamW's full-precision moments do not fit: bitsandbytes'
        # 8-bit moments (a quarter of the memory), paged so a spike evicts them to host memory
        # instead of failing the step.
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(groups, lr=lr)  # type: ignore[no-any-return]
    # Fused AdamW: one kernel over all tensors instead of one small op per tensor. On a 2-core
    # CPU it made the MiniLM step 82 ms -> 14 ms (bench/train_bench.py profile); CUDA likewise.
    return torch.optim.AdamW(groups, lr=lr, fused=device.type in {"cuda", "cpu"})


# The job's lr_scheduler names, and transformers' schedule each one is (every one warms up first).
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' schedules, as the Trainer uses them: a linear warmup over warmup_ratio of
    the steps, then linear decay to 0, half a cosine, or constant."""
    from transformers import get_scheduler

    scheduler: torch.optim.lr_scheduler.LRScheduler = get_scheduler(
        SCHEDULES[config.lr_scheduler], optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * total_steps), num_training_steps=total_steps)
    return scheduler
